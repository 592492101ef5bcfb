"""A scoring run as Prometheus metrics, for node_exporter's textfile collector.

:func:`metrics_text` turns a :class:`~anomvae.results.ScoringSummary` (of
CSV rows or of images) into Prometheus' text exposition format (version
0.0.4): one gauge per fact of the run, named ``anomvae_*`` in base units,
each with its ``# HELP`` and ``# TYPE`` lines and the same labels.
:func:`write_metrics_file` writes it with :func:`anomvae.files.atomic_write`,
so a collector never reads a partial file, and a run that fails leaves the
previous file as it was: alert on a stale
``anomvae_last_success_timestamp_seconds`` to catch failed runs.

The format is written here rather than with ``prometheus_client``: it takes
a few lines (no sample timestamps, which the textfile collector refuses),
and ``anomvae score --metrics-file`` then works wherever anomvae is
installed, with no extra to install on the hosts that run monitoring jobs.
The tests read every file back with ``prometheus_client``'s parser.
"""

import math
import re
import time

from .calibration import SHIFT_P_VALUE
from .files import atomic_write

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# (name, help, value of a summary or None to leave the gauge out), in the order written.
_GAUGES = (
    ("anomvae_rows_scored", "Rows (or images) that the last successful run scored.",
     lambda s: s.rows_scored),
    ("anomvae_rows_flagged", "Rows (or images) that the last successful run flagged: anomaly score above "
     "the threshold.", lambda s: s.anomalies),
    ("anomvae_rows_not_scored", "Rows (or images) that the last successful run could not score (invalid "
     "values, unreadable images).", lambda s: s.rows_not_scored),
    ("anomvae_threshold_nats", "Anomaly-score threshold of the last successful run, in nats.",
     lambda s: s.threshold),
    ("anomvae_max_score_nats", "Highest anomaly score of the last successful run, in nats (absent when "
     "nothing was scored).", lambda s: s.max_score),
    ("anomvae_calibration_false_alarm_ratio", "False-alarm rate the model was calibrated for (calibrated "
     "models only).", lambda s: s.calibration_fpr),
    ("anomvae_score_shift_ks_statistic", "Two-sample Kolmogorov-Smirnov statistic of the run's anomaly "
     "scores against the model's calibration or training scores (when the shift test ran).",
     lambda s: _shift(s, "ks_statistic")),
    ("anomvae_score_shift_p_value", "p-value of that Kolmogorov-Smirnov test (when the shift test ran).",
     lambda s: _shift(s, "ks_p_value")),
    ("anomvae_score_shifted", f"1 when that p-value is below {SHIFT_P_VALUE:g}: the batch's scores differ "
     "from the baseline's; else 0 (when the shift test ran).", lambda s: _shift(s, "shifted")),
)


def _shift(summary, attribute):
    shift = getattr(summary, "score_shift", None)
    return None if shift is None else getattr(shift, attribute)


def metrics_text(summary, labels, *, duration_seconds=None, timestamp=None):
    """The Prometheus text exposition of one scoring run.

    Parameters
    ----------
    summary : ScoringSummary
        What :func:`anomvae.scoring.score_csv` or
        :func:`~anomvae.scoring.score_images` returned.
    labels : dict of str to str
        Labels of every sample, such as ``{"model": "m.anomvae"}``. Names
        match ``[a-zA-Z_][a-zA-Z0-9_]*`` and do not start with ``__``;
        values may hold any character (they are escaped, and text that is
        not valid UTF-8, such as an undecodable file name, gets U+FFFD).
    duration_seconds : float, default=None
        How long the run took, as ``anomvae_run_duration_seconds``; None
        leaves that gauge out.
    timestamp : float, default=None
        When the run succeeded, in seconds since the epoch, as
        ``anomvae_last_success_timestamp_seconds``; None means now.

    Returns
    -------
    str
        ``# HELP``, ``# TYPE`` and one sample per gauge, ending in a line
        break. Gauges whose value is unknown (``max_score`` with nothing
        scored, the shift test when it did not run, the calibration of an
        uncalibrated model) are left out; an infinite value is ``+Inf``.

    Examples
    --------
    >>> from anomvae.results import ScoringSummary
    >>> summary = ScoringSummary(threshold=8.5, rows=3, rows_scored=3, anomalies=1, max_score=12.25)
    >>> print(metrics_text(summary, {"model": "m.anomvae"}, timestamp=1700000000).splitlines()[2])
    anomvae_rows_scored{model="m.anomvae"} 3
    """
    selector = _selector(labels)
    gauges = [(name, text, value(summary)) for name, text, value in _GAUGES]
    gauges.append(("anomvae_run_duration_seconds", "How long the last successful run took, in seconds.",
                   duration_seconds))
    gauges.append(("anomvae_last_success_timestamp_seconds", "When the last successful run finished, in "
                   "seconds since the Unix epoch.", time.time() if timestamp is None else timestamp))
    lines = []
    for name, text, value in gauges:
        if value is not None:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name}{selector} {_number(value)}"]
    return "\n".join(lines) + "\n"


def write_metrics_file(path, summary, labels, *, duration_seconds=None, timestamp=None):
    """Write :func:`metrics_text` to ``path`` atomically, as UTF-8.

    node_exporter's textfile collector reads files ending in ``.prom`` from
    its ``--collector.textfile.directory``. ``"-"`` writes to standard
    output. On any error ``path`` is left as it was.

    Raises
    ------
    OutputError
        When ``path`` cannot be written.
    """
    text = metrics_text(summary, labels, duration_seconds=duration_seconds, timestamp=timestamp)
    with atomic_write(path, "wb") as stream:
        stream.write(text.encode("utf-8"))


def _selector(labels):
    """``{name="value",...}`` for ``labels``, or nothing for none."""
    pairs = []
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"{name!r} is not a Prometheus label name: use letters, digits and '_', "
                             "not starting with a digit or '__'")
        pairs.append(f'{name}="{_label_value(value)}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _label_value(value):
    # surrogateescape gives back the bytes of an undecodable file name,
    # which become U+FFFD: Prometheus takes only valid UTF-8.
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value):
    """A sample value as Prometheus reads it: integers as they are, floats
    at full precision, ``+Inf``, ``-Inf`` and ``NaN``."""
    value = value.item() if hasattr(value, "item") else value  # numpy scalars
    if isinstance(value, (bool, int)):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
