"""The errors anomvae raises for problems with what it was given, and its
warnings.

Each message names what is wrong: the file, and where it applies the column,
line and value. The command line turns every :class:`AnomvaeError` into a
one-line ``Error:`` message with exit code 2.
"""


class AnomvaeError(Exception):
    """Base of the errors below."""


class DataError(AnomvaeError, ValueError):
    """Input data that cannot be used, with a message naming where and why."""


class ModelFileError(AnomvaeError, ValueError):
    """A file that cannot be read as an anomvae model."""


class OutputError(AnomvaeError, OSError):
    """A result, summary or model file that cannot be written."""


class PosteriorCollapseWarning(UserWarning):
    """Fit found most latent units inactive (``active_units_`` below half of
    ``latent_dim_``) after training converged: the decoder ignores the
    latent code they would carry.

    A :class:`UserWarning`, not a ``ConvergenceWarning``: training converged,
    to a model that does not use its latent space. Filter it by this class.
    """


def quote(value, limit=80):
    """``repr(value)`` for an error message, cut to about ``limit``
    characters (saying how long the whole was), so that a huge value in a
    damaged file or a bad cell cannot flood the message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, (str, bytes)) else f"{len(text)} characters as text"
    return f"{text[:limit - 3]}... ({size})"
