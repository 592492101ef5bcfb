"""Variance floors of the Gaussian likelihood, readable without torch.

``anomvae info`` reports them from a model file's metadata alone, and the
network and the fitted detector read them from the same configuration.
"""

import numpy as np

# Smallest variance (in the units the network sees, i.e. standardised
# features by default) a Gaussian likelihood may learn.  Without a floor the
# likelihood of a near-constant feature grows without bound during training.
DEFAULT_MIN_VARIANCE = 1e-3


def variance_floors(config):
    """Per-feature variance floors of a network configuration (``None``
    unless the likelihood is Gaussian).  Configurations written before the
    floors were per-feature hold one value for every feature."""
    if config["likelihood"] != "gaussian":
        return None
    floor = np.asarray(config.get("min_variance", DEFAULT_MIN_VARIANCE), dtype=np.float64)
    return np.broadcast_to(floor, (int(config["n_features"]),)).copy()
