"""Serve anomvae scores with MLflow: a ``pyfunc`` model around a model file.

``predict`` answers each row with its ``anomaly_score`` (negative ELBO, in
nats), its ``p_value`` when the model is calibrated, ``is_anomaly`` and a
``status`` ("scored", or "not scored: why" for a row with an empty, NaN or
infinite value, whose score is NaN and whose flag is None), the way
``anomvae score --invalid-rows mark`` does: not only +1/-1. Columns are
matched by name; others are ignored. Tabular models only.

Save it as an MLflow model, from the repository root (``pip install mlflow``)::

    import sys

    import mlflow

    sys.path.insert(0, "examples")  # import it as mlflow_model, the name code_paths gives it when served
    from mlflow_model import AnomvaeModel

    mlflow.pyfunc.save_model(
        "anomvae-mlflow", python_model=AnomvaeModel(), artifacts={"model": "cardio.anomvae"},
        code_paths=["examples/mlflow_model.py"], pip_requirements=["anomvae"],
    )

(or ``mlflow.pyfunc.log_model(name="anomvae", ...)`` with the same
arguments inside a run; ``artifact_path=`` before MLflow 3), then serve it::

    mlflow models serve -m anomvae-mlflow -p 5000 --env-manager local

The class works without MLflow too: ``load_context`` needs only an object
whose ``artifacts["model"]`` is the model file's path.
"""

import numpy as np
import pandas as pd

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # a plain class: usable, and testable, without MLflow
    PythonModel = object


class AnomvaeModel(PythonModel):
    """An anomvae model file as an MLflow ``pyfunc`` model.

    Parameters
    ----------
    threshold : float, default=None
        Anomaly-score cut in nats; None uses the model's ``threshold_``.
    """

    def __init__(self, threshold=None):
        self.threshold = threshold

    def load_context(self, context):
        """Load the model file ``context.artifacts["model"]`` for scoring
        (without scikit-learn, as ``anomvae score`` does)."""
        from anomvae.persistence import load_for_scoring

        self.model = load_for_scoring(context.artifacts["model"])
        if getattr(self.model, "image_shape_", None) is not None:
            raise ValueError("this wrapper serves tabular models; the model file is an image model")

    def predict(self, context, model_input, params=None):
        """Score the rows of ``model_input`` (a DataFrame, or what
        ``pandas.DataFrame`` takes).

        Returns
        -------
        pandas.DataFrame
            ``anomaly_score``, ``p_value`` (calibrated models only),
            ``is_anomaly`` and ``status``, one row per input row, on its index.
        """
        from anomvae.calibration import conformal_p_values

        model = self.model
        frame = pd.DataFrame(model_input)
        names = [str(name) for name in model.feature_names_in_]
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise ValueError(f"the input lacks the feature column(s) {', '.join(map(repr, missing))}")
        X = frame[names].apply(pd.to_numeric).to_numpy(dtype=np.float64)
        invalid, reasons = model.standardizer_.unusable_rows(X, names)
        valid = ~invalid
        scores = np.full(len(X), np.nan)
        if valid.any():
            scores[valid] = -model.score_samples(X[valid])
        threshold = model.threshold_ if self.threshold is None else self.threshold
        out = pd.DataFrame({"anomaly_score": scores}, index=frame.index)
        if getattr(model, "reference_scores_", None) is not None:
            out["p_value"] = np.nan
            out.loc[valid, "p_value"] = conformal_p_values(model.reference_scores_, scores[valid])
        out["is_anomaly"] = pd.Series(scores > threshold, index=frame.index, dtype=object).where(valid, None)
        status = np.full(len(X), "scored", dtype=object)
        status[invalid] = [f"not scored: {reason}" for reason in reasons]
        out["status"] = status
        return out
