"""The ``anomvae`` command group: exit codes, signals and error reporting.

Exit codes: 0 success; 1 anomalies found under ``--fail-on-anomaly``;
2 usage or input error; 3 internal error; 130, 141 and 143 for Ctrl-C, a
closed standard output and SIGTERM. Results go to stdout or ``-o``,
progress and summaries to stderr.

Heavy modules (pandas, torch) are imported inside the commands, so that
``anomvae --help`` and ``anomvae info`` start quickly and never load torch.
"""

import contextlib
import functools
import os
import signal
import sys

import click

from ..errors import AnomvaeError
from ..files import STORAGE_ERRNOS
from ..version import __version__

EXIT_ANOMALIES = 1
EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 3
# The shell's codes for a process ended by SIGINT, SIGPIPE and SIGTERM (128 + signal).
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """Raised by the SIGTERM handler, so that output files are cleaned up
    on the way out as for Ctrl-C (a BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` takes it for an error)."""


# The stop signal this process received, if any (set by the handlers that
# run(), the anomvae program, installs; main() called from Python or tests
# installs none).
_stop_signal = None


def _on_stop_signal(signum, frame):
    global _stop_signal
    if _stop_signal is not None:
        return  # already stopping: let the clean-up under way finish
    _stop_signal = signum
    raise KeyboardInterrupt if signum == signal.SIGINT else _Terminated


def _stop_exception():
    return KeyboardInterrupt() if _stop_signal == signal.SIGINT else _Terminated()


def _end_by(signum):
    """End this process by ``signum``, with the signal's default action."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class InputError(click.ClickException):
    """Bad input data, model file or parameter value: exit code 2."""

    exit_code = EXIT_INPUT_ERROR


def input_errors(function):
    """Turn the library's input and output errors into one-line ``Error:``
    messages with exit code 2."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (AnomvaeError, ValueError) as exc:  # data, model file, output; parameters
            raise InputError(str(exc)) from None

    return wrapper


def _flush_stdout():
    """Flush standard output, so that a closed pipe shows here, where it can
    be reported, rather than at exit; nothing to do when there is none."""
    if sys.stdout is not None:
        sys.stdout.flush()


class _Group(click.Group):
    def parse_args(self, ctx, args):
        # Bare ``anomvae`` shows the help and succeeds, as with --help
        # (click 8.2 and later would exit 2, a usage error).
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        # click itself would end both with exit code 1, which here means
        # "anomalies found, output complete"; neither is that.
        try:
            try:
                result = super().invoke(ctx)
            except click.exceptions.Exit:
                _flush_stdout()  # "anomalies found" claims complete output
                raise
            except BaseException as exc:
                # Already failing: that error, not a closed pipe, is what to report.
                with contextlib.suppress(OSError, ValueError):
                    _flush_stdout()
                if _stop_signal is not None and not isinstance(exc, (KeyboardInterrupt, _Terminated)):
                    # A library turned the signal's exception into its own
                    # (pandas reports a read from stdin that was cut short
                    # as a parse error): the signal is what happened.
                    raise _stop_exception() from exc
                raise
            _flush_stdout()
            return result
        except (KeyboardInterrupt, _Terminated) as exc:
            how, code = ("interrupted", EXIT_INTERRUPTED) if isinstance(exc, KeyboardInterrupt) else \
                ("terminated", EXIT_TERMINATED)
            with contextlib.suppress(OSError):
                click.echo(f"\nError: {how}; no output file is left half-written", err=True)
            ctx.exit(code)
        except BrokenPipeError:
            # The reader of standard output went away: results are incomplete.
            # Point stdout at /dev/null so the exit's final flush cannot fail again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            with contextlib.suppress(OSError):
                click.echo("Error: the output was closed before every result was written", err=True)
            ctx.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            # Commands that print to standard output themselves (info):
            # a full disk behind it is an output error, as for score's -o -.
            if exc.errno not in STORAGE_ERRNOS or isinstance(exc, AnomvaeError):
                raise
            with contextlib.suppress(OSError):
                click.echo(f"Error: cannot write standard output: {exc.strerror or exc}", err=True)
            ctx.exit(EXIT_INPUT_ERROR)

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except Exception as exc:  # an unexpected failure, not bad input
            if os.environ.get("ANOMVAE_DEBUG"):
                raise
            click.echo(
                f"Error: internal error: {type(exc).__name__}: {exc} "
                "(set ANOMVAE_DEBUG=1 to see the traceback)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL_ERROR)


def run():
    """The ``anomvae`` program (its console script; Python callers and tests
    use :func:`main`, which leaves signal handling alone). On POSIX systems,
    SIGTERM (as systemd and timeouts send it) cleans up like Ctrl-C does,
    and after either the process ends by that signal, as shells and service
    managers expect of a program that was stopped. A signal the parent set
    to be ignored stays ignored."""
    if os.name == "posix":
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # only the main thread may set handlers
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    signal.signal(signum, _on_stop_signal)
    try:
        main()
    finally:
        if _stop_signal is not None:
            _end_by(_stop_signal)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="anomvae")
def main():
    """Find anomalies in CSV tables and image folders with variational
    autoencoders: fit a model on normal data, score new batches.

    \b
    Exit codes:
      0  success
      1  anomalies found (only with score --fail-on-anomaly)
      2  usage or input error
      3  internal error
      130  interrupted (Ctrl-C; the process ends by SIGINT)
      141  standard output closed early (results incomplete)
      143  stopped by SIGTERM (the process ends by it)
    """



def model_kind(metadata):
    """``"images"`` for a model ``anomvae fit`` trained on images, else ``"csv"``."""
    return metadata.get("extra", {}).get("input", "csv")
