"""The ``anomvae`` command: ``fit``, ``score``, ``calibrate``, ``info`` and ``report``.

:func:`run` is the program (its console script); :func:`main` is the click
group, for Python callers and tests. Each command lives in a module of its
own and registers itself on the group when imported here.
"""

from . import fit, info, report, score  # noqa: F401  (registers the commands)
from .app import main, run

__all__ = ["main", "run"]
