"""anomvae calibrate (anomvae.cli.score): a model calibrated on reference rows, or
reference images, for a false-alarm rate, written anew or in place. (Scoring with
it: test_cli_score.py and test_cli_score_images.py.)"""

import os

import numpy as np
import pytest
from conftest import TRAIN, assert_input_error, invoke, write_digits
from conftest import draw_cli_rows as draw
from PIL import Image

import anomvae
from anomvae.images import read_images
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


# ------------------------------------------------------------- images


def test_calibrate_an_image_model_on_a_folder(image_model, image_reference, tmp_path):
    out = tmp_path / "calibrated.anomvae"
    result = invoke("calibrate", image_model, image_reference, "--fpr", "0.1", "-o", out)
    assert result.exit_code == 0, result.output
    assert f"calibrated on 100 images of {image_reference} for a false-alarm rate of 0.1; threshold" \
        in result.stderr
    _, X = read_images(str(image_reference), size=(8, 8), grayscale=True)
    expected = anomvae.load(image_model).calibrate(X, fpr=0.1)
    calibrated = anomvae.load(out)
    assert calibrated.threshold_ == expected.threshold_ and calibrated.calibration_fpr_ == 0.1
    np.testing.assert_array_equal(calibrated.reference_scores_, expected.reference_scores_)
    assert read_metadata(out)["extra"] == read_metadata(image_model)["extra"]  # still an image model
    assert anomvae.load(image_model).reference_scores_ is None
    assert "calibrated: for a false-alarm rate of 0.1 on 100 reference images" in invoke("info", out).stdout


def test_calibration_images_are_read_as_score_reads_them(image_model, tmp_path):
    # Larger RGB images: resized to 8x8 and turned grey, as score does for this model.
    folder = write_digits(tmp_path / "small", 0, 30, start=60)
    (tmp_path / "big").mkdir()
    for path in sorted(folder.iterdir()):
        Image.open(path).convert("RGB").resize((20, 13)).save(tmp_path / "big" / path.name)
    model = tmp_path / "m.anomvae"
    model.write_bytes(image_model.read_bytes())
    assert invoke("calibrate", model, tmp_path / "big", "--fpr", "0.1", "-q").exit_code == 0
    scored = invoke("score", image_model, tmp_path / "big", "-q")
    assert scored.exit_code == 0, scored.output
    scores = sorted(float(line.split(",")[1]) for line in scored.stdout.splitlines()[1:])
    assert list(anomvae.load(model).reference_scores_) == scores


def test_calibrate_names_or_skips_unreadable_images(image_model, image_reference, tmp_path):
    folder = tmp_path / "reference"
    folder.mkdir()
    for path in sorted(image_reference.iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
    broken = folder / "0_007.png"
    broken.write_bytes(broken.read_bytes()[:40])
    model = tmp_path / "m.anomvae"
    model.write_bytes(image_model.read_bytes())
    assert_input_error(invoke("calibrate", model, folder, "--fpr", "0.1"), "0_007.png", "not a readable image")
    assert model.read_bytes() == image_model.read_bytes()
    result = invoke("calibrate", model, folder, "--fpr", "0.1", "--invalid-rows", "skip")
    assert result.exit_code == 0, result.output
    assert "skipped 1 image(s) that could not be read: " in result.stderr and "0_007.png (not a readable image" \
        in result.stderr
    assert "calibrated on 99 images" in result.stderr and len(anomvae.load(model).reference_scores_) == 99
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.png").write_bytes(b"not an image")
    result = invoke("calibrate", model, tmp_path / "none", "--invalid-rows", "skip")
    assert_input_error(result, "no image could be read", "nothing to calibrate on")


def test_calibrating_images_refuses_outputs_naming_inputs_and_csv_options(image_model, image_reference, tmp_path):
    model = tmp_path / "m.anomvae"
    model.write_bytes(image_model.read_bytes())
    target = image_reference / "0_000.png"
    before = target.read_bytes()
    assert_input_error(invoke("calibrate", model, image_reference, "-o", target),
                       f"-o {target} would overwrite an image of DATA {target}")
    assert target.read_bytes() == before
    result = invoke("calibrate", model, image_reference, "--delimiter", ";")
    assert result.exit_code == 2 and "--delimiter apply to CSV data" in result.stderr
    assert_input_error(invoke("calibrate", model, TRAIN), "model of images", "is a CSV file")
    assert model.read_bytes() == image_model.read_bytes()
    # Replacing MODEL in place, atomically, as for CSV models.
    assert invoke("calibrate", model, image_reference, "--fpr", "0.05", "-q").exit_code == 0
    assert anomvae.load(model).calibration_fpr_ == 0.05


def test_a_csv_model_refuses_images_to_calibrate_on(files, image_reference):
    assert_input_error(invoke("calibrate", files / "plain.anomvae", image_reference, "-o", "x.anomvae"),
                       "model of CSV data", "is images")
