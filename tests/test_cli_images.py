"""The anomvae command on images: fit, score, heatmaps and every input error."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from conftest import assert_runs_without
from PIL import Image
from sklearn.datasets import load_digits
from test_cli import TRAIN, assert_input_error, invoke

import anomvae
from anomvae.persistence import read_metadata

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
    assert len(maps) == 8 and maps[0].name == "000001_0_000.png"
    picture = Image.open(maps[0])
    assert picture.mode == "RGB" and picture.size == (256, 256)
    pixels = np.asarray(picture, dtype=int)
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


def test_unwritable_heatmaps_folder_is_an_input_error(image_model, new_images, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = invoke("score", image_model, new_images, "--heatmaps", tmp_path / "file" / "maps")
    assert_input_error(result, "cannot write heatmaps to", "file/maps")


@pytest.mark.parametrize("option", [["--columns", "a"], ["--exclude", "a"], ["--id-column", "a"],
                                    ["--delimiter", ";"], ["--invalid-rows", "skip"]])
def test_csv_options_are_refused_for_images_not_ignored(new_images, tmp_path, option):
    result = invoke("fit", new_images, "-o", tmp_path / "m", *option, *QUICK)
    assert result.exit_code == 2 and f"{option[0]} apply to CSV data" in result.stderr
    assert not (tmp_path / "m").exists()


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


def test_info_shows_the_image_fields(image_model):
    text = invoke("info", image_model)
    assert text.exit_code == 0, text.output
    assert "input:      images\n" in text.stdout
    assert "network:    conv, bernoulli likelihood\n" in text.stdout
    assert "features:   64 pixels\n" in text.stdout and "x63" not in text.stdout
    assert ("image:      1x8x8 (C x H x W), grayscale; score resizes every image to 8x8 pixels (H x W)\n"
            in text.stdout)
    assert "training:   60 images from " in text.stdout
    data = json.loads(invoke("info", image_model, "--json").stdout)
    assert data["input"] == "images" and data["architecture"] == "conv" and data["likelihood"] == "bernoulli"
    assert data["image_shape"] == [1, 8, 8] and data["color"] == "grayscale" and data["image_size"] == [8, 8]
    # A Bernoulli likelihood has no variance to floor.
    assert data["variance_floors"] is None and "variance:" not in text.stdout


def test_info_of_a_resized_rgb_model(tmp_path):
    rng = np.random.RandomState(0)
    (tmp_path / "rgb").mkdir()
    for i in range(6):
        pixels = rng.randint(0, 256, (10, 12, 3)).astype(np.uint8)
        Image.fromarray(pixels, mode="RGB").save(tmp_path / "rgb" / f"{i}.png")
    path = tmp_path / "rgb.anomvae"
    fit = invoke("fit", tmp_path / "rgb", "-o", path, "--image-size", "4x6", "--likelihood", "continuous_bernoulli",
                 "--max-epochs", "1", "--random-state", "0")
    assert fit.exit_code == 0, fit.output
    data = json.loads(invoke("info", path, "--json").stdout)
    assert data["image_shape"] == [3, 4, 6] and data["color"] == "rgb" and data["image_size"] == [4, 6]
    assert data["likelihood"] == "continuous_bernoulli" and data["n_features"] == 72
    text = invoke("info", path).stdout
    assert "image:      3x4x6 (C x H x W), RGB; score resizes every image to 4x6 pixels (H x W)" in text


@pytest.mark.parametrize("flags, shown", [([], "score resizes every image to 8x8"),
                                          (["--json"], '"image_size": [\n    8,\n    8\n  ]')])
def test_info_of_an_image_model_does_not_import_torch(image_model, flags, shown):
    result = assert_runs_without(["info", str(image_model), *flags], "torch")
    assert shown in result.stdout


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


def test_image_options_on_csv_are_usage_errors(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", "--grayscale")
    assert result.exit_code == 2 and "apply to images" in result.stderr
