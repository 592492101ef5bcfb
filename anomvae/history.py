"""The record of a training run, readable without torch.

:class:`TrainingHistory` is what a fitted model keeps as ``history_`` and
what a model file stores; ``anomvae info`` reads it without the network.
"""

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training, in nats per row. ``train_loss`` is the
    weighted objective over the rows each step kept; the other ``train_``
    terms are over every row; the ``val_`` terms are for the monitored
    rows (NaN when nothing is monitored), ``val_loss`` with weight ``beta``."""

    epoch: int
    beta: float
    train_loss: float
    train_reconstruction: float
    train_kl: float
    val_loss: float
    val_reconstruction: float
    val_kl: float


@dataclass
class TrainingHistory:
    """Per-epoch records as one list per :class:`EpochRecord` field."""

    epoch: list = field(default_factory=list)
    beta: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_reconstruction: list = field(default_factory=list)
    train_kl: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_reconstruction: list = field(default_factory=list)
    val_kl: list = field(default_factory=list)

    def append(self, record):
        for name in self.names():
            getattr(self, name).append(getattr(record, name))

    def __len__(self):
        return len(self.epoch)

    @staticmethod
    def names():
        """Field names, in order."""
        return [f.name for f in fields(EpochRecord)]

    def to_dict(self):
        return {name: list(getattr(self, name)) for name in self.names()}

    @classmethod
    def from_dict(cls, values):
        return cls(**{name: list(values.get(name, [])) for name in cls.names()})
