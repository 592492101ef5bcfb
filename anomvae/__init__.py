"""anomvae: anomaly detection with variational autoencoders.

The estimator is imported lazily so that ``import anomvae`` (and the
``anomvae`` command's ``--help``) does not pay for importing torch.
"""

from .version import __version__

__all__ = ["VAEAnomalyDetector", "load", "save", "__version__"]


def __getattr__(name):
    if name == "VAEAnomalyDetector":
        from .detector import VAEAnomalyDetector

        return VAEAnomalyDetector
    if name in ("load", "save"):
        from . import persistence

        return getattr(persistence, name)
    raise AttributeError(f"module 'anomvae' has no attribute {name!r}")
