"""anomvae info (anomvae.cli.info): text and JSON for CSV and image models,
variance floors, calibration, refits, and old or damaged files."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import QUICK, TRAIN, assert_input_error, assert_runs_without, invoke
from PIL import Image

import anomvae
from anomvae.cli import info as info_command
from anomvae.cli import main
from anomvae.preprocessing import grid_variance_floor

# --------------------------------------------------------- CSV models


def test_info_text_and_json(model):
    text = invoke("info", model)
    assert text.exit_code == 0
    assert "features:   21: LB, AC" in text.stdout and "threshold:" in text.stdout
    data = json.loads(invoke("info", model, "--json").stdout)
    detector = anomvae.load(model)
    assert data["threshold"] == detector.threshold_
    assert data["features"] == list(detector.feature_names_in_)
    assert data["training"]["epochs"] == detector.n_epochs_ and data["training"]["rows"] == 1281
    assert data["params"]["max_epochs"] == 5 and data["anomvae_version"] == anomvae.__version__
    assert data["input"] == "csv" and data["architecture"] == "mlp" and data["likelihood"] == "gaussian"
    assert data["image_shape"] is data["color"] is data["image_size"] is None
    assert "network:    mlp, gaussian likelihood" in text.stdout and "image:" not in text.stdout
    # One floor per feature, as fit derives them from the training data.
    X = pd.read_csv(TRAIN)[data["features"]].to_numpy(float)
    assert len(data["variance_floors"]) == 21
    np.testing.assert_allclose(data["variance_floors"], grid_variance_floor(X, X.std(axis=0)), rtol=1e-12)
    assert max(data["variance_floors"]) > 1e-3 and "variance:   floor 0.001 on " in text.stdout
    assert data["params"]["trim_by"] == "kl" and "trim_by=kl" in text.stdout


def test_info_of_a_file_from_before_trim_by_says_it_trimmed_by_the_loss():
    # Written by anomvae at commit b19235c (model format 2), as load() reads it.
    old = str(Path(__file__).parent / "data" / "format2-gaussian.anomvae")
    assert json.loads(invoke("info", old, "--json").stdout)["params"]["trim_by"] == "loss"
    assert "trim_by=loss" in invoke("info", old).stdout
    assert anomvae.load(old).get_params()["trim_by"] == "loss"


def _damaged_copy(model, damaged, edit):
    """A copy of the model file whose metadata ``edit`` changed in place."""
    with zipfile.ZipFile(model) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == "anomvae.json":
                metadata = json.loads(content)
                edit(metadata["fitted"])
                content = json.dumps(metadata)
            target.writestr(item, content)
    return damaged


@pytest.mark.parametrize("edit, field", [
    (lambda f: f["module_config"].update(min_variance=[1e-3, 1e-3]), "min_variance holds 2 values for 21"),
    (lambda f: f.pop("threshold_"), "fitted.threshold_ is missing"),
    (lambda f: f.update(threshold_="abc"), "fitted.threshold_: 'abc' is not a finite number"),
])
def test_info_and_score_refuse_a_damaged_file_naming_the_field(model, tmp_path, edit, field):
    damaged = _damaged_copy(model, tmp_path / "damaged.anomvae", edit)
    assert_input_error(invoke("info", damaged), "damaged.anomvae: corrupted model file", field)
    assert_input_error(invoke("score", damaged, TRAIN, "-o", tmp_path / "out.csv"), field)
    assert not (tmp_path / "out.csv").exists()


def test_info_shows_the_latent_units_in_use(model, tmp_path):
    detector = anomvae.load(model)
    data = json.loads(invoke("info", model, "--json").stdout)
    assert data["active_units"] == detector.active_units_ and data["kl_per_dim"] == detector.kl_per_dim_.tolist()
    kl = ", ".join(format(v, ".3g") for v in detector.kl_per_dim_)
    line = f"latent use: {detector.active_units_} of {detector.latent_dim_} units active; KL per unit {kl} nats"
    assert line in invoke("info", model).stdout.splitlines()
    # A collapsed model says so.
    collapsed = _damaged_copy(model, tmp_path / "collapsed.anomvae",
                              lambda f: f.update(active_units_=0, kl_per_dim_=[0.001] * f["latent_dim_"]))
    assert "latent use: 0 of 5 units active (posterior collapse: most units inactive); KL per unit 0.001," in (
        invoke("info", collapsed).stdout)


def test_info_of_a_file_from_before_the_latent_diagnosis():
    old = str(Path(__file__).parent / "data" / "format2-gaussian.anomvae")
    data = json.loads(invoke("info", old, "--json").stdout)
    assert data["active_units"] is None and data["kl_per_dim"] is None
    assert "latent use: not recorded (the file predates it)" in invoke("info", old).stdout


def test_info_of_a_file_with_no_history(model, tmp_path):
    result = invoke("info", _damaged_copy(model, tmp_path / "damaged.anomvae", lambda f: f.update(history_=None)))
    assert result.exit_code == 0, result.output
    assert "final train loss ?" in result.stdout


@pytest.mark.parametrize("floors, line", [
    ([1e-3, 1e-3, 1e-3], "floor 0.001 on every feature"),
    ([0.05, 0.05], "floor 0.05 on every feature"),
    ([1e-3, 0.0125, 1e-3, 0.25], "floor 0.001 on 2 features, 0.0125 to 0.25 on 2 (from their value grids"),
    ([1e-3, 0.0125], "floor 0.001 on 1 feature, 0.0125 on 1 (from their value grids"),
    ([0.02, 0.5], "floor 0.02 to 0.5 on every feature"),
])
def test_info_sums_up_the_variance_floors(floors, line):
    assert line in info_command.floors_line(np.array(floors))


def test_info_shows_grid_floors_of_discrete_features(tmp_path):
    # Two continuous features and one count on a grid of step 1.
    rng = np.random.RandomState(0)
    frame = pd.DataFrame({"a": rng.randn(300), "b": rng.randn(300), "count": rng.poisson(2.0, 300)})
    frame.to_csv(tmp_path / "train.csv", index=False)
    result = invoke("fit", tmp_path / "train.csv", "-o", tmp_path / "m.anomvae", *QUICK)
    assert result.exit_code == 0, result.output
    floors = json.loads(invoke("info", tmp_path / "m.anomvae", "--json").stdout)["variance_floors"]
    step = 1 / frame["count"].std(ddof=0)
    assert floors[:2] == [1e-3, 1e-3] and floors[2] == pytest.approx(step**2 / 12)
    text = invoke("info", tmp_path / "m.anomvae").stdout
    assert f"variance:   floor 0.001 on 2 features, {step**2 / 12:.3g} on 1 (from their value grids" in text


def test_info_shows_calibration(files):
    text = invoke("info", files / "calibrated.anomvae").stdout
    assert "calibrated: for a false-alarm rate of 0.05 on 300 reference rows" in text
    assert "calibrated: no" in invoke("info", files / "plain.anomvae").stdout
    data = json.loads(invoke("info", files / "calibrated.anomvae", "--json").stdout)
    assert data["calibration"] == {"fpr": 0.05, "reference_rows": 300}


def test_info_without_a_refit_says_nothing_of_it(tmp_path):
    path = tmp_path / "m.anomvae"
    assert CliRunner().invoke(main, ["fit", str(TRAIN), "-o", str(path), "--max-epochs", "3", "-q"]).exit_code == 0
    training = [line for line in CliRunner().invoke(main, ["info", str(path)]).stdout.splitlines()
                if line.startswith("training:")]
    assert len(training) == 1 and "refit" not in training[0]
    info = json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).stdout)
    assert info["training"]["refit_excluded"] is None


# ------------------------------------------------------- image models


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


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_info_on_a_full_standard_output_is_an_output_error(model):
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-c", "from anomvae.cli import run; run()", "info", str(model)],
                                stdout=full, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "Error: cannot write standard output: No space left on device"
