"""The network's architecture as a frozen record, readable without torch.

:class:`NetworkConfig` is what a model file stores to rebuild the network
(:func:`anomvae.model.build_vae`), and what ``anomvae info`` describes;
the functions below resolve the estimator's ``"auto"`` choices into it.
"""

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral

import numpy as np

from .errors import quote

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("gaussian", "bernoulli", "continuous_bernoulli")
# Bounds on a network, far above any useful one: a model file describing
# more is refused before anything is allocated for it.
MAX_FEATURES = 10_000_000
MAX_WIDTH = 65_536
MAX_HIDDEN_LAYERS = 32
# Latent draws per row at scoring time: beyond a few thousand the score's
# Monte Carlo noise is far below any threshold's precision.
MAX_SCORE_SAMPLES = 10_000


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild a network before loading its weights.

    Attributes
    ----------
    architecture : {"mlp", "conv"}
    n_features : int
        Inputs per row (pixels for ``"conv"``).
    hidden_dims : tuple of int
        Encoder widths; the decoder mirrors them.
    latent_dim : int
    likelihood : {"gaussian", "bernoulli", "continuous_bernoulli"}
    n_score_samples : int
        Fixed latent draws per row at scoring time.
    min_variance : tuple of float or None
        Per-feature variance floors of the Gaussian likelihood; None for the
        other likelihoods.
    image_shape : tuple of 3 int or None
        ``(channels, height, width)`` for ``"conv"``.
    """

    architecture: str
    n_features: int
    hidden_dims: tuple
    latent_dim: int
    likelihood: str
    n_score_samples: int = 1
    min_variance: tuple = None
    image_shape: tuple = None

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {quote(self.architecture)} is not one of {', '.join(ARCHITECTURES)}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood {quote(self.likelihood)} is not one of {', '.join(LIKELIHOODS)}")
        _check_count("n_features", self.n_features, MAX_FEATURES)
        _check_count("latent_dim", self.latent_dim, MAX_WIDTH)
        _check_count("n_score_samples", self.n_score_samples, MAX_SCORE_SAMPLES)
        if len(self.hidden_dims) > MAX_HIDDEN_LAYERS:
            raise ValueError(f"hidden_dims has {len(self.hidden_dims)} layers; at most {MAX_HIDDEN_LAYERS} are allowed")
        for width in self.hidden_dims:
            _check_count("a hidden_dims width", width, MAX_WIDTH)
        if self.min_variance is not None and not all(
            isinstance(v, float) and math.isfinite(v) and v > 0 for v in self.min_variance
        ):
            raise ValueError("min_variance must hold positive finite numbers")
        if self.architecture == "conv" and self.image_shape is None:
            raise ValueError("a conv network needs an image_shape")
        if self.image_shape is not None:
            if len(self.image_shape) != 3:
                raise ValueError(f"image_shape {quote(list(self.image_shape))} is not (channels, height, width)")
            for side in self.image_shape:
                _check_count("an image_shape entry", side, MAX_FEATURES)
        if self.min_variance is not None and len(self.min_variance) != self.n_features:
            raise ValueError(f"min_variance holds {len(self.min_variance)} values for {self.n_features} features")
        if self.image_shape is not None and math.prod(self.image_shape) != self.n_features:
            raise ValueError(f"image_shape {list(self.image_shape)} does not hold {self.n_features} features")

    @classmethod
    def from_dict(cls, values):
        """A configuration from its JSON form (:meth:`to_dict`), checked:
        ValueError names the first entry of the wrong type or out of bounds."""
        if not isinstance(values, dict):
            raise ValueError(f"{quote(values)} is not a mapping")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown entries {quote(unknown)}")
        floors = values.get("min_variance")
        shape = values.get("image_shape")
        return cls(
            architecture=_typed(values, "architecture", str),
            n_features=_typed(values, "n_features", int),
            hidden_dims=tuple(_typed(values, "hidden_dims", list, item=int)),
            latent_dim=_typed(values, "latent_dim", int),
            likelihood=_typed(values, "likelihood", str),
            n_score_samples=_typed(values, "n_score_samples", int),
            min_variance=None if floors is None else tuple(
                float(v) for v in _typed(values, "min_variance", list, item=(int, float))),
            image_shape=None if shape is None else tuple(_typed(values, "image_shape", list, item=int)),
        )

    def to_dict(self):
        """JSON form: lists for tuples, and no key for a field that is None."""
        values = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
        return {key: value for key, value in values.items() if value is not None}

    def variance_floors(self):
        """The Gaussian likelihood's floors as an array (None otherwise)."""
        return None if self.min_variance is None else np.asarray(self.min_variance, dtype=np.float64)

    def inner_widths(self):
        """Widths of the latent code and hidden layers (for conv networks
        also each feature map's size), which with the input's width bound
        the height of the chunks the network is run on."""
        widths = [self.latent_dim, *self.hidden_dims]
        if self.image_shape:
            channels, sizes = conv_plan(self.image_shape)
            widths += [c * h * w for c, (h, w) in zip(channels, sizes)]
        return widths


def _is(value, kind):
    """``isinstance``, except that a bool is not a number here."""
    return isinstance(value, kind) and not isinstance(value, bool)


def _typed(values, key, kind, item=None):
    """``values[key]``, which must be a ``kind`` (of ``item`` entries)."""
    if key not in values:
        raise ValueError(f"no {key}")
    value = values[key]
    kinds = (list, tuple) if kind is list else kind
    if not _is(value, kinds) or (item is not None and not all(_is(v, item) for v in value)):
        what = f"a list of {item.__name__ if isinstance(item, type) else 'number'}s" if item else kind.__name__
        raise ValueError(f"{key} {quote(value)} is not {what}")
    return value


def _check_count(name, value, maximum):
    if not _is(value, Integral) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an integer from 1 to {maximum}, got {quote(value)}")


def conv_plan(image_shape):
    """Channel widths and feature-map sizes of the convolutional encoder.

    Each stage halves height and width (rounding up) with a stride-2
    convolution, until the larger side is at most 4 pixels (at least one
    stage).  Widths start at 32 channels and double per stage up to 128, so
    a 8x8 image gets stages of 32 and 64 channels, a 64x64 one four stages.

    Returns
    -------
    channels : list of int
    sizes : list of (int, int)
        Height and width after each stage.
    """
    _, height, width = (int(v) for v in image_shape)
    channels, sizes = [], []
    while not sizes or max(sizes[-1]) > 4:
        height, width = (height + 1) // 2, (width + 1) // 2
        channels.append(min(128, 32 * 2 ** len(channels)))
        sizes.append((height, width))
        if (height, width) == (1, 1):
            break
    return channels, sizes


def resolve_image_shape(image_shape, n_features):
    """``image_shape`` as a tuple of three positive ints holding ``n_features``
    pixels; one entry may be -1, inferred as in ``numpy.reshape``."""
    if image_shape is None:
        raise ValueError("architecture='conv' needs image_shape=(channels, height, width)")
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in shape):
        raise ValueError(f"image_shape must be three integers (channels, height, width), got {image_shape!r}")
    if shape.count(-1) == 1:
        known = math.prod(v for v in shape if v != -1)
        if known > 0 and n_features % known == 0:
            shape = tuple(n_features // known if v == -1 else v for v in shape)
    if not all(v >= 1 for v in shape) or math.prod(shape) != n_features:
        raise ValueError(
            f"image_shape={image_shape!r} does not match X: {n_features} features per row, but "
            f"channels x height x width must equal the number of features"
        )
    return tuple(int(v) for v in shape)


def check_hidden_dims(hidden_dims):
    """Raise ValueError unless ``hidden_dims`` (an estimator parameter) holds
    at most ``MAX_HIDDEN_LAYERS`` integer widths from 1 to ``MAX_WIDTH``."""
    if not all(isinstance(h, Integral) and not isinstance(h, bool) and 1 <= h <= MAX_WIDTH
               for h in hidden_dims) or len(hidden_dims) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"hidden_dims must hold at most {MAX_HIDDEN_LAYERS} integers from 1 to {MAX_WIDTH}, "
                         f"got {hidden_dims!r:.80}")


def auto_latent_dim(n_features, image_shape=None):
    """``latent_dim="auto"``: ``ceil(sqrt(n_features))`` in [2, 32]; for
    images half the square root of the pixels per channel (4 for 8x8, 16
    for 32x32), since neighbouring pixels are strongly correlated."""
    if image_shape is not None:
        return int(min(32, max(2, math.ceil(math.sqrt(image_shape[1] * image_shape[2]) / 2))))
    return int(min(32, max(2, math.ceil(math.sqrt(n_features)))))
