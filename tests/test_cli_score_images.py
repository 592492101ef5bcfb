"""anomvae score on image models (anomvae.cli.score and anomvae.scoring.score_images):
one row per image, p-values, the summary and shift test, heatmaps, unreadable
images. (Calibrating image models: test_cli_calibrate.py; reading images:
test_images.py.)"""

import csv
import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import TRAIN, assert_input_error, assert_runs_without, invoke, write_digits
from PIL import Image
from sklearn.datasets import load_digits

import anomvae
from anomvae.images import read_images


def test_score_writes_one_row_per_image(image_model, new_images):
    result = invoke("score", image_model, new_images)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout), float_precision="round_trip")
    assert list(frame.columns) == ["path", "anomaly_score", "is_anomaly"]
    assert len(frame) == 8 and frame["path"].str.endswith(".png").all()
    detector = anomvae.load(image_model)
    from anomvae.images import read_images

    paths, X = read_images(str(new_images), size=(8, 8), grayscale=True)
    assert list(frame["path"]) == paths
    np.testing.assert_array_equal(frame["anomaly_score"], -detector.score_samples(X))
    assert "8 images" in result.stderr


def test_scoring_images_without_heatmaps_does_not_import_scikit_learn(image_model, new_images, tmp_path):
    assert_runs_without(["score", str(image_model), str(new_images), "-o", str(tmp_path / "s.csv"), "-q"], "sklearn")
    assert len(pd.read_csv(tmp_path / "s.csv")) == 8


def test_score_options_as_for_csv(image_model, new_images, tmp_path):
    out = tmp_path / "r.jsonl"
    result = invoke("score", image_model, str(new_images / "*.png"), "-o", out, "--threshold", "-1e9",
                    "--fail-on-anomaly")
    assert result.exit_code == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8 and all(r["is_anomaly"] is True for r in records)
    only = invoke("score", image_model, new_images, "--only-anomalies", "--threshold", "1e9")
    assert only.exit_code == 0 and only.stdout.strip() == "path,anomaly_score,is_anomaly"


def test_heatmaps_one_png_per_image(image_model, new_images, tmp_path):
    result = invoke("score", image_model, new_images, "--heatmaps", tmp_path / "maps")
    assert result.exit_code == 0, result.output
    maps = sorted((tmp_path / "maps").iterdir())
    assert len(maps) == 8 and maps[0].name == "000001-0_000.png"
    picture = Image.open(maps[0])
    assert picture.mode == "RGB" and picture.width == 256 and picture.height > 256  # the image, then its caption
    pixels = np.asarray(picture, dtype=int)[:256]
    assert (pixels[..., 0] > pixels[..., 1]).any()  # some red where the score comes from


def test_failed_score_adds_no_heatmap(image_model, new_images, tmp_path):
    # The broken image comes in the second batch of two: the first batch's
    # heatmaps were drawn before the error, and must not be left behind.
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "earlier.png").write_bytes(b"kept")
    broken = new_images / "7_000.png"
    broken.write_bytes(broken.read_bytes()[:40])
    result = invoke("score", image_model, new_images, "--heatmaps", tmp_path / "maps", "--chunk-size", "2")
    assert_input_error(result, "7_000.png", "not a readable image")
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["earlier.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "new"]
    # A folder the failed command would have created is not left behind either.
    result = invoke("score", image_model, new_images, "--heatmaps", tmp_path / "fresh", "--chunk-size", "2")
    assert result.exit_code == 2 and not (tmp_path / "fresh").exists()


def test_heatmaps_never_go_into_the_images_folder(image_model, new_images):
    before = sorted(os.listdir(new_images))
    result = invoke("score", image_model, new_images, "--heatmaps", new_images)
    assert_input_error(result, f"--heatmaps {new_images} would overwrite DATA")
    assert sorted(os.listdir(new_images)) == before


def test_unwritable_heatmaps_folder_is_an_input_error(image_model, new_images, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = invoke("score", image_model, new_images, "--heatmaps", tmp_path / "file" / "maps")
    assert_input_error(result, "cannot write heatmaps to", "file/maps")


@pytest.mark.parametrize("option", [["--id-column", "a"], ["--delimiter", ";"]])
def test_csv_options_are_refused_when_scoring_images(image_model, new_images, option):
    result = invoke("score", image_model, new_images, *option)
    assert result.exit_code == 2 and f"{option[0]} apply to CSV data" in result.stderr and result.stdout == ""


def test_truncated_image_is_named_or_marked(image_model, new_images, tmp_path):
    broken = new_images / "0_002.png"
    broken.write_bytes(broken.read_bytes()[:40])
    result = invoke("score", image_model, new_images, "-o", tmp_path / "r.csv")
    assert_input_error(result, "0_002.png", "not a readable image")
    assert not (tmp_path / "r.csv").exists()
    marked = invoke("score", image_model, new_images, "--invalid-rows", "mark")
    assert marked.exit_code == 0, marked.output
    frame = pd.read_csv(io.StringIO(marked.stdout), keep_default_na=False)
    row = frame[frame["path"].str.endswith("0_002.png")].iloc[0]
    assert row["anomaly_score"] == "" and row["status"].startswith("not scored: not a readable image")
    assert (frame["status"] == "scored").sum() == 7
    assert "1 not scored" in marked.stderr


def test_empty_folder_is_an_input_error(image_model, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_input_error(invoke("score", image_model, tmp_path / "empty"), "no image files")
    assert_input_error(invoke("fit", tmp_path / "empty", "-o", tmp_path / "m"), "no image files")


def test_csv_and_image_models_refuse_the_other_input(image_model, new_images, tmp_path):
    assert_input_error(invoke("score", image_model, TRAIN), "model of images", "is a CSV file")
    csv_model = tmp_path / "csv.anomvae"
    assert invoke("fit", TRAIN, "-o", csv_model, "--max-epochs", "1").exit_code == 0
    assert_input_error(invoke("score", csv_model, new_images), "model of CSV data", "is images")


def test_mixed_sizes_and_arrays_are_scored(image_model, new_images, tmp_path):
    Image.fromarray(np.full((20, 13), 90, dtype=np.uint8), mode="L").save(new_images / "big.png")
    result = invoke("score", image_model, new_images)
    assert result.exit_code == 0 and len(pd.read_csv(io.StringIO(result.stdout))) == 9
    data = load_digits()
    np.save(tmp_path / "digits.npy", (data.images[:4] * 255 / 16).astype(np.uint8))
    scored = invoke("score", image_model, tmp_path / "digits.npy")
    frame = pd.read_csv(io.StringIO(scored.stdout))
    assert list(frame["path"]) == [f"{tmp_path / 'digits.npy'}[{i}]" for i in range(4)]


def test_16_bit_images_are_scored_at_full_precision(image_model, tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    # The same digit at 16 bits, once as is and once 200/65535 brighter. Its
    # levels are multiples of 256 from 256 up, so both would be the same image
    # at 8 bits, whether clipped to 255 (as Pillow's convert("L") does) or
    # cut to their high byte.
    digit = load_digits().images[0].astype(np.uint16) * 15 * 256 + 256
    Image.fromarray(digit).save(folder / "a.png")
    Image.fromarray(digit + 200).save(folder / "b.png")
    result = invoke("score", image_model, folder)
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(io.StringIO(result.stdout))["anomaly_score"]
    assert scores[0] != scores[1]
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(folder / "c.tif")
    assert_input_error(invoke("score", image_model, folder), "c.tif", "0 to 65535")


def test_an_output_never_replaces_an_input_image(image_model, new_images, tmp_path):
    target = new_images / "0_000.png"
    before = target.read_bytes()
    for option in ("-o", "--summary-json"):
        result = invoke("score", image_model, new_images, option, target)
        assert_input_error(result, f"{option} {target} would overwrite an image of DATA {target}")
    assert_input_error(invoke("fit", str(new_images / "*.png"), "-o", target), "would overwrite an image of DATA")
    assert target.read_bytes() == before
    # Results may go into the folder, beside the images.
    assert invoke("score", image_model, new_images, "-o", new_images / "scores.csv", "-q").exit_code == 0


# ---------------------------------- monitoring: p-values, summary, shift


def _rows(text):
    """The CSV results as dicts, numbers parsed exactly."""
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        row["anomaly_score"] = float(row["anomaly_score"])
        if "p_value" in row:
            row["p_value"] = float(row["p_value"])
    return rows


def test_a_calibrated_image_model_gives_p_values_at_its_false_alarm_rate(calibrated_image_model, image_reference,
                                                                        new_images):
    model = anomvae.load(calibrated_image_model)
    assert model.calibration_fpr_ == 0.1 and len(model.reference_scores_) == 100
    result = invoke("score", calibrated_image_model, new_images)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "path,anomaly_score,p_value,is_anomaly"
    rows = _rows(result.stdout)
    _, X = read_images(str(new_images), size=(8, 8), grayscale=True)
    assert [r["p_value"] for r in rows] == list(model.p_values(X))
    assert all((r["p_value"] <= 0.1) == (r["is_anomaly"] == "true") for r in rows)
    # Normal images like the reference ones are flagged at most at the rate asked for.
    reference = _rows(invoke("score", calibrated_image_model, image_reference, "-q").stdout)
    flagged = [r["is_anomaly"] == "true" for r in reference]
    assert 0 < sum(flagged) <= 0.1 * len(reference)
    assert flagged == [r["p_value"] <= 0.1 for r in reference]


def test_summary_json_for_images_matches_the_results(calibrated_image_model, new_images, tmp_path):
    result = invoke("score", calibrated_image_model, new_images, "-o", tmp_path / "r.csv",
                    "--summary-json", tmp_path / "s.json", "--summary-top", "3")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    rows = _rows((tmp_path / "r.csv").read_text())
    top = sorted(rows, key=lambda r: -r["anomaly_score"])[:3]
    assert summary["file"] == str(new_images) and summary["model"] == str(calibrated_image_model)
    assert summary["rows"] == summary["rows_scored"] == len(rows) == 8 and summary["rows_not_scored"] == 0
    assert summary["anomalies"] == sum(r["is_anomaly"] == "true" for r in rows)
    assert summary["threshold"] == anomvae.load(calibrated_image_model).threshold_
    assert summary["max_score"] == top[0]["anomaly_score"] and summary["calibration_fpr"] == 0.1
    assert summary["top_anomalies"] == [{"path": r["path"], "anomaly_score": r["anomaly_score"]} for r in top]
    shift = summary["score_shift"]
    assert shift["baseline"] == "calibration" and shift["n_baseline"] == 100 and shift["n_batch"] == 8


def test_a_shifted_batch_of_images_is_reported(image_model, tmp_path):
    sevens = write_digits(tmp_path / "sevens", 7, 60)
    result = invoke("score", image_model, sevens, "--summary-json", tmp_path / "s.json", "-o", tmp_path / "r.csv")
    assert result.exit_code == 0, result.output
    shift = json.loads((tmp_path / "s.json").read_text())["score_shift"]
    assert shift["baseline"] == "training" and shift["n_batch"] == 60 and shift["shifted"] is True
    assert f"warning: the anomaly scores of {sevens} differ from the model's training scores" in result.stderr
    quiet = invoke("score", image_model, sevens, "-o", tmp_path / "r.csv", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_explain_points_image_models_to_heatmaps(image_model, new_images):
    result = invoke("score", image_model, new_images, "--explain", "3")
    assert result.exit_code == 2 and result.stdout == ""
    assert "--explain applies to tabular models; for an image model, --heatmaps DIR" in result.stderr
    result = invoke("score", image_model, new_images, "--heatmap-scale", "image")
    assert result.exit_code == 2 and "--heatmap-scale applies with --heatmaps" in result.stderr


# ------------------------------------------------------------ heatmaps


def _redness(path):
    """Mean redness (red above the other channels) of a heatmap's picture, without its caption."""
    pixels = np.asarray(Image.open(path), dtype=float)[:256]
    return np.clip(pixels[..., 0] - pixels[..., 1:].mean(axis=-1), 0, None).mean()


def test_heatmap_names_sort_like_the_output_rows(image_model, new_images, tmp_path):
    # Files in subfolders come after the folder's own, subfolders by name: z.png before a.png.
    for sub, name in (("a", "z.png"), ("b", "a.png")):
        (new_images / sub).mkdir()
        (new_images / sub / name).write_bytes((new_images / "7_001.png").read_bytes())
    result = invoke("score", image_model, new_images, "--heatmaps", tmp_path / "maps")
    assert result.exit_code == 0, result.output
    paths = [r["path"] for r in _rows(result.stdout)]
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    assert stems[-2:] == ["z", "a"]
    assert sorted(os.listdir(tmp_path / "maps")) == [f"{i:06d}-{stem}.png" for i, stem in enumerate(stems, 1)]


def test_only_anomalies_draws_the_flagged_images_only(image_model, new_images, tmp_path):
    scores = sorted(r["anomaly_score"] for r in _rows(invoke("score", image_model, new_images).stdout))
    cut = (scores[4] + scores[5]) / 2  # three images above it
    result = invoke("score", image_model, new_images, "--threshold", cut, "--only-anomalies",
                    "--heatmaps", tmp_path / "maps")
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert len(rows) == 3 and all(r["is_anomaly"] == "true" for r in rows)
    stems = [os.path.splitext(os.path.basename(r["path"]))[0] for r in rows]
    assert sorted(os.listdir(tmp_path / "maps")) == [f"{i:06d}-{stem}.png" for i, stem in enumerate(stems, 1)]


def test_normal_images_look_calmer_than_anomalies_on_the_model_scale(calibrated_image_model, image_model, tmp_path):
    folder = write_digits(tmp_path / "batch", 0, 18, start=160)  # zeros neither trained nor calibrated on
    write_digits(folder, 7, 18)
    for model, scale in ((calibrated_image_model, "model"), (image_model, "model"), (image_model, "image")):
        maps = tmp_path / f"{model.stem}-{scale}"
        result = invoke("score", model, folder, "--heatmaps", maps, "--heatmap-scale", scale, "-q")
        assert result.exit_code == 0, result.output
        redness = {stem: [_redness(p) for p in maps.glob(f"*-{stem}_*.png")] for stem in ("0", "7")}
        calm, hot = np.mean(redness["0"]), np.mean(redness["7"])
        if scale == "model":
            assert calm < 0.5 * hot, (model, calm, hot)
        else:  # each map scaled to its own maximum: zeros look about as red as sevens
            assert calm > 0.7 * hot, (calm, hot)
