"""Click parameter types and options shared by the commands, and the
progress bar of training."""

import contextlib
import functools
import logging
import math
import sys

import click

from ..errors import quote


class AutoOr(click.ParamType):
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


class CommaList(click.ParamType):
    """A comma-separated list, as a tuple of ``kind`` (``str`` or ``int``)."""

    def __init__(self, kind=str):
        self.kind = kind
        self.name = "N,N,..." if kind is int else "NAME,NAME,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.kind(part.strip()) for part in value.split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)


# Every VAEAnomalyDetector hyperparameter, as (parameter, click type, default,
# help). The defaults repeat the estimator's so that --help shows them
# without importing torch; a test keeps the two in step.
ESTIMATOR_OPTIONS = [
    ("latent_dim", AutoOr(int, {"auto": "auto"}), "auto",
     "Latent size; auto = ceil(sqrt(n_features)) in [2, 32] (conv: ceil(sqrt(H*W)/2))."),
    ("hidden_dims", CommaList(int), (64, 32), "Encoder hidden widths, e.g. 64,32; mirrored by the decoder."),
    ("likelihood", click.Choice(["gaussian", "bernoulli", "continuous_bernoulli"]), "gaussian",
     "Observation model p(x|z) [image fits: bernoulli unless given]."),
    ("min_variance", AutoOr(float, {"auto": "auto"}), "auto", "Floor of the Gaussian likelihood's "
     "variances, in the network's (by default standardised) units; auto = max(1e-3, step**2/12) per "
     "feature, step = the smallest gap between its training values."),
    ("architecture", click.Choice(["mlp", "conv"]), "mlp", "Network: dense (mlp) or convolutional "
     "(conv) [image fits: conv unless given]."),
    ("beta", float, 1.0, "Weight of the KL term in training."),
    ("kl_warmup", int, 10, "Epochs over which the KL weight ramps up."),
    ("max_epochs", int, 400, "Maximum number of epochs."),
    ("batch_size", AutoOr(int, {"auto": "auto"}), "auto", "Rows per optimisation step; auto = "
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
    ("n_iter_no_change", AutoOr(int, {"none": None}), 20, "Early-stopping patience in epochs; none disables."),
    ("tol", float, 1e-3, "Relative improvement that resets the patience."),
    ("n_score_samples", int, 8, "Fixed latent draws per row when scoring."),
    ("contamination", AutoOr(float, {"auto": "auto"}), "auto", "Threshold rule: auto (Tukey) or a rate in (0, 0.5]."),
    ("standardize", click.Choice(["auto", "true", "false"]), "auto", "Scale features by training mean and std."),
    ("score_bound", click.Choice(["elbo", "iwae"]), "elbo", "Score bound: the ELBO, or the importance-weighted bound."),
    ("device", str, "auto", "Torch device: auto, cpu, cuda, cuda:N."),
    ("random_state", AutoOr(int, {"none": None}), None, "Seed for reproducible training."),
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


def estimator_params(values):
    params = {param: values.pop(param) for param, *_ in ESTIMATOR_OPTIONS}
    for name in ("standardize", "refit_inliers"):
        if isinstance(params[name], str) and params[name] != "auto":
            params[name] = params[name] == "true"
    return params


def csv_dialect_options(command):
    """Add ``--delimiter`` and ``--decimal``, the CSV dialect of DATA, to ``command``."""
    command = click.option("--decimal", type=Character(), default=".", show_default=True,
                           help="Decimal mark of the CSV's numbers (',' for 1,5).")(command)
    return click.option("--delimiter", type=Character(), default=",", show_default=True,
                        help="Field delimiter of the CSV (\\t or tab for a tab).")(command)


def threads_option(command):
    """Add ``--threads N`` to ``command``: torch's intra-op threads
    (``torch.set_num_threads``), set before the command does any work;
    one unless the option says otherwise. The command's process also
    keeps freed memory for reuse (:func:`anomvae.allocator.keep_freed_memory`).

    .. versionchanged:: 0.5
       One thread by default, instead of torch's one per core.
    """

    @functools.wraps(command)
    def with_threads(*args, threads, **kwargs):
        import torch

        from ..allocator import keep_freed_memory

        torch.set_num_threads(threads)
        keep_freed_memory()
        return command(*args, **kwargs)

    return click.option(
        "--threads", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
        help="CPU threads torch computes with. One keeps a job from waiting on its own threads when "
        "other work shares the cores; more can help a long fit on an idle machine. Scores are the same.",
    )(with_threads)


def report_warnings(caught, quiet):
    if quiet:
        return
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)


class EpochProgress(logging.Handler):
    """Shows each epoch the detector logs on one line of ``stream``,
    rewritten in place: ``epoch N, loss X, val Y, patience left P``.

    No bar and no time estimate: early stopping usually ends training long
    before ``max_epochs``, so a bar towards it would show a false ETA.
    ``val`` is left out when nothing is validated, ``patience left`` (the
    epochs without improvement early stopping still allows) without early
    stopping.
    """

    def __init__(self, stream):
        super().__init__(logging.DEBUG)
        self.stream, self.width = stream, 0

    @staticmethod
    def describe(epoch, patience_left):
        parts = [f"epoch {epoch.epoch}", f"loss {epoch.train_loss:.3f}"]
        if not math.isnan(epoch.val_loss):
            parts.append(f"val {epoch.val_loss:.3f}")
        if patience_left is not None:
            parts.append(f"patience left {patience_left}")
        return ", ".join(parts)

    def emit(self, record):
        epoch = getattr(record, "anomvae_epoch", None)
        if epoch is None:
            return
        line = self.describe(epoch, getattr(record, "anomvae_patience_left", None))
        # Padded to the longest line so far, so a shorter one leaves no tail.
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = max(self.width, len(line))

    def finish(self):
        """End the line, if any was shown."""
        if self.width:
            self.stream.write("\n")
            self.stream.flush()


@contextlib.contextmanager
def progress(quiet, stream=None):
    """Training progress on ``stream`` (standard error), only when it is a terminal."""
    stream = sys.stderr if stream is None else stream
    if quiet or not stream.isatty():
        yield
        return
    logger = logging.getLogger("anomvae")
    handler = EpochProgress(stream)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.finish()


class Data(click.ParamType):
    """A CSV file (``-`` for stdin), Parquet data (see
    :func:`anomvae.parquet.is_parquet_source`), or images: a folder, a glob pattern, an
    image file or a ``.npy``/``.npz`` array (see :func:`anomvae.images.is_image_source`)."""

    name = "DATA"
    _csv = click.Path(exists=True, dir_okay=False, allow_dash=True)

    def convert(self, value, param, ctx):
        from ..images import is_image_source
        from ..parquet import is_parquet_source

        # Parquet data and images are checked when read, naming what is missing.
        if is_image_source(value) or is_parquet_source(value):
            return value
        return self._csv.convert(value, param, ctx)


class Character(click.ParamType):
    """One character of the CSV format (``--delimiter``, ``--decimal``);
    ``\\t`` or ``tab`` for a tab."""

    name = "CHAR"

    def convert(self, value, param, ctx):
        if value in ("\\t", "tab"):
            return "\t"
        if len(value) != 1:
            what = f"{quote(value)} is {len(value)} characters" if value else "it is empty"
            self.fail(f"{what}; give one character, such as ',' or ';' (\\t or tab for a tab)", param, ctx)
        if value in '\r\n"':
            self.fail(f"{value!r} cannot be used: it ends lines or quotes fields", param, ctx)
        return value


def check_dialect(delimiter, decimal):
    """A usage error when the decimal mark is also the delimiter."""
    if delimiter == decimal:
        raise click.UsageError(f"--decimal {decimal!r} is also the --delimiter; files with a decimal comma are "
                               "usually delimited by ';' (--delimiter ';')")


class FiniteFloat(click.ParamType):
    """A finite number: ``nan`` and ``inf`` are refused."""

    name = "FLOAT"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class ImageSize(click.ParamType):
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


DATA = Data()
# What image fits use when --architecture or --likelihood is not given.
IMAGE_DEFAULTS = {"architecture": "conv", "likelihood": "bernoulli"}
# The colour mode of an image model's channel count, as fit records it.
COLORS = {1: "grayscale", 3: "rgb"}


def given_options(ctx, names):
    """The flags (``--id-column``) of the parameters ``names`` of ``ctx``'s
    command that the user gave, in the order of ``names``."""
    flags = {param.name: max(param.opts, key=len) for param in ctx.command.params}
    return [flags[name] for name in names if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]


def refuse_csv_options(ctx, names, data, kind="images"):
    """A usage error naming the CSV-only options given for image (or
    Parquet) data, which would otherwise be ignored without a word."""
    given = given_options(ctx, names)
    if given:
        raise click.UsageError(f"{', '.join(given)} apply to CSV data; {data} is read as {kind}")


def refit_note(n_excluded, refit_inliers):
    """What ``refit_inliers`` did, for the fit and info summaries ('' when no refit was asked for)."""
    if n_excluded is None:
        return ", no refit (auto: batches not trimmed)" if refit_inliers == "auto" else ""
    if n_excluded == 0:
        return ", no refit (the first network flagged no rows, or too many to train on)"
    return f", after a refit without the {n_excluded} rows the first network flagged"


def data_inputs(data, as_images):
    """DATA as :func:`anomvae.files.check_outputs` reads inputs: for images,
    also every image file that a folder or a pattern names; for Parquet,
    every file of a folder or pattern."""
    from ..errors import DataError
    from ..images import list_images
    from ..parquet import is_parquet_source, list_files

    inputs = {"DATA": data}
    with contextlib.suppress(DataError):  # the command itself names what is wrong
        if as_images:
            inputs["an image of DATA"] = list_images(data)
        elif is_parquet_source(data):
            inputs["a file of DATA"] = list_files(data)
    return inputs
