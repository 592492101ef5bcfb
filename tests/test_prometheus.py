"""anomvae.prometheus: a scoring summary as Prometheus text, read back
with prometheus_client's own parser."""

import io
import math
import os

import pytest
from conftest import draw_rows as draw
from prometheus_client.parser import text_string_to_metric_families

from anomvae.calibration import ScoreShift
from anomvae.errors import OutputError
from anomvae.prometheus import metrics_text, write_metrics_file
from anomvae.results import ScoringSummary
from anomvae.scoring import score_csv

SHIFT = ScoreShift(baseline="calibration", n_baseline=300, n_batch=60, ks_statistic=0.25, ks_p_value=2.5e-4,
                   level=1e-3, shifted=True)


def parse(text):
    """{name: (type, help, [(labels, value)])} of every family in ``text``."""
    return {family.name: (family.type, family.documentation, [(s.labels, s.value) for s in family.samples])
            for family in text_string_to_metric_families(text)}


def values(text):
    families = parse(text)
    assert all(kind == "gauge" and len(samples) == 1 for kind, _, samples in families.values())
    return {name: samples[0][1] for name, (_, _, samples) in families.items()}


def summary(**changes):
    fields = dict(threshold=8.75, rows=60, rows_scored=58, rows_not_scored=2, anomalies=3, max_score=216.5,
                  calibration_fpr=0.05, score_shift=SHIFT)
    return ScoringSummary(**{**fields, **changes})


def test_every_fact_of_the_run_is_a_gauge_with_help_and_labels():
    text = metrics_text(summary(), {"model": "m.anomvae", "input": "batch.csv"}, duration_seconds=1.5,
                        timestamp=1_700_000_000.25)
    families = parse(text)
    assert values(text) == {
        "anomvae_rows_scored": 58, "anomvae_rows_flagged": 3, "anomvae_rows_not_scored": 2,
        "anomvae_threshold_nats": 8.75, "anomvae_max_score_nats": 216.5,
        "anomvae_calibration_false_alarm_ratio": 0.05,
        "anomvae_score_shift_ks_statistic": 0.25, "anomvae_score_shift_p_value": 2.5e-4,
        "anomvae_score_shifted": 1, "anomvae_run_duration_seconds": 1.5,
        "anomvae_last_success_timestamp_seconds": 1_700_000_000.25,
    }
    for name, (_, documentation, samples) in families.items():
        assert documentation, name
        assert samples[0][0] == {"model": "m.anomvae", "input": "batch.csv"}
    # Each family's HELP, TYPE and sample, in that order; no sample timestamps
    # (the textfile collector refuses them).
    lines = text.splitlines()
    assert len(lines) == 3 * len(families) and text.endswith("\n")
    assert all(line.count(" ") == 1 for line in lines[2::3])


def test_unknown_values_are_left_out_and_infinities_kept():
    never_scored = summary(rows_scored=0, rows_not_scored=4, anomalies=0, max_score=None, calibration_fpr=None,
                           score_shift=None)
    found = values(metrics_text(never_scored, {}, timestamp=1.0))
    assert set(found) == {"anomvae_rows_scored", "anomvae_rows_flagged", "anomvae_rows_not_scored",
                          "anomvae_threshold_nats", "anomvae_last_success_timestamp_seconds"}
    assert found["anomvae_rows_not_scored"] == 4
    text = metrics_text(summary(max_score=math.inf), {"model": "m"})
    assert values(text)["anomvae_max_score_nats"] == math.inf and " +Inf\n" in text


def test_the_timestamp_defaults_to_now(monkeypatch):
    monkeypatch.setattr("time.time", lambda: 1_800_000_000.5)
    found = values(metrics_text(summary(), {"model": "m"}))
    assert found["anomvae_last_success_timestamp_seconds"] == 1_800_000_000.5


@pytest.mark.parametrize("value", ['say "hi"\\now', "two\nlines", "naïve ☃.anomvae", "bad\udcff.anomvae", ""])
def test_label_values_are_escaped(value):
    text = metrics_text(summary(), {"model": value, "input": "x"})
    (labels, _), = parse(text)["anomvae_rows_scored"][2]
    expected = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    assert labels == {"model": expected, "input": "x"}
    text.encode("utf-8")  # valid UTF-8 throughout


@pytest.mark.parametrize("name", ["1model", "__name", "mo-del", "", 3])
def test_bad_label_names_are_refused(name):
    with pytest.raises(ValueError, match="not a Prometheus label name"):
        metrics_text(summary(), {name: "x"})


def test_write_metrics_file_of_a_scored_csv(detector, tmp_path):
    draw(40, seed=31).to_csv(tmp_path / "batch.csv", index=False)
    scored = score_csv(detector, str(tmp_path / "batch.csv"), io.StringIO())
    target = tmp_path / "anomvae.prom"
    write_metrics_file(target, scored, {"model": "d"}, duration_seconds=0.5, timestamp=2.0)
    assert target.read_bytes() == metrics_text(scored, {"model": "d"}, duration_seconds=0.5,
                                               timestamp=2.0).encode("utf-8")
    found = values(target.read_text())
    assert found["anomvae_rows_scored"] == 40 and found["anomvae_threshold_nats"] == detector.threshold_
    assert found["anomvae_score_shift_p_value"] == scored.score_shift.ks_p_value
    assert found["anomvae_score_shifted"] == 0
    assert sorted(os.listdir(tmp_path)) == ["anomvae.prom", "batch.csv"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "anomvae.prom"
    target.write_text("previous\n")
    with pytest.raises(ValueError):
        write_metrics_file(target, summary(), {"bad-name": "x"})
    with pytest.raises(OutputError, match="cannot write"):
        write_metrics_file(tmp_path / "missing" / "anomvae.prom", summary(), {})
    assert target.read_text() == "previous\n" and sorted(os.listdir(tmp_path)) == ["anomvae.prom"]
