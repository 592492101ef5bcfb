"""The anomvae command on images: fit, score, heatmaps and every input error."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import anomvae
from anomvae.persistence import read_metadata

from test_cli import TRAIN, assert_input_error, invoke

QUICK = ["--max-epochs", "3", "--random-state", "0"]


def write_digits(folder, digit, count, start=0):
    data = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    images = data.images[data.target == digit][start:start + count]
    for i, image in enumerate(images):
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{digit}_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    train = write_digits(root / "train", 0, 60)
    path = root / "digits.anomvae"
    result = invoke("fit", train, "-o", path, *QUICK)
    assert result.exit_code == 0, result.output
    assert "trained on 60 images of 8x8 grey pixels" in result.stderr
    return path


@pytest.fixture
def new_images(tmp_path):
    folder = write_digits(tmp_path / "new", 0, 5, start=100)
    write_digits(folder, 7, 3)
    return folder


def test_fit_records_an_image_model(image_model):
    detector = anomvae.load(image_model)
    assert detector.architecture == "conv" and detector.likelihood == "bernoulli"
    assert detector.image_shape_ == (1, 8, 8)
    extra = read_metadata(image_model)["extra"]
    assert extra["input"] == "images" and extra["image_size"] == [8, 8] and extra["color"] == "grayscale"


def test_fit_image_size_and_explicit_options(tmp_path, new_images):
    result = invoke("fit", new_images, "-o", tmp_path / "m", "--image-size", "6x5", "--likelihood",
                    "continuous_bernoulli", *QUICK)
    assert result.exit_code == 0, result.output
    detector = anomvae.load(tmp_path / "m")
    assert detector.image_shape_ == (1, 6, 5) and detector.likelihood == "continuous_bernoulli"
    bad = invoke("fit", new_images, "-o", tmp_path / "m2", "--image-size", "6x")
    assert bad.exit_code == 2 and "HEIGHTxWIDTH" in bad.stderr


def test_score_writes_one_row_per_image(image_model, new_images):
    result = invoke("score", image_model, new_images)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame.columns) == ["path", "anomaly_score", "is_anomaly"]
    assert len(frame) == 8 and frame["path"].str.endswith(".png").all()
    detector = anomvae.load(image_model)
    from anomvae.data import read_images

    paths, X = read_images(str(new_images), size=(8, 8), grayscale=True)
    assert list(frame["path"]) == paths
    np.testing.assert_array_equal(frame["anomaly_score"], -detector.score_samples(X))
    assert "8 images" in result.stderr


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
    assert len(maps) == 8 and maps[0].name == "000001_0_000.png"
    picture = Image.open(maps[0])
    assert picture.mode == "RGB" and picture.size == (256, 256)
    pixels = np.asarray(picture, dtype=int)
    assert (pixels[..., 0] > pixels[..., 1]).any()  # some red where the score comes from


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


def test_image_options_on_csv_are_usage_errors(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", "--grayscale")
    assert result.exit_code == 2 and "apply to images" in result.stderr
