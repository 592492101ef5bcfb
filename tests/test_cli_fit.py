"""anomvae fit (anomvae.cli.fit and the estimator options of anomvae.cli.options):
CSV data, images, and what it says of a refit_inliers refit."""

import io
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import IMAGE_QUICK, QUICK, TRAIN, assert_input_error, invoke, quiet_fit, write_digits

import anomvae
from anomvae.cli import main
from anomvae.cli import options as cli_options
from anomvae.cli.options import refit_note as _refit_note
from anomvae.detector import VAEAnomalyDetector
from anomvae.persistence import read_metadata

# ----------------------------------------------------------- CSV data


def test_fit_writes_a_model_and_a_summary(model):
    detector = anomvae.load(model)
    assert list(detector.feature_names_in_) == list(pd.read_csv(TRAIN, nrows=0).columns[1:])
    assert detector.max_epochs == 5 and detector.random_state == 0
    metadata = anomvae.persistence.read_metadata(model)
    assert metadata["extra"]["id_columns"] == ["record_id"]
    assert metadata["extra"]["training"]["rows"] == 1281


def test_fit_summary_and_quiet(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", *QUICK)
    assert result.exit_code == 0
    assert "trained on 1281 rows x 21 features" in result.stderr
    assert "ignoring non-numeric column(s): record_id" in result.stderr
    assert result.stdout == ""
    quiet = invoke("fit", TRAIN, "-o", tmp_path / "m", "--quiet", *QUICK)
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_fit_options_reach_the_estimator(tmp_path):
    result = invoke(
        "fit", TRAIN, "-o", tmp_path / "m", "--columns", "LB,AC,FM", "--hidden-dims", "8,4",
        "--latent-dim", "2", "--contamination", "0.1", "--standardize", "false", "--n-iter-no-change",
        "none", "--beta", "0.5", "--lr", "0.01", "--batch-size", "64", "--min-variance", "0.05", *QUICK,
    )
    assert result.exit_code == 0, result.output
    detector = anomvae.load(tmp_path / "m")
    assert list(detector.feature_names_in_) == ["LB", "AC", "FM"]
    params = detector.get_params()
    assert params["hidden_dims"] == (8, 4) and params["latent_dim"] == 2
    assert params["contamination"] == 0.1 and params["standardize"] is False
    assert params["n_iter_no_change"] is None and params["beta"] == 0.5 and params["batch_size"] == 64
    assert params["min_variance"] == 0.05 and np.all(detector.min_variance_ == 0.05)


def test_fit_exclude(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", "--exclude", "DS,DP", "--id-column", "record_id", *QUICK)
    assert result.exit_code == 0
    names = list(anomvae.load(tmp_path / "m").feature_names_in_)
    assert "DS" not in names and "DP" not in names and len(names) == 19


def test_cli_defaults_are_the_estimators():
    defaults = VAEAnomalyDetector().get_params()
    # As the commands pass them on: "true"/"false" choices become booleans.
    shown = cli_options.estimator_params({param: default for param, _, default, _ in cli_options.ESTIMATOR_OPTIONS})
    for param, default in shown.items():
        assert defaults[param] == default and type(defaults[param]) is type(default), param
    exposed = {param for param, *_ in cli_options.ESTIMATOR_OPTIONS}
    # image_shape comes from --image-size and --grayscale.
    assert exposed == set(defaults) - {"verbose", "image_shape"}


@pytest.mark.parametrize("option, fragment", [
    (["--contamination", "0.9"], "contamination"),
    (["--contamination", "nan"], "contamination"),
    (["--lr", "inf"], "lr"),
    # Once internal errors (exit 3) after reading the data, or hours of work.
    (["--n-score-samples", "1000000000"], "n_score_samples"),
    (["--hidden-dims", "30000000"], "integers from 1 to 65536"),
    (["--device", "meta"], "device='meta' cannot train or score a network"),
])
def test_fit_bad_parameter_value(tmp_path, option, fragment):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", *option)
    assert_input_error(result, fragment)
    assert not (tmp_path / "m").exists()


def test_fit_rows_with_missing_values(tmp_path):
    frame = pd.read_csv(TRAIN).head(60)
    frame.loc[[3, 10], "AC"] = np.nan
    frame.loc[20, "LB"] = np.inf
    frame.to_csv(tmp_path / "holes.csv", index=False)
    result = invoke("fit", tmp_path / "holes.csv", "-o", tmp_path / "m", *QUICK)
    assert_input_error(result, "3 row(s)", "line(s) 5, 12, 22", "column 'AC'", "--invalid-rows skip")
    assert not (tmp_path / "m").exists()
    skipped = invoke("fit", tmp_path / "holes.csv", "-o", tmp_path / "m", "--invalid-rows", "skip", *QUICK)
    assert skipped.exit_code == 0
    assert "skipped 3 row(s)" in skipped.stderr and "5, 12, 22" in skipped.stderr
    assert anomvae.persistence.read_metadata(tmp_path / "m")["extra"]["training"]["rows"] == 57
    # Nothing left to train on: named, not scikit-learn's message about an empty array.
    frame.head(8).assign(AC=np.nan).to_csv(tmp_path / "all.csv", index=False)
    empty = invoke("fit", tmp_path / "all.csv", "-o", tmp_path / "m2", "--invalid-rows", "skip", *QUICK)
    assert_input_error(empty, "all.csv: 0 row(s) left after skipping 8", "line(s) 2, 3, 4, 5, 6 and 3 more",
                       "fit needs at least 2")
    assert not (tmp_path / "m2").exists()


def test_fit_from_stdin(tmp_path):
    result = invoke("fit", "-", "-o", tmp_path / "m", *QUICK, input=TRAIN.read_text())
    assert result.exit_code == 0, result.output
    assert "<stdin>" in anomvae.persistence.read_metadata(tmp_path / "m")["extra"]["training"]["file"]


def test_fit_unwritable_output(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "no" / "such" / "dir" / "m", *QUICK)
    assert_input_error(result, "cannot write")


def test_fit_never_overwrites_its_training_data(tmp_path):
    data = tmp_path / "train.csv"
    data.write_bytes(TRAIN.read_bytes())
    for target in (data, tmp_path / "sub" / ".." / "train.csv"):
        assert_input_error(invoke("fit", data, "-o", target, *QUICK), f"-o {target} would overwrite DATA")
    assert data.read_bytes() == TRAIN.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]


def test_fit_to_an_empty_name_or_a_full_device(tmp_path):
    assert_input_error(invoke("fit", TRAIN, "-o", "", *QUICK), "-o is an empty name")
    if os.path.exists("/dev/full"):
        result = invoke("fit", TRAIN, "-o", "/dev/full", "--max-epochs", "1", "-q")
        assert_input_error(result, "cannot write /dev/full: No space left on device")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _progress_lines(detector, X, stream):
    with cli_options.progress(False, stream=stream):
        quiet_fit(detector, X)
    return stream.getvalue()


def test_progress_shows_epochs_losses_and_patience_without_an_eta(inliers):
    # A large tol makes early stopping end training long before max_epochs:
    # a bar towards max_epochs would show a false ETA.
    detector = VAEAnomalyDetector(max_epochs=200, n_iter_no_change=3, tol=0.5, kl_warmup=2, random_state=0)
    shown = _progress_lines(detector, inliers, _Terminal())
    assert shown.endswith("\n") and "ETA" not in shown.upper() and "%" not in shown
    lines = [line.rstrip() for line in shown.rstrip("\n").split("\r")[1:]]
    pattern = re.compile(r"epoch (\d+), loss -?[\d.]+, val -?[\d.]+, patience left (\d+)")
    matches = [pattern.fullmatch(line) for line in lines]
    assert all(matches), lines
    epochs = [int(m[1]) for m in matches]
    left = [int(m[2]) for m in matches]
    assert epochs == list(range(1, detector.n_epochs_ + 1)) and detector.n_epochs_ < 200
    assert left[0] == 3 and left[-1] == 0 and min(left[:-1]) > 0


def test_progress_without_early_stopping_or_a_terminal(inliers):
    detector = VAEAnomalyDetector(max_epochs=3, n_iter_no_change=None, validation_fraction=0, random_state=0)
    shown = _progress_lines(detector, inliers, _Terminal())
    assert re.fullmatch(r"epoch 3, loss -?[\d.]+", shown.split("\r")[-1].rstrip()), shown
    assert _progress_lines(detector, inliers, io.StringIO()) == ""


@pytest.mark.parametrize("column", ["anomaly_score", "status"])
def test_fit_refuses_an_id_column_named_as_a_score_output_column(tmp_path, column):
    data = pd.read_csv(TRAIN).rename(columns={"record_id": column})
    data.to_csv(tmp_path / "train.csv", index=False)
    result = invoke("fit", tmp_path / "train.csv", "-o", tmp_path / "m", "--id-column", column, *QUICK)
    assert_input_error(result, f"the id column '{column}' has the name of a column that score writes")
    assert not (tmp_path / "m").exists()


def test_fit_reads_a_csv_file_named_like_a_pattern(tmp_path):
    data = tmp_path / "train[1].csv"
    data.write_bytes(TRAIN.read_bytes())
    result = invoke("fit", data, "-o", tmp_path / "m", "--id-column", "record_id", "--max-epochs", "1")
    assert result.exit_code == 0, result.output
    assert "trained on 1281 rows x 21 features" in result.stderr


# ------------------------------------------------------------- images


def test_fit_records_an_image_model(image_model):
    detector = anomvae.load(image_model)
    assert detector.architecture == "conv" and detector.likelihood == "bernoulli"
    assert detector.image_shape_ == (1, 8, 8)
    extra = read_metadata(image_model)["extra"]
    assert extra["input"] == "images" and extra["image_size"] == [8, 8] and extra["color"] == "grayscale"


def test_fit_image_size_and_explicit_options(tmp_path, new_images):
    result = invoke("fit", new_images, "-o", tmp_path / "m", "--image-size", "6x5", "--likelihood",
                    "continuous_bernoulli", *IMAGE_QUICK)
    assert result.exit_code == 0, result.output
    detector = anomvae.load(tmp_path / "m")
    assert detector.image_shape_ == (1, 6, 5) and detector.likelihood == "continuous_bernoulli"
    bad = invoke("fit", new_images, "-o", tmp_path / "m2", "--image-size", "6x")
    assert bad.exit_code == 2 and "HEIGHTxWIDTH" in bad.stderr


@pytest.mark.parametrize("option", [["--columns", "a"], ["--exclude", "a"], ["--id-column", "a"],
                                    ["--delimiter", ";"], ["--invalid-rows", "skip"]])
def test_csv_options_are_refused_for_images_not_ignored(new_images, tmp_path, option):
    result = invoke("fit", new_images, "-o", tmp_path / "m", *option, *IMAGE_QUICK)
    assert result.exit_code == 2 and f"{option[0]} apply to CSV data" in result.stderr
    assert not (tmp_path / "m").exists()


def test_image_options_on_csv_are_usage_errors(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", "--grayscale")
    assert result.exit_code == 2 and "apply to images" in result.stderr


# ------------------------------------------------------ refit_inliers


@pytest.mark.parametrize("n_excluded, refit_inliers, note", [
    (None, False, ""),
    (None, "auto", ", no refit (auto: batches not trimmed)"),
    (0, True, ", no refit (the first network flagged no rows, or too many to train on)"),
    (7, "auto", ", after a refit without the 7 rows the first network flagged"),
])
def test_refit_note(n_excluded, refit_inliers, note):
    assert _refit_note(n_excluded, refit_inliers) == note


def test_fit_and_info_say_what_the_refit_left_out(tmp_path):
    path = tmp_path / "m.anomvae"
    result = CliRunner().invoke(main, ["fit", str(TRAIN), "-o", str(path), "--max-epochs", "5",
                                       "--random-state", "0", "--refit-inliers", "true"])
    assert result.exit_code == 0, result.output
    excluded = anomvae.load(path).n_refit_excluded_
    assert excluded > 0
    note = f"after a refit without the {excluded} rows the first network flagged"
    assert note in result.stderr
    assert note in CliRunner().invoke(main, ["info", str(path)]).stdout
    info = json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).stdout)
    assert info["training"]["refit_excluded"] == excluded and info["params"]["refit_inliers"] is True


def test_fit_never_overwrites_one_of_its_images(tmp_path):
    folder = write_digits(tmp_path / "train", 0, 10)
    target = sorted(folder.iterdir())[3]
    before = target.read_bytes()
    assert_input_error(invoke("fit", folder, "-o", target, *IMAGE_QUICK), "would overwrite an image of DATA")
    assert target.read_bytes() == before
