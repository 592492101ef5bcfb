"""examples/mlflow_model.py: the MLflow pyfunc wrapper serves anomvae's
scores, p-values and flags, with MLflow or without it."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import anomvae

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlflow_model.py"


def import_example(monkeypatch, without_mlflow=True):
    if without_mlflow:
        monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow then fails
    spec = importlib.util.spec_from_file_location("mlflow_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def served(monkeypatch, path, **params):
    model = import_example(monkeypatch).AnomvaeModel(**params)
    model.load_context(SimpleNamespace(artifacts={"model": str(path)}))
    return model


def test_without_mlflow_it_is_a_plain_class(monkeypatch):
    assert import_example(monkeypatch).AnomvaeModel.__bases__ == (object,)


def test_scores_p_values_and_flags_as_anomvae_gives_them(files, monkeypatch):
    batch = pd.read_csv(files / "batch.csv", dtype={"id": str}).set_index("id")
    batch.loc["id03", "b"] = np.nan
    # Columns are matched by name; others are ignored.
    rows = batch.assign(note="x")[["note", *batch.columns[::-1]]]
    out = served(monkeypatch, files / "calibrated.anomvae").predict(None, rows)
    assert list(out.columns) == ["anomaly_score", "p_value", "is_anomaly", "status"]
    assert out.index.equals(batch.index)
    detector = anomvae.load(files / "calibrated.anomvae")
    valid = batch.drop(index="id03")
    scores = -detector.score_samples(valid)
    np.testing.assert_array_equal(out["anomaly_score"].drop(index="id03"), scores)
    np.testing.assert_array_equal(out["p_value"].drop(index="id03"), detector.p_values(valid))
    assert out["is_anomaly"].drop(index="id03").tolist() == list(detector.predict(valid) == -1)
    assert out.loc["id07", "is_anomaly"] is True and out.loc["id07", "p_value"] <= 0.05
    assert np.isnan(out.loc["id03", "anomaly_score"]) and np.isnan(out.loc["id03", "p_value"])
    assert out.loc["id03", "is_anomaly"] is None
    assert out.loc["id03", "status"] == "not scored: empty or NaN value in column 'b'"
    assert (out["status"].drop(index="id03") == "scored").all()


def test_uncalibrated_models_have_no_p_values_and_the_threshold_can_be_set(files, monkeypatch):
    rows = pd.read_csv(files / "batch.csv").drop(columns="id")
    out = served(monkeypatch, files / "plain.anomvae", threshold=-1e9).predict(None, rows.to_dict("list"))
    assert list(out.columns) == ["anomaly_score", "is_anomaly", "status"]
    assert out["is_anomaly"].tolist() == [True] * len(rows)


def test_missing_columns_and_image_models_are_refused(files, image_model, monkeypatch):
    model = served(monkeypatch, files / "plain.anomvae")
    with pytest.raises(ValueError, match="lacks the feature column"):
        model.predict(None, pd.DataFrame({"a": [1.0]}))
    with pytest.raises(ValueError, match="serves tabular models"):
        served(monkeypatch, image_model)


def test_through_mlflow(files, monkeypatch, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    from mlflow_model import AnomvaeModel

    assert issubclass(AnomvaeModel, mlflow.pyfunc.PythonModel)
    mlflow.pyfunc.save_model(str(tmp_path / "served"), python_model=AnomvaeModel(),
                             artifacts={"model": str(files / "calibrated.anomvae")}, code_paths=[str(EXAMPLE)])
    rows = pd.read_csv(files / "batch.csv").drop(columns="id")
    out = mlflow.pyfunc.load_model(str(tmp_path / "served")).predict(rows)
    detector = anomvae.load(files / "calibrated.anomvae")
    np.testing.assert_array_equal(out["anomaly_score"], -detector.score_samples(rows))
    np.testing.assert_array_equal(out["p_value"], detector.p_values(rows))
