"""anomvae.persistence, model files: round trips, atomic writes, and every way a file
can be bad. (Files of older formats: test_schema.py.)"""

import json
import os
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest

import anomvae
from anomvae import persistence
from anomvae.calibration import conformal_p_values
from anomvae.errors import ModelFileError
from anomvae.fitted import ScoringModel
from anomvae.persistence import load_for_scoring, read_metadata
from anomvae.schema import FORMAT_VERSION


@pytest.fixture(scope="module")
def model_path(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "model.anomvae"
    anomvae.save(fitted, path, extra={"note": "kept"})
    return path


def test_round_trip_gives_identical_scores(fitted, model_path, test_set):
    X, _ = test_set
    loaded = anomvae.load(model_path)
    np.testing.assert_array_equal(loaded.score_samples(X), fitted.score_samples(X))
    np.testing.assert_array_equal(loaded.transform(X), fitted.transform(X))
    assert loaded.get_params() == fitted.get_params()
    assert loaded.threshold_ == fitted.threshold_ and loaded.history_ == fitted.history_


def test_scoring_only_load_gives_the_same_bits(fitted, model_path, test_set, tmp_path):
    X, _ = test_set
    scorer = load_for_scoring(model_path)
    np.testing.assert_array_equal(scorer.score_samples(X), fitted.score_samples(X))
    assert scorer.threshold_ == fitted.threshold_ and scorer.offset_ == fitted.offset_
    assert scorer.reference_scores_ is None
    calibrated = anomvae.load(model_path).calibrate(X[:100], fpr=0.05)
    anomvae.save(calibrated, tmp_path / "c.anomvae")
    scorer = load_for_scoring(tmp_path / "c.anomvae")
    anomaly = -scorer.score_samples(X)
    np.testing.assert_array_equal(conformal_p_values(scorer.reference_scores_, anomaly), calibrated.p_values(X))
    assert scorer.threshold_ == calibrated.threshold_
    with pytest.raises(ValueError, match="8 features"):
        scorer.score_samples(X[:, :3])


@pytest.mark.parametrize("scoring_only", [False, True])
def test_load_with_metadata_reads_the_file_once(fitted, model_path, test_set, scoring_only, model_file_opens):
    X, _ = test_set
    model, metadata = persistence.load_with_metadata(model_path, scoring_only=scoring_only)
    assert model_file_opens == [model_path]
    assert metadata == read_metadata(model_path)
    assert isinstance(model, ScoringModel if scoring_only else anomvae.VAEAnomalyDetector)
    np.testing.assert_array_equal(model.score_samples(X), fitted.score_samples(X))
    # Editing the metadata returned leaves the model alone.
    metadata["fitted"]["module_config"]["hidden_dims"].append(99)
    assert model.network_config_.hidden_dims == tuple(fitted.hidden_dims)


def test_round_trip_keeps_the_latent_diagnosis(fitted, model_path):
    loaded = anomvae.load(model_path)
    assert loaded.active_units_ == fitted.active_units_
    np.testing.assert_array_equal(loaded.kl_per_dim_, fitted.kl_per_dim_)
    np.testing.assert_array_equal(load_for_scoring(model_path).kl_per_dim_, fitted.kl_per_dim_)


def test_saving_a_pipeline_says_what_to_do_instead(fitted, tmp_path):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), fitted)
    with pytest.raises(TypeError, match=r"writes a fitted VAEAnomalyDetector, not a Pipeline.*"
                                        r"anomvae.save\(pipeline\[-1\], path\).*joblib.dump\(pipeline, path\)"):
        anomvae.save(pipeline, tmp_path / "p.anomvae")
    with pytest.raises(TypeError, match="not a ScoringModel"):
        anomvae.save(load_for_scoring(_saved(fitted, tmp_path)), tmp_path / "s.anomvae")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.anomvae"]
    # What the message suggests works.
    anomvae.save(pipeline[-1], tmp_path / "d.anomvae")
    assert anomvae.load(tmp_path / "d.anomvae").threshold_ == fitted.threshold_


def _saved(detector, folder):
    anomvae.save(detector, folder / "m.anomvae")
    return folder / "m.anomvae"


def test_round_trip_keeps_feature_names(inliers, tmp_path):
    frame = pd.DataFrame(inliers, columns=[f"c{i}" for i in range(inliers.shape[1])])
    detector = anomvae.VAEAnomalyDetector(max_epochs=2, random_state=0).fit(frame)
    anomvae.save(detector, tmp_path / "m.anomvae")
    loaded = anomvae.load(tmp_path / "m.anomvae")
    assert list(loaded.feature_names_in_) == list(frame.columns)
    np.testing.assert_array_equal(loaded.score_samples(frame), detector.score_samples(frame))


def test_conv_model_file_and_pickle_round_trip(conv_model, test_images, tmp_path):
    anomvae.save(conv_model, tmp_path / "m.anomvae")
    loaded = anomvae.load(tmp_path / "m.anomvae")
    assert loaded.image_shape_ == (1, 8, 8) and loaded.architecture == "conv"
    assert np.array_equal(loaded.score_samples(test_images), conv_model.score_samples(test_images))
    unpickled = pickle.loads(pickle.dumps(conv_model))
    assert np.array_equal(unpickled.score_samples(test_images), conv_model.score_samples(test_images))


def test_metadata_is_json_readable(model_path):
    metadata = read_metadata(model_path)
    assert metadata["format"] == "anomvae-model" and metadata["format_version"] == FORMAT_VERSION
    assert metadata["anomvae_version"] == anomvae.__version__
    assert metadata["extra"] == {"note": "kept"}
    assert metadata["fitted"]["n_features_in_"] == 8
    with zipfile.ZipFile(model_path) as archive:
        assert set(archive.namelist()) == {"anomvae.json", "weights.pt"}


def test_save_is_atomic(fitted, model_path, tmp_path, monkeypatch):
    from sklearn.exceptions import NotFittedError

    target = tmp_path / "m.anomvae"
    target.write_bytes(b"previous model")
    with pytest.raises(NotFittedError):
        anomvae.save(anomvae.VAEAnomalyDetector(), target)
    assert target.read_bytes() == b"previous model"

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", disk_full)  # fails half-way through the archive
    with pytest.raises(OSError, match="No space left on device"):
        anomvae.save(fitted, target)
    assert target.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["m.anomvae"]  # no temporary file left behind


def _rewrite(source, target, metadata_edit=None, weights=None):
    with zipfile.ZipFile(source) as archive:
        metadata = json.loads(archive.read("anomvae.json"))
        raw_weights = archive.read("weights.pt")
    if metadata_edit:
        metadata_edit(metadata)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("anomvae.json", json.dumps(metadata))
        archive.writestr("weights.pt", raw_weights if weights is None else weights)
    return target


def _truncated(path, tmp):
    data = path.read_bytes()
    (tmp / "bad").write_bytes(data[: len(data) // 2])


def _flipped(path, tmp):
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("weights.pt")
    # Damage bytes inside the stored weights; the member's CRC-32 no longer matches.
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 10
    data[start:start + 8] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    (tmp / "bad").write_bytes(bytes(data))


def _foreign_zip(path, tmp):
    with zipfile.ZipFile(tmp / "bad", "w") as archive:
        archive.writestr("hello.txt", "not a model")


def _foreign_json(path, tmp):
    with zipfile.ZipFile(tmp / "bad", "w") as archive:
        archive.writestr("anomvae.json", json.dumps({"format": "something-else"}))


def _newer(path, tmp):
    _rewrite(path, tmp / "bad", lambda m: m.update(format_version=FORMAT_VERSION + 1, anomvae_version="9.0"))


# Padded to the size of the network's weights, which a smaller weights.pt
# could not hold (a file too small is refused before torch reads it).
_PADDING = b" " * 100_000


def _bad_weights(path, tmp):
    _rewrite(path, tmp / "bad", weights=b"these are not tensors" + _PADDING)


def _pickle_payload(path, tmp):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp / "owned"),))

    _rewrite(path, tmp / "bad", weights=pickle.dumps(Exploit()) + _PADDING)


def _text(path, tmp):
    (tmp / "bad").write_text("record_id,a,b\n1,2,3\n")


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncated, "not a complete zip archive"),
        (_flipped, "corrupted model file"),
        (_foreign_zip, "it has no anomvae.json"),
        (_foreign_json, "no 'anomvae-model' marker"),
        (_newer, f"model format {FORMAT_VERSION + 1}; this anomvae .* reads format {FORMAT_VERSION} at most. "
                 "Upgrade anomvae"),
        (_bad_weights, "weights.pt cannot be read"),
        (_pickle_payload, "weights.pt cannot be read"),
        (_text, "not an anomvae model file"),
    ],
)
def test_bad_model_files_give_one_clear_error(model_path, tmp_path, damage, message):
    damage(model_path, tmp_path)
    with pytest.raises(ModelFileError, match=message):
        anomvae.load(tmp_path / "bad")
    assert not (tmp_path / "owned").exists()  # loading never runs code from the file


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.update(center_=[0.0]), "center_ holds 1 values for"),
    (lambda f: f.update(scale_=f["scale_"][:-1]), "scale_ holds"),
    (lambda f: f.update(module_config=None), "fitted.module_config: None is not a mapping"),
    (lambda f: f.update(n_features_in_=f["n_features_in_"] + 1), "the network has"),
])
@pytest.mark.parametrize("loader", [anomvae.load, load_for_scoring])
def test_fitted_arrays_that_do_not_fit_the_network_are_refused(model_path, tmp_path, edit, message, loader):
    # Hand-edited files: numpy would broadcast a short array into wrong scores.
    bad = _rewrite(model_path, tmp_path / "bad", lambda m: edit(m["fitted"]))
    with pytest.raises(ModelFileError, match=f"corrupted model file .*{message}"):
        loader(bad)


@pytest.mark.parametrize("version", [0, -7, True])
def test_format_versions_below_1_are_refused(model_path, tmp_path, version):
    bad = _rewrite(model_path, tmp_path / "bad", lambda m: m.update(format_version=version))
    with pytest.raises(ModelFileError, match="format_version is"):
        read_metadata(bad)


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="is a directory"):
        anomvae.load(tmp_path)
