"""anomvae.schema: model files and pickles written by older anomvae versions are
migrated on load and score as they did."""

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, make_low_rank, quiet_fit
from sklearn.base import clone

import anomvae
from anomvae import VAEAnomalyDetector, schema
from anomvae.config import NetworkConfig
from anomvae.history import TrainingHistory
from anomvae.persistence import load_for_scoring, read_metadata
from anomvae.preprocessing import DEFAULT_MIN_VARIANCE
from anomvae.preprocessing import grid_variance_floor as _grid_variance_floor


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_model_files_written_by_format_1_anomvae_score_as_they_did(likelihood):
    # Written by anomvae at commit ebd2c86 (model format 1), with the
    # scores it gave; the Gaussian one has a feature on a grid of step 1,
    # for which "auto" would now choose a floor above the file's 1e-3.
    expected = np.load(DATA / "format1-expected.npz")
    X = expected["X"] if likelihood == "gaussian" else expected["B"]
    path = DATA / f"format1-{likelihood}.anomvae"
    detector = anomvae.load(path)
    np.testing.assert_array_equal(detector.score_samples(X), expected[f"{likelihood}_scores"])
    np.testing.assert_array_equal(load_for_scoring(path).score_samples(X), expected[f"{likelihood}_scores"])
    assert detector.get_params()["trim_by"] == "loss"
    if likelihood == "gaussian":
        assert detector.get_params()["min_variance"] == DEFAULT_MIN_VARIANCE
        np.testing.assert_array_equal(detector.min_variance_, np.full(4, DEFAULT_MIN_VARIANCE))
        assert _grid_variance_floor(X, detector.scale_)[0] > DEFAULT_MIN_VARIANCE
    else:
        assert detector.get_params()["min_variance"] == "auto" and detector.min_variance_ is None


def test_model_files_of_format_2_load_as_trimmed_by_the_loss():
    # Written by anomvae at commit b19235c (model format 2), before trim_by
    # existed, with the scores it gave. Those fits trimmed by the loss.
    data = Path(__file__).parent / "data"
    expected = np.load(data / "format2-expected.npz")
    path = data / "format2-gaussian.anomvae"
    with zipfile.ZipFile(path) as archive:
        assert "trim_by" not in json.loads(archive.read("anomvae.json"))["params"]
    assert read_metadata(path)["format_version"] == 2 and read_metadata(path)["params"]["trim_by"] == "loss"
    detector = anomvae.load(path)
    assert detector.get_params()["trim_by"] == "loss"
    np.testing.assert_array_equal(detector.score_samples(expected["X"]), expected["scores"])
    np.testing.assert_array_equal(load_for_scoring(path).score_samples(expected["X"]), expected["scores"])


def test_pickles_from_before_min_variance_keep_their_single_floor():
    # Such pickles have neither the parameter nor min_variance_, and one
    # floor, 1e-3, in the network's configuration.
    X = make_low_rank(300)
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 5}), X)
    state = detector.__getstate__()
    del state["min_variance"], state["min_variance_"], state["trim_by"]
    # Such pickles also kept the network's configuration and history as dicts.
    state["_module_config"] = state.pop("network_config_").to_dict()
    state["_module_config"]["min_variance"] = DEFAULT_MIN_VARIANCE
    state["history_"] = state["history_"].to_dict()
    old = VAEAnomalyDetector.__new__(VAEAnomalyDetector)
    old.__setstate__(state)
    assert old.get_params()["min_variance"] == DEFAULT_MIN_VARIANCE
    np.testing.assert_array_equal(old.min_variance_, np.full(8, DEFAULT_MIN_VARIANCE))
    np.testing.assert_array_equal(old.score_samples(X), detector.score_samples(X))
    assert clone(old).get_params()["min_variance"] == DEFAULT_MIN_VARIANCE
    # They trimmed by the loss, which trim_by now names.
    assert old.get_params()["trim_by"] == "loss" and detector.get_params()["trim_by"] == "kl"


DATA = Path(__file__).parent / "data"


def _raw_metadata(name):
    with zipfile.ZipFile(DATA / name) as archive:
        return json.loads(archive.read("anomvae.json"))


def test_migrate_upgrades_a_format_1_file_without_touching_it():
    raw = _raw_metadata("format1-gaussian.anomvae")
    before = copy.deepcopy(raw)
    metadata = schema.migrate(raw)
    assert raw == before  # the input is left as read
    assert metadata["format_version"] == 1  # still says what the file was written in
    params, fitted = metadata["params"], metadata["fitted"]
    # One floor for every feature becomes one per feature, and the parameter that chose it.
    assert fitted["module_config"]["min_variance"] == [1e-3] * 4 and params["min_variance"] == 1e-3
    assert params["trim_by"] == "loss" and fitted["n_refit_excluded_"] is None
    attributes = schema.decode_fitted(fitted)
    assert attributes["network_config_"] == NetworkConfig.from_dict(fitted["module_config"])
    np.testing.assert_array_equal(attributes["min_variance_"], np.full(4, 1e-3))
    assert isinstance(attributes["history_"], TrainingHistory)


@pytest.mark.parametrize("name", ["format1-gaussian", "format1-bernoulli", "format1-first", "format2-gaussian"])
def test_files_from_before_the_latent_diagnosis_have_none(name):
    path = DATA / f"{name}.anomvae"
    assert "active_units_" not in _raw_metadata(f"{name}.anomvae")["fitted"]
    for loaded in (anomvae.load(path), load_for_scoring(path)):
        assert loaded.kl_per_dim_ is None and loaded.active_units_ is None
    fitted = read_metadata(path)["fitted"]
    assert fitted["kl_per_dim_"] is None and fitted["active_units_"] is None


def test_migrate_drops_the_floor_of_a_bernoulli_network():
    metadata = schema.migrate(_raw_metadata("format1-bernoulli.anomvae"))
    assert "min_variance" not in metadata["fitted"]["module_config"]
    assert "min_variance" not in metadata["params"]
    assert schema.decode_fitted(metadata["fitted"])["min_variance_"] is None


def test_migrate_is_idempotent():
    raw = _raw_metadata("format2-gaussian.anomvae")
    metadata = schema.migrate(raw)
    upgraded = schema.migrate(metadata)
    assert upgraded == metadata


def test_fields_round_trip_through_json(fitted):
    stored = json.loads(json.dumps(schema.encode_fitted(fitted)))
    attributes = schema.decode_fitted(schema.migrate({"params": {}, "fitted": stored})["fitted"])
    for field in schema.FIELDS:
        value, original = attributes[field.name], getattr(fitted, field.name, None)
        if isinstance(original, np.ndarray):
            np.testing.assert_array_equal(value, original)
        else:
            assert value == original, field.name


def test_old_pickled_state_is_upgraded():
    config = NetworkConfig("mlp", 2, (4,), 2, "gaussian", 8, (1e-3, 1e-3))
    history = TrainingHistory(epoch=[1], beta=[1.0], train_loss=[2.0], train_reconstruction=[1.5],
                              train_kl=[0.5], val_loss=[2.1], val_reconstruction=[1.6], val_kl=[0.5])
    old = {"likelihood": "gaussian", "_module_config": {**config.to_dict(), "min_variance": 1e-3},
           "history_": history.to_dict()}
    state = schema.migrate_pickled_state(old)
    assert state["network_config_"] == config and state["history_"] == history
    assert state["min_variance"] == 1e-3 and state["trim_by"] == "loss"
    np.testing.assert_array_equal(state["min_variance_"], [1e-3, 1e-3])
    assert "_module_config" not in state and "_module_config" in old


def test_decode_refuses_arrays_that_do_not_fit_the_network(fitted):
    stored = schema.encode_fitted(fitted)
    stored["scale_"] = stored["scale_"][:-1]
    with pytest.raises(ValueError, match="scale_ holds 7 values for 8 features"):
        schema.decode_fitted(stored)


@pytest.mark.parametrize("edit", [
    {"kl_per_dim_": [0.5]},
    {"active_units_": 4},
    {"active_units_": None},
])
def test_decode_refuses_a_latent_diagnosis_that_does_not_fit_the_network(fitted, edit):
    stored = {**schema.encode_fitted(fitted), **edit}
    with pytest.raises(ValueError, match="kl_per_dim_ and active_units_ do not describe the 3 latent units"):
        schema.decode_fitted(stored)


def test_pickles_from_before_the_latent_diagnosis_have_none(fitted, test_set):
    state = fitted.__getstate__()
    del state["kl_per_dim_"], state["active_units_"]
    old = VAEAnomalyDetector.__new__(VAEAnomalyDetector)
    old.__setstate__(state)
    assert old.kl_per_dim_ is None and old.active_units_ is None
    np.testing.assert_array_equal(old.score_samples(test_set[0]), fitted.score_samples(test_set[0]))
    # An unfitted estimator's pickle stays unfitted.
    assert "kl_per_dim_" not in schema.migrate_pickled_state(VAEAnomalyDetector().__getstate__())


def test_the_first_model_files_load_and_score_as_they_did():
    # Written by anomvae at commit fb93381, the first with model files (format
    # 1): no batch size, calibration, refit or trimming recorded yet. Its
    # scores ("scores") differ from today's in float32's last bits, as they
    # did for anomvae 0.2.0 ("scores_0_2", which it gave for this file).
    expected = np.load(DATA / "format1-first-expected.npz")
    path = DATA / "format1-first.anomvae"
    for loaded in (anomvae.load(path), load_for_scoring(path)):
        np.testing.assert_array_equal(loaded.score_samples(expected["X"]), expected["scores_0_2"])
        np.testing.assert_allclose(loaded.score_samples(expected["X"]), expected["scores"], rtol=1e-6)
        assert loaded.batch_size_ is None and loaded.reference_scores_ is None
    params = anomvae.load(path).get_params()
    assert params["trim_fraction"] == 0.0 and params["trim_by"] == "loss" and params["min_variance"] == 1e-3
