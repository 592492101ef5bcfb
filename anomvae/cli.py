"""The ``anomvae`` command: fit, score and inspect models on CSV data.

Exit codes: 0 success; 1 anomalies found under ``--fail-on-anomaly``;
2 usage or input error; 3 internal error. Results go to stdout or ``-o``,
progress and summaries to stderr.

Heavy modules (pandas, torch) are imported inside the commands, so that
``anomvae --help`` and ``anomvae info`` start quickly and never load torch.
"""

import contextlib
import functools
import json
import logging
import math
import os
import signal
import sys
import tempfile
import warnings

import click

from . import __version__

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


class _AutoOr(click.ParamType):
    """A number, or one of a few words (``auto``, ``none``)."""

    def __init__(self, kind, words):
        self.kind, self.words = kind, words
        self.name = "|".join([*words, kind.__name__.upper()])

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        if value.lower() in self.words:
            return self.words[value.lower()]
        try:
            return self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not {' or '.join(self.words)} or a number", param, ctx)


class _IntTuple(click.ParamType):
    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)


class _Names(click.ParamType):
    name = "NAME,NAME,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return tuple(part.strip() for part in value.split(",") if part.strip())


# Every VAEAnomalyDetector hyperparameter, as (parameter, click type, default,
# help). The defaults repeat the estimator's so that --help shows them
# without importing torch; a test keeps the two in step.
ESTIMATOR_OPTIONS = [
    ("latent_dim", _AutoOr(int, {"auto": "auto"}), "auto", "Latent size; auto = ceil(sqrt(n_features)) in [2, 32] (conv: ceil(sqrt(H*W)/2))."),
    ("hidden_dims", _IntTuple(), (64, 32), "Encoder hidden widths, e.g. 64,32; mirrored by the decoder."),
    ("likelihood", click.Choice(["gaussian", "bernoulli", "continuous_bernoulli"]), "gaussian",
     "Observation model p(x|z) [image fits: bernoulli unless given]."),
    ("min_variance", _AutoOr(float, {"auto": "auto"}), "auto", "Floor of the Gaussian likelihood's "
     "variances, in the network's (by default standardised) units; auto = max(1e-3, step**2/12) per "
     "feature, step = the smallest gap between its training values."),
    ("architecture", click.Choice(["mlp", "conv"]), "mlp", "Network: dense (mlp) or convolutional "
     "(conv) [image fits: conv unless given]."),
    ("beta", float, 1.0, "Weight of the KL term in training."),
    ("kl_warmup", int, 10, "Epochs over which the KL weight ramps up."),
    ("max_epochs", int, 400, "Maximum number of epochs."),
    ("batch_size", _AutoOr(int, {"auto": "auto"}), "auto", "Rows per optimisation step; auto = "
     "clip(n_train // 16, 16, 128), n_train = rows after the validation split."),
    ("trim_fraction", float, 0.03, "Share of each batch left out of each step after the KL warm-up "
     "(the rows --trim-by ranks worst); 0 keeps all."),
    ("trim_by", click.Choice(["kl", "loss"]), "kl", "What ranks the rows --trim-fraction leaves out: "
     "the KL term (kl) or the negative ELBO (loss)."),
    ("refit_inliers", click.Choice(["false", "true", "auto"]), "false", "Train a second network without "
     "the training rows the first one flags; auto = only when batches are trimmed (about 600+ rows)."),
    ("lr", float, 3e-3, "Adam learning rate."),
    ("weight_decay", float, 0.0, "Adam L2 penalty."),
    ("validation_fraction", float, 0.1, "Share of rows held out for early stopping."),
    ("n_iter_no_change", _AutoOr(int, {"none": None}), 20, "Early-stopping patience in epochs; none disables."),
    ("tol", float, 1e-3, "Relative improvement that resets the patience."),
    ("n_score_samples", int, 8, "Fixed latent draws per row when scoring."),
    ("contamination", _AutoOr(float, {"auto": "auto"}), "auto", "Threshold rule: auto (Tukey) or a rate in (0, 0.5]."),
    ("standardize", click.Choice(["auto", "true", "false"]), "auto", "Scale features by training mean and std."),
    ("score_bound", click.Choice(["elbo", "iwae"]), "elbo", "Score bound: the ELBO, or the importance-weighted bound."),
    ("device", str, "auto", "Torch device: auto, cpu, cuda, cuda:N."),
    ("random_state", _AutoOr(int, {"none": None}), None, "Seed for reproducible training."),
]


def estimator_options(command):
    """Add one ``--option`` per estimator hyperparameter to ``command``."""
    for param, kind, default, help_text in reversed(ESTIMATOR_OPTIONS):
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else ("none" if default is None else default)
        command = click.option(
            "--" + param.replace("_", "-"), param, type=kind, default=default,
            show_default=str(shown), help=help_text,
        )(command)
    return command


def _estimator_params(values):
    params = {param: values.pop(param) for param, *_ in ESTIMATOR_OPTIONS}
    for name in ("standardize", "refit_inliers"):
        if isinstance(params[name], str) and params[name] != "auto":
            params[name] = params[name] == "true"
    return params


def _report_warnings(caught, quiet):
    if quiet:
        return
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)


class _EpochProgress(logging.Handler):
    """Advances a click progress bar on each epoch the detector logs."""

    def __init__(self, bar):
        super().__init__(logging.DEBUG)
        self.bar = bar

    def emit(self, record):
        epoch = getattr(record, "anomvae_epoch", None)
        if epoch is not None:
            val = "" if math.isnan(epoch["val_loss"]) else f" val {epoch['val_loss']:.3f}"
            self.bar.label = f"epoch {epoch['epoch']} loss {epoch['train_loss']:.3f}{val}"
            self.bar.update(1)


@contextlib.contextmanager
def _progress(max_epochs, quiet):
    """A progress bar on stderr while training, only when stderr is a terminal."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    logger = logging.getLogger("anomvae")
    with click.progressbar(length=max_epochs, label="training", file=sys.stderr) as bar:
        handler = _EpochProgress(bar)
        logger.addHandler(handler)
        previous = logger.level
        logger.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(previous)


@contextlib.contextmanager
def atomic_output(path, mode="w"):
    """Open ``path`` for writing through a temporary file renamed on success.

    On any error the temporary file is removed, so a failed command never
    leaves a partial output file. ``"-"`` writes to stdout directly.
    """
    if path == "-":
        yield sys.stdout if "b" not in mode else sys.stdout.buffer
        return
    from .persistence import replacement_mode

    newline = "" if "b" not in mode else None
    if os.path.exists(path) and not os.path.isfile(path):
        # A device or a pipe (/dev/stdout, a FIFO): write through it; a
        # file renamed over it would replace the device itself.
        try:
            handle = open(path, mode, newline=newline)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        with handle:
            yield handle
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".anomvae-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, mode, newline=newline) as handle:
            with contextlib.suppress(OSError):  # some file systems keep no permissions
                os.fchmod(handle.fileno(), replacement_mode(path))
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _input_errors(function):
    """Turn the library's input errors into one-line ``Error:`` messages, exit 2."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ValueError as exc:  # DataError, ModelFileError, sklearn's own
            raise InputError(str(exc)) from None

    return wrapper


def _flush_stdout():
    """Flush standard output, so that a closed pipe shows here, where it can
    be reported, rather than at exit; nothing to do when there is none."""
    if sys.stdout is not None:
        sys.stdout.flush()


class _Group(click.Group):
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


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="anomvae")
def main():
    """Find anomalies in tabular data with variational autoencoders.

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


class _Data(click.ParamType):
    """A CSV file (``-`` for stdin), or images: a folder, a glob pattern, an
    image file or a ``.npy``/``.npz`` array (see :func:`anomvae.data.is_image_source`)."""

    name = "DATA"
    _csv = click.Path(exists=True, dir_okay=False, allow_dash=True)

    def convert(self, value, param, ctx):
        from .data import is_image_source

        if is_image_source(value):
            return value
        return self._csv.convert(value, param, ctx)


class _ImageSize(click.ParamType):
    name = "HxW|N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = value.lower().split("x")
        try:
            size = tuple(int(p) for p in parts) * (2 if len(parts) == 1 else 1)
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 1:
            self.fail(f"{value!r} is not HEIGHTxWIDTH (e.g. 28x28) or one side N", param, ctx)
        return size


_DATA = _Data()
# What image fits use when --architecture or --likelihood is not given.
IMAGE_DEFAULTS = {"architecture": "conv", "likelihood": "bernoulli"}
# The colour mode of an image model's channel count, as fit records it.
_COLORS = {1: "grayscale", 3: "rgb"}


@main.command()
@click.argument("data", type=_DATA)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@click.option("--columns", type=_Names(), help="Feature columns to use (default: every numeric column).")
@click.option("--exclude", type=_Names(), default=(), help="Columns to leave out of the features.")
@click.option("--id-column", multiple=True, help="Column that identifies a row; kept out of training and "
              "copied to score output. Repeatable.")
@click.option("--delimiter", default=",", show_default=True, help="Field delimiter of the CSV.")
@click.option("--invalid-rows", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values: fail naming them, or leave them out "
              "(their lines are listed on stderr).")
@click.option("--images", "force_images", is_flag=True, help="Read DATA as images even if its name "
              "does not say so (folders, globs, image files and .npy/.npz are detected).")
@click.option("--image-size", type=_ImageSize(), help="Resize images to HxW (or NxN) pixels "
              "[default: the first image's size].")
@click.option("--grayscale", is_flag=True, help="Read images as one grey channel [default: the first "
              "image's mode].")
@estimator_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary on stderr.")
@click.pass_context
@_input_errors
def fit(ctx, data, output, columns, exclude, id_column, delimiter, invalid_rows, force_images, image_size,
        grayscale, quiet, **values):
    """Train a model on DATA: the numeric columns of a CSV file (- for stdin),
    or images (a folder, a glob, image files, or a .npy/.npz array)."""
    from . import data as readers

    from .detector import VAEAnomalyDetector

    params = _estimator_params(values)
    if force_images or readers.is_image_source(data):
        _refuse_csv_options(ctx, ("columns", "exclude", "id_column", "delimiter", "invalid_rows"), data)
        for param, default in IMAGE_DEFAULTS.items():
            if ctx.get_parameter_source(param) == click.core.ParameterSource.DEFAULT:
                params[param] = default
        return _fit_images(VAEAnomalyDetector(**params), data, output, image_size, grayscale, quiet)
    if image_size or grayscale:
        raise click.UsageError(f"--image-size and --grayscale apply to images; {data} is read as CSV")
    detector = VAEAnomalyDetector(**params)
    detector._validate_params()  # fail on a bad option before reading any data
    name = readers.display_name(data)
    frame = readers.read_csv(data, delimiter=delimiter, dtype={c: str for c in id_column})
    features, skipped = readers.select_features(
        frame, columns=columns, exclude=exclude, id_columns=id_column, name=name
    )
    if skipped and not quiet:
        click.echo(f"{name}: ignoring non-numeric column(s): {', '.join(skipped)}", err=True)
    X = readers.to_numeric(frame, features, name=name)
    invalid, reasons = readers.invalid_rows(X, frame, features)
    if invalid.any():
        if invalid_rows == "error":
            raise readers.invalid_rows_error(name, frame, invalid, reasons, "fix them or pass --invalid-rows skip")
        X = X[~invalid]
        if len(X) < 2:
            raise InputError(f"{name}: {len(X)} row(s) left after skipping {invalid.sum()} with empty, NaN or "
                             f"infinite values (line(s) {readers.lines_text(frame.index[invalid])}); "
                             "fit needs at least 2")
        if not quiet:
            click.echo(f"{name}: skipped {invalid.sum()} row(s) with empty, NaN or infinite values "
                       f"at line(s) {readers.lines_text(frame.index[invalid])}", err=True)

    import pandas as pd

    extra = {"id_columns": list(id_column), "training": {"file": name, "rows": int(len(X))}}
    _train_and_save(detector, pd.DataFrame(X, columns=features), output, extra, quiet)
    if not quiet:
        click.echo(
            f"{output}: trained on {len(X)} rows x {len(features)} features for {detector.n_epochs_} "
            f"epochs (best {detector.best_epoch_})"
            f"{_refit_note(detector.n_refit_excluded_, detector.refit_inliers)}; "
            f"threshold {detector.threshold_:.4f} nats",
            err=True,
        )


def _refuse_csv_options(ctx, names, data):
    """A usage error naming the CSV-only options given for image data,
    which would otherwise be ignored without a word."""
    given = [name for name in names if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise click.UsageError(f"{options} apply to CSV data; {data} is read as images")


def _fit_images(detector, data, output, image_size, grayscale, quiet):
    from . import data as readers

    if detector.architecture == "conv" and detector.image_shape is not None:
        raise click.UsageError("the image shape comes from --image-size and --grayscale")
    detector._validate_params()
    height, width, gray = readers.probe_images(data)
    size = image_size or (height, width)
    gray = gray or grayscale
    paths, X = readers.read_images(data, size=size, grayscale=gray)
    detector.set_params(image_shape=(1 if gray else 3, *size))
    extra = {
        "id_columns": [],
        "input": "images",
        "image_size": list(size),
        "color": "grayscale" if gray else "rgb",
        "training": {"file": str(data), "rows": len(paths)},
    }
    _train_and_save(detector, X, output, extra, quiet)
    if not quiet:
        click.echo(
            f"{output}: trained on {len(paths)} images of {size[0]}x{size[1]} "
            f"{'grey' if gray else 'RGB'} pixels for {detector.n_epochs_} epochs (best {detector.best_epoch_})"
            f"{_refit_note(detector.n_refit_excluded_, detector.refit_inliers)}; "
            f"threshold {detector.threshold_:.4f} nats",
            err=True,
        )


def _refit_note(n_excluded, refit_inliers):
    """What ``refit_inliers`` did, for the fit and info summaries ('' when no refit was asked for)."""
    if n_excluded is None:
        return ", no refit (auto: batches not trimmed)" if refit_inliers == "auto" else ""
    if n_excluded == 0:
        return ", no refit (the first network flagged no rows, or too many to train on)"
    return f", after a refit without the {n_excluded} rows the first network flagged"


def _train_and_save(detector, X, output, extra, quiet):
    from .persistence import save

    with warnings.catch_warnings(record=True) as caught, _progress(detector.max_epochs, quiet):
        warnings.simplefilter("always")
        detector.fit(X)
    _report_warnings(caught, quiet)
    try:
        save(detector, output, extra=extra)
    except OSError as exc:
        raise InputError(f"cannot write model to {output}: {exc.strerror or exc}") from None


def read_model_kind(path):
    """``"images"`` for a model trained on images, else ``"csv"`` (no torch)."""
    from .persistence import read_metadata

    return _model_kind(read_metadata(path))


def _model_kind(metadata):
    return metadata.get("extra", {}).get("input", "csv")


def _load_model(path, *, scoring_only=False):
    from .persistence import load_with_metadata

    return load_with_metadata(path, scoring_only=scoring_only)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=_DATA)
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              show_default=True, help="Where to write the results.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Output format [default: jsonl for a .jsonl output, else csv].")
@click.option("--only-anomalies", is_flag=True, help="Write only flagged rows (and rows not scored).")
@click.option("--threshold", type=float, help="Anomaly-score cut in nats, instead of the model's.")
@click.option("--fail-on-anomaly", is_flag=True, help="Exit with code 1 when any row is flagged.")
@click.option("--id-column", multiple=True, help="Row identifier column(s) to copy to the output "
              "[default: those given at fit; else a 'row' number].")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, show_default="10000 rows, 256 images",
              help="Rows or images read and scored at a time; bounds memory.")
@click.option("--delimiter", default=",", show_default=True, help="Field delimiter of the CSV.")
@click.option("--invalid-rows", type=click.Choice(["error", "mark"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values: fail naming them, or write them "
              "unscored with a 'status' column saying why.")
@click.option("--heatmaps", type=click.Path(file_okay=False), help="Image models: write per image a PNG "
              "of where its anomaly score comes from into this folder.")
@click.option("--explain", "explain_top", type=click.IntRange(min=0), default=0, metavar="K",
              help="Add an 'explanation' of each flagged row: its K features that add most to "
              "the anomaly score, with observed and reconstructed values.")
@click.option("--summary-json", type=click.Path(dir_okay=False, allow_dash=True),
              help="Also write a JSON summary (counts, threshold, top anomalies, score shift) here.")
@click.option("--summary-top", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the highest-scoring rows --summary-json lists.")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@click.pass_context
@_input_errors
def score(ctx, model, data, output, fmt, only_anomalies, threshold, fail_on_anomaly, id_column,
          chunk_size, delimiter, invalid_rows, heatmaps, explain_top, summary_json, summary_top, quiet):
    """Score every row of DATA (a CSV file, - for stdin) with MODEL, or every
    image of DATA (a folder, glob, image files, .npy/.npz) with an image MODEL.

    Writes the id columns (or the 1-based 'row' number; for images the
    'path'), 'anomaly_score' (the negative ELBO, in nats), 'p_value'
    (calibrated tabular models only) and 'is_anomaly' for each row. CSV
    columns are matched by name: order does not matter and extra columns are
    ignored. Images are resized to the model's size.
    """
    from . import data as readers
    from .scoring import score_csv, score_images

    image_model = read_model_kind(model) == "images"
    if image_model != readers.is_image_source(data):
        kind = "images" if image_model else "CSV data"
        raise InputError(f"{model} is a model of {kind}, but {readers.display_name(data)} is "
                         f"{'a CSV file' if image_model else 'images'}")
    if heatmaps and not image_model:
        raise click.UsageError("--heatmaps applies to image models only")
    if summary_json and (summary_json == output or os.path.abspath(summary_json) == os.path.abspath(output)):
        raise click.UsageError("--summary-json and -o name the same file; give the summary its own")
    if image_model:
        _refuse_csv_options(ctx, ("id_column", "delimiter"), data)
    if image_model and (explain_top or summary_json):
        raise click.UsageError("--explain and --summary-json apply to tabular models only")
    # Scores alone need only the network: skip importing scikit-learn.
    detector, metadata = _load_model(model, scoring_only=not (heatmaps or explain_top))
    ids = list(id_column) or list(metadata.get("extra", {}).get("id_columns", []))
    fmt = fmt or ("jsonl" if str(output).endswith((".jsonl", ".jsonl.gz")) else "csv")
    cut = detector.threshold_ if threshold is None else threshold
    with contextlib.ExitStack() as outputs:
        # The summary's temporary file first: an unwritable --summary-json
        # fails before anything is scored, and it is renamed into place
        # after the results, so a failure leaves neither file replaced.
        summary_stream = outputs.enter_context(atomic_output(summary_json)) if summary_json else None
        stream = outputs.enter_context(atomic_output(output))
        if image_model:
            summary = score_images(
                detector, data, stream, threshold=cut, fmt=fmt, batch_size=chunk_size or 256,
                mark_invalid=invalid_rows == "mark", only_anomalies=only_anomalies, heatmaps=heatmaps,
            )
        else:
            summary = score_csv(
                detector, data, stream, id_columns=ids, threshold=cut, fmt=fmt, chunk_size=chunk_size or 10_000,
                delimiter=delimiter, mark_invalid=invalid_rows == "mark", only_anomalies=only_anomalies,
                explain_top=explain_top, summary_top=summary_top,
                # Only the stderr warning and the JSON summary read the shift test.
                shift_test=bool(summary_json) or not quiet,
            )
        if summary_stream is not None:
            json.dump({"file": readers.display_name(data), "model": model, **summary}, summary_stream, indent=2)
            summary_stream.write("\n")
    shift = summary.get("score_shift")
    if shift and shift["shifted"] and not quiet:
        click.echo(
            f"warning: the anomaly scores of {readers.display_name(data)} differ from the model's "
            f"{shift['baseline']} scores (KS statistic {shift['ks_statistic']:.3f}, "
            f"p-value {shift['ks_p_value']:.2g} < {shift['level']:g}): the data may have shifted",
            err=True,
        )
    if not quiet:
        unscored = f", {summary['rows_not_scored']} not scored" if summary["rows_not_scored"] else ""
        click.echo(
            f"{readers.display_name(data)}: {summary['rows']} {'images' if image_model else 'rows'}, {summary['anomalies']} anomalies"
            f"{unscored} (threshold {cut:.4f} nats)",
            err=True,
        )
    if fail_on_anomaly and summary["anomalies"]:
        ctx.exit(EXIT_ANOMALIES)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=_DATA)
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Target false-alarm rate on normal data.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the calibrated model here [default: replace MODEL].")
@click.option("--delimiter", default=",", show_default=True, help="Field delimiter of the CSV.")
@click.option("--invalid-rows", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values: fail naming them, or leave them out.")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@_input_errors
def calibrate(model, data, fpr, output, delimiter, invalid_rows, quiet):
    """Set MODEL's threshold from DATA, rows known to be normal (- for stdin).

    The new threshold flags a fraction FPR of such rows, and 'anomvae score'
    adds a 'p_value' column. DATA should not be the training data.
    """
    from . import data as readers
    from .persistence import save
    from .scoring import read_reference_csv

    detector, metadata = _load_model(model)
    X, skipped = read_reference_csv(detector, data, delimiter=delimiter, skip_invalid=invalid_rows == "skip")
    skipped_text = readers.lines_text([line - 2 for line in skipped])
    if not len(X):
        raise InputError(f"{readers.display_name(data)}: every row was skipped for empty, NaN or infinite values "
                         f"(line(s) {skipped_text}); nothing to calibrate on")
    detector.calibrate(X, fpr=fpr)
    output = output or model
    try:
        save(detector, output, extra=metadata.get("extra"))
    except OSError as exc:
        raise InputError(f"cannot write model to {output}: {exc.strerror or exc}") from None
    if not quiet:
        name = readers.display_name(data)
        if skipped:
            click.echo(f"{name}: skipped {len(skipped)} row(s) with empty, NaN or infinite values "
                       f"at line(s) {skipped_text}", err=True)
        click.echo(
            f"{output}: calibrated on {len(X)} rows of {name} for a false-alarm rate of {fpr:g}; "
            f"threshold {detector.threshold_:.4f} nats",
            err=True,
        )


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
@_input_errors
def info(model, as_json):
    """Describe MODEL: version, input, network, features (for image models
    their shape, colour mode and the size score resizes images to),
    parameters, threshold, training."""
    from .floors import variance_floors
    from .persistence import read_metadata

    metadata = read_metadata(model)
    fitted = metadata["fitted"]
    history = fitted.get("history_") or {}
    kind = _model_kind(metadata)
    shape = fitted.get("image_shape_")  # what score reads images at, as (C, H, W)
    try:
        floors = variance_floors(fitted["module_config"])
        unreadable_floors = False
    except (KeyError, TypeError, ValueError):
        # info describes damaged files too; score would reject this one.
        floors, unreadable_floors = None, True
    summary = {
        "file": model,
        "anomvae_version": metadata.get("anomvae_version"),
        "format_version": metadata["format_version"],
        "created": metadata.get("created"),
        "input": kind,
        # Model files written before the architecture option existed are MLPs.
        "architecture": metadata["params"].get("architecture", "mlp"),
        "likelihood": metadata["params"].get("likelihood"),
        "image_shape": shape,
        "color": None if shape is None else _COLORS.get(shape[0]),
        "image_size": shape[1:] if shape is not None and kind == "images" else None,
        "n_features": fitted.get("n_features_in_"),
        "features": fitted.get("feature_names_in_"),
        "id_columns": metadata.get("extra", {}).get("id_columns", []),
        "threshold": fitted.get("threshold_"),
        "calibration": (
            None if fitted.get("reference_scores_") is None else
            {"fpr": fitted.get("calibration_fpr_"), "reference_rows": len(fitted["reference_scores_"])}
        ),
        "latent_dim": fitted.get("latent_dim_"),
        # Per feature, in standardised units; None unless the likelihood is Gaussian.
        "variance_floors": None if floors is None else floors.tolist(),
        "device": fitted.get("device_"),
        # Files written before trim_by existed trimmed by the loss, as load() says.
        "params": {"trim_by": "loss", **metadata["params"]},
        "training": {
            **metadata.get("extra", {}).get("training", {}),
            "epochs": fitted.get("n_epochs_"),
            "best_epoch": fitted.get("best_epoch_"),
            # refit_inliers: rows the second network was trained without; None when no refit was asked for.
            "refit_excluded": fitted.get("n_refit_excluded_"),
            "final_train_loss": (history.get("train_loss") or [None])[-1],
            # None when nothing was monitored (no validation split, no early stopping).
            "best_val_loss": min((v for v in history.get("val_loss") or [] if v is not None and v == v),
                                 default=None),
        },
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    training = summary["training"]
    features = summary["features"] or [f"x{i}" for i in range(summary["n_features"] or 0)]
    lines = [
        f"model:      {model} (anomvae {summary['anomvae_version']}, format {summary['format_version']}, "
        f"created {summary['created']})",
        f"input:      {'images' if kind == 'images' else 'CSV'}",
        f"network:    {summary['architecture']}, {summary['likelihood']} likelihood",
    ]
    if shape is None:
        lines.append(f"features:   {len(features)}: {', '.join(features)}")
    else:
        # Thousands of pixel names x0, x1, ... would say nothing.
        lines += [f"features:   {summary['n_features']} pixels", _image_line(summary)]
    lines += [
        f"id columns: {', '.join(summary['id_columns']) or '(none)'}",
        f"threshold:  {_number(summary['threshold'], '.6g')} nats (negative ELBO)",
        "calibrated: " + (
            f"for a false-alarm rate of {_number(summary['calibration']['fpr'], 'g')} on "
            f"{summary['calibration']['reference_rows']} reference rows"
            if summary["calibration"] else "no (threshold from contamination)"
        ),
        f"training:   {training.get('rows', '?')} {'images' if kind == 'images' else 'rows'} from "
        f"{training.get('file', '?')}; {training['epochs']} epochs, best {training['best_epoch']}"
        f"{_refit_note(training['refit_excluded'], summary['params'].get('refit_inliers'))}; "
        f"final train loss {_number(training['final_train_loss'], '.4f')}, " + (
            f"best validation loss {training['best_val_loss']:.4f}" if training["best_val_loss"] is not None
            else "no validation loss monitored"
        ),
        f"latent dim: {summary['latent_dim']}, trained on {summary['device']}",
        *([] if floors is None else [_floors_line(floors)]),
        *(["variance:   unreadable (the network configuration is damaged)"] if unreadable_floors else []),
        "parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["params"].items())),
    ]
    click.echo("\n".join(lines))


def _number(value, spec):
    """``value`` formatted by ``spec``, or "?" where a damaged file lacks it."""
    return "?" if value is None else format(value, spec)


def _floors_line(floors):
    """The Gaussian likelihood's variance floors (standardised units) in a
    line: the common one, and the range of those a value grid raised."""
    from .floors import DEFAULT_MIN_VARIANCE

    def span(values):
        low, high = values.min(), values.max()
        return f"{low:.3g}" if low == high else f"{low:.3g} to {high:.3g}"

    raised = floors[floors > DEFAULT_MIN_VARIANCE]
    if raised.size in (0, floors.size):
        return f"variance:   floor {span(floors)} on every feature (standardised units)"
    kept = floors.size - raised.size
    return (
        f"variance:   floor {DEFAULT_MIN_VARIANCE:g} on {kept} feature{'s' * (kept > 1)}, "
        f"{span(raised)} on {raised.size} (from their value grids; standardised units)"
    )


def _image_line(summary):
    channels, height, width = summary["image_shape"]
    color = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels} channels")
    line = f"image:      {channels}x{height}x{width} (C x H x W), {color}; "
    if summary["image_size"] is None:
        # A conv model saved from Python without extra={"input": "images"}.
        return line + "not marked as an image model, so score reads CSV rows of pixels"
    return line + f"score resizes every image to {height}x{width} pixels (H x W)"
