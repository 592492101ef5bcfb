"""anomvae report: the command's page, its agreement with score, its errors."""

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import NEW, ReportPage, assert_input_error, assert_offline, assert_runs_without, invoke
from PIL import Image


@pytest.fixture(scope="module")
def cardio_report(model, tmp_path_factory):
    """The report on cardio_new.csv, with score's results and summary for the same batch."""
    root = tmp_path_factory.mktemp("cli-report")
    result = invoke("report", model, NEW, "-o", root / "r.html", "--top", "7")
    assert result.exit_code == 0, result.output
    scored = invoke("score", model, NEW, "-o", root / "s.csv", "--summary-json", root / "s.json",
                    "--summary-top", "7", "-q")
    assert scored.exit_code == 0, scored.output
    return (root / "r.html").read_text(), pd.read_csv(root / "s.csv", dtype={"record_id": str}), \
        json.loads((root / "s.json").read_text()), result


def test_numbers_match_score_summary_json(cardio_report):
    text, _, summary, result = cardio_report
    page = assert_offline(text)
    for key in ("rows", "rows_scored", "rows_not_scored", "anomalies", "threshold", "max_score", "calibration_fpr"):
        assert page.value("batch-" + key.replace("_", "-")) == summary[key], key
    assert page.value("shift-statistic") == summary["score_shift"]["ks_statistic"]
    assert page.value("shift-p-value") == summary["score_shift"]["ks_p_value"]
    assert page.by_id("shift")["data-shifted"] == str(summary["score_shift"]["shifted"]).lower()
    assert f"{summary['rows']} rows, {summary['anomalies']} anomalies" in result.stderr


def test_top_table_is_the_highest_scores_of_score(cardio_report):
    text, scores, summary, _ = cardio_report
    expected = scores.sort_values("anomaly_score", ascending=False, kind="stable").head(7)
    rows = ReportPage(text).top_rows()
    assert [ids["record_id"] for ids, _ in rows] == expected["record_id"].tolist()
    assert [score for _, score in rows] == expected["anomaly_score"].tolist()
    assert [{"record_id": ids["record_id"], "anomaly_score": s} for ids, s in rows] == summary["top_anomalies"]


def test_every_image_decodes(cardio_report):
    pictures = ReportPage(cardio_report[0]).images()
    assert len(pictures) == 2 and all(p.width > 300 and p.height > 200 for p in pictures)


def test_image_model_report_has_the_grid(calibrated_image_model, new_images, tmp_path):
    result = invoke("report", calibrated_image_model, new_images, "-o", tmp_path / "r.html", "--top", "5")
    assert result.exit_code == 0, result.output
    page = assert_offline((tmp_path / "r.html").read_text())
    cells = [attrs for tag, attrs in page.elements if tag == "div" and attrs.get("class") == "cell"]
    # 8 images: the 5 highest-scoring, then the 4 lowest less the one already among them.
    assert len(cells) == 5 + 3 and len(page.images()) == 2 + 8
    scored = invoke("score", calibrated_image_model, new_images, "--summary-json", "-", "-o", tmp_path / "s.csv",
                    "-q", "--summary-top", "5")
    summary = json.loads(scored.stdout)
    assert page.value("batch-anomalies") == summary["anomalies"] and page.value("batch-rows") == 8
    assert [ids["path"] for ids, _ in page.top_rows()] == [row["path"] for row in summary["top_anomalies"]]


def test_model_only_report(model, tmp_path):
    result = invoke("report", model, "-o", tmp_path / "m.html")
    assert result.exit_code == 0, result.output
    page = assert_offline((tmp_path / "m.html").read_text())
    assert {attrs.get("id") for tag, attrs in page.elements if tag == "section"} == {"model", "training", "scores"}
    assert_input_error(invoke("report", model, "-o", tmp_path / "x.html", "--top", "3"), "--top", "give DATA")


def test_report_to_standard_output(model):
    result = invoke("report", model, "-o", "-", "-q")
    assert result.exit_code == 0 and result.stdout.startswith("<!DOCTYPE html>") and not result.stderr


def test_parquet_batch(model, tmp_path):
    pd.read_csv(NEW, dtype={"record_id": str}).to_parquet(tmp_path / "new.parquet")
    result = invoke("report", model, tmp_path / "new.parquet", "-o", tmp_path / "r.html", "-q")
    assert result.exit_code == 0, result.output
    assert ReportPage((tmp_path / "r.html").read_text()).value("batch-rows") == 550


def test_rows_not_scored_are_counted(model, tmp_path):
    frame = pd.read_csv(NEW, dtype={"record_id": str})
    frame.loc[[2, 5], "AC"] = np.nan
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    assert_input_error(invoke("report", model, tmp_path / "gaps.csv", "-o", tmp_path / "r.html"), "gaps.csv",
                       "--invalid-rows mark")
    assert not (tmp_path / "r.html").exists()
    result = invoke("report", model, tmp_path / "gaps.csv", "-o", tmp_path / "r.html", "--invalid-rows", "mark")
    assert result.exit_code == 0, result.output
    page = ReportPage((tmp_path / "r.html").read_text())
    assert page.value("batch-rows-not-scored") == 2 and page.value("batch-rows-scored") == 548


def test_errors(model, image_model, tmp_path):
    assert_input_error(invoke("report", model, NEW, "-o", NEW), "would overwrite DATA")
    assert_input_error(invoke("report", model, NEW, "-o", model), "would overwrite MODEL")
    assert_input_error(invoke("report", image_model, NEW, "-o", tmp_path / "r.html"), "model of images")
    assert_input_error(invoke("report", model, NEW, "-o", tmp_path / "r.html", "--id-column", "nope"), "nope")
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_is_one_line(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_input_error(invoke("report", model, "-o", tmp_path / "r.html"), "pip install 'anomvae[report]'")


def test_help_imports_neither_torch_nor_matplotlib():
    assert_runs_without(["report", "--help"], "torch", "matplotlib")
    assert_runs_without(["--help"], "torch", "matplotlib")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_chromium_renders_the_page(cardio_report, tmp_path):
    (tmp_path / "r.html").write_text(cardio_report[0])
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1000,1400", "--enable-logging=stderr", "--v=0", (tmp_path / "r.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Page errors that would matter: a blocked resource, a script or CSP violation, a broken image.
    problems = [line for line in result.stderr.splitlines()
                if "CONSOLE" in line or "Content Security Policy" in line or "net::ERR" in line]
    assert not problems, problems
    picture = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"))
    assert picture.shape == (1400, 1000) and picture.std() > 10  # not blank
