"""anomvae.results' CSV text: byte for byte what the Python formatter it
replaced wrote (kept here as the reference), on varied values."""

import io
import re

import numpy as np
import pandas as pd
import pytest

from anomvae.results import write_frame

_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def _quote(text):
    return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text


def _reference_cells(values):
    if values.dtype.kind == "f":
        return ["" if v != v else repr(v) for v in values.tolist()]
    if values.dtype.kind in "iub":
        return values.astype(str).tolist()
    return [_quote("" if v is None or v != v else str(v)) for v in values.tolist()]


def reference_csv(frame, header=True):
    """The CSV that anomvae 0.4 wrote, cell by cell in Python."""
    lines = [",".join(_quote(str(c)) for c in frame.columns)] if header else []
    columns = [_reference_cells(frame[c].to_numpy()) for c in frame.columns]
    lines += map(",".join, zip(*columns))
    return "".join(line + "\n" for line in lines)


def written(frame, header=True):
    out = io.StringIO()
    write_frame(frame, out, "csv", header)
    return out.getvalue()


def varied_floats(rng, n):
    """Floats of every magnitude, whole numbers, zeros of both signs,
    infinities, NaN, subnormals and float64's extremes."""
    with np.errstate(over="ignore"):
        values = rng.normal(size=n) * 10.0 ** rng.integers(-330, 309, n)
    for share, value in ((0.05, np.nan), (0.02, np.inf), (0.02, -np.inf), (0.02, 0.0), (0.02, -0.0),
                         (0.01, 5e-324), (0.01, np.finfo(np.float64).max), (0.01, np.finfo(np.float64).tiny)):
        values[rng.random(n) < share] = value
    whole = rng.random(n) < 0.05
    values[whole] = rng.integers(-10**6, 10**6, whole.sum())
    typical = rng.random(n) < 0.2
    values[typical] = rng.normal(20.0, 3.0, typical.sum())  # anomaly scores in nats
    return values


def test_csv_bytes_equal_the_python_formatter_on_a_large_varied_sample():
    rng = np.random.default_rng(0)
    n = 100_000
    alphabet = list('ab,"\n\r xé€😀1;\t')
    ids = np.array(["".join(rng.choice(alphabet, rng.integers(0, 7))) for _ in range(n)], dtype=object)
    ids[rng.random(n) < 0.02] = None
    frame = pd.DataFrame({
        "name, \"quoted\"": ids,
        "row": np.arange(1, n + 1),
        "count": rng.integers(-2**40, 2**40, n),
        "unsigned": rng.integers(0, 2**63, n, dtype=np.uint64),
        "anomaly_score": varied_floats(rng, n),
        "float32": np.clip(varied_floats(rng, n), -3e38, 3e38).astype(np.float32),
        "flag": rng.random(n) < 0.5,
        "is_anomaly": np.where(rng.random(n) < 0.1, "", np.where(rng.random(n) < 0.5, "true", "false")),
        "status": np.where(rng.random(n) < 0.5, "scored", "not scored: x, y"),
        "mixed": pd.Series([1, "a", 2.5, None, True] * (n // 5), dtype=object),
    })
    expected = reference_csv(frame)
    assert written(frame) == expected
    assert written(frame.iloc[:1000], header=False) == reference_csv(frame.iloc[:1000], header=False)


@pytest.mark.parametrize("exponent", range(-8, 18))
def test_floats_match_repr_digit_by_digit_at_every_magnitude(exponent):
    rng = np.random.default_rng(exponent + 100)
    values = []
    for digits in range(1, 18):
        mantissas = rng.integers(10 ** (digits - 1), 10**digits, 200).astype(np.float64)
        values.append(mantissas * 10.0 ** (exponent - digits + 1))
    values = np.concatenate(values)
    frame = pd.DataFrame({"a": np.concatenate([values, -values, np.nextafter(values, 0)])})
    assert written(frame) == reference_csv(frame)


def test_missing_values_and_quoting_cells():
    frame = pd.DataFrame({"id": ["a", None, 'b"c', "d\ne"], "anomaly_score": [1.0, np.nan, np.inf, 0.1]})
    assert written(frame) == 'id,anomaly_score\na,1.0\n,\n"b""c",inf\n"d\ne",0.1\n'
