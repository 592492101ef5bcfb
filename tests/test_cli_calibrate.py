"""anomvae calibrate (anomvae.cli.score): a model calibrated on reference rows for
a false-alarm rate, written anew or in place. (Scoring with it: test_cli_score.py.)"""

import os

import numpy as np
import pytest
from conftest import assert_input_error, invoke
from conftest import draw_cli_rows as draw

import anomvae
from anomvae.persistence import read_metadata


def test_calibrate_writes_a_new_model_and_a_summary(files):
    result = invoke("calibrate", files / "plain.anomvae", files / "reference.csv", "--fpr", "0.1",
                    "-o", files / "other.anomvae")
    assert result.exit_code == 0 and result.stdout == ""
    assert "calibrated on 300 rows of " in result.stderr
    assert "reference.csv for a false-alarm rate of 0.1; threshold" in result.stderr
    plain, other = anomvae.load(files / "plain.anomvae"), anomvae.load(files / "other.anomvae")
    assert plain.reference_scores_ is None and other.calibration_fpr_ == 0.1
    expected = plain.calibrate(draw(300, seed=2), fpr=0.1)
    assert other.threshold_ == expected.threshold_
    assert read_metadata(files / "other.anomvae")["extra"]["id_columns"] == ["id"]


def test_calibrate_in_place_from_stdin(files, tmp_path):
    model = tmp_path / "m.anomvae"
    model.write_bytes((files / "plain.anomvae").read_bytes())
    result = invoke("calibrate", model, "-", "--fpr", "0.2", "-q",
                    input=(files / "reference.csv").read_text())
    assert result.exit_code == 0 and result.stderr == ""
    assert anomvae.load(model).calibration_fpr_ == 0.2


def test_calibrate_input_errors_leave_the_model_alone(files, tmp_path):
    model = tmp_path / "m.anomvae"
    model.write_bytes((files / "plain.anomvae").read_bytes())
    before = model.read_bytes()
    (tmp_path / "few.csv").write_text(draw(20, seed=4).to_csv(index=False))
    result = invoke("calibrate", model, tmp_path / "few.csv", "--fpr", "0.01")
    assert result.exit_code == 2 and "Error: calibrating for fpr=0.01 needs at least 99 reference rows, got 20" \
        in result.stderr
    holes = draw(200, seed=4)
    holes.loc[3, "b"] = np.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)
    result = invoke("calibrate", model, tmp_path / "holes.csv")
    assert result.exit_code == 2 and "line(s) 5" in result.stderr and "--invalid-rows skip" in result.stderr
    assert model.read_bytes() == before
    result = invoke("calibrate", model, tmp_path / "holes.csv", "--invalid-rows", "skip", "--fpr", "0.1")
    assert result.exit_code == 0 and "skipped 1 row(s) with empty, NaN or infinite values at line(s) 5" \
        in result.stderr
    assert len(anomvae.load(model).reference_scores_) == 199
    holes.head(3).assign(b=np.nan).to_csv(tmp_path / "none.csv", index=False)
    before = model.read_bytes()
    result = invoke("calibrate", model, tmp_path / "none.csv", "--invalid-rows", "skip")
    assert result.exit_code == 2 and "none.csv: every row was skipped" in result.stderr
    assert "line(s) 2, 3, 4" in result.stderr and model.read_bytes() == before
    for bad in ("0", "1", "x"):
        assert invoke("calibrate", model, tmp_path / "holes.csv", "--fpr", bad).exit_code == 2


def test_calibrate_never_overwrites_its_reference_rows(files, tmp_path):
    model, data = tmp_path / "m.anomvae", tmp_path / "reference.csv"
    model.write_bytes((files / "plain.anomvae").read_bytes())
    data.write_bytes((files / "reference.csv").read_bytes())
    os.link(data, tmp_path / "hard.csv")
    for target in (data, os.path.relpath(data), tmp_path / "hard.csv"):
        result = invoke("calibrate", model, data, "--fpr", "0.1", "-o", target)
        assert_input_error(result, f"-o {target} would overwrite DATA")
    assert data.read_bytes() == (files / "reference.csv").read_bytes()
    assert model.read_bytes() == (files / "plain.anomvae").read_bytes()
    # Replacing MODEL is what calibrate does without -o, and so with -o MODEL.
    assert invoke("calibrate", model, data, "--fpr", "0.1", "-o", model, "-q").exit_code == 0
    assert anomvae.load(model).calibration_fpr_ == 0.1


def test_calibrate_to_an_empty_name_keeps_the_model(files, tmp_path):
    model = tmp_path / "m.anomvae"
    model.write_bytes((files / "plain.anomvae").read_bytes())
    assert_input_error(invoke("calibrate", model, files / "reference.csv", "-o", ""), "-o is an empty name")
    assert model.read_bytes() == (files / "plain.anomvae").read_bytes()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_calibrate_to_a_full_device(files):
    result = invoke("calibrate", files / "plain.anomvae", files / "reference.csv", "-o", "/dev/full")
    assert_input_error(result, "cannot write /dev/full: No space left on device")


def test_calibrate_reads_decimal_commas_with_decimal(files, tmp_path):
    text = (files / "reference.csv").read_text().replace(",", ";").replace(".", ",")
    (tmp_path / "reference.csv").write_text(text)
    args = ["calibrate", files / "plain.anomvae", tmp_path / "reference.csv", "--delimiter", ";", "--fpr", "0.1"]
    assert_input_error(invoke(*args, "-o", tmp_path / "a.anomvae"), "is not a number", "--decimal ','")
    assert invoke(*args, "--decimal", ",", "-o", tmp_path / "a.anomvae").exit_code == 0
    assert invoke("calibrate", files / "plain.anomvae", files / "reference.csv", "--fpr", "0.1",
                  "-o", tmp_path / "b.anomvae").exit_code == 0
    assert anomvae.load(tmp_path / "a.anomvae").threshold_ == anomvae.load(tmp_path / "b.anomvae").threshold_
