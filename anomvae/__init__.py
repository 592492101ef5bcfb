"""anomvae: anomaly detection with variational autoencoders.

The estimator and :func:`report` are imported lazily so that ``import
anomvae`` (and the ``anomvae`` command's ``--help``) does not pay for
importing torch or matplotlib.
"""

from .version import __version__

__all__ = ["VAEAnomalyDetector", "load", "report", "save", "__version__"]


def __getattr__(name):
    if name == "VAEAnomalyDetector":
        from .detector import VAEAnomalyDetector

        return VAEAnomalyDetector
    if name in ("load", "save"):
        from . import persistence

        return getattr(persistence, name)
    if name == "report":
        # The module is anomvae.reporting, so that importing it cannot
        # replace this function with a module of the same name.
        from .reporting import report

        return report
    raise AttributeError(f"module 'anomvae' has no attribute {name!r}")
