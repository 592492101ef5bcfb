"""Scorers for model selection with labels 1 = anomaly.

scikit-learn's ``scoring="roc_auc"`` ranks rows by ``decision_function``,
which is higher for *normal* rows, against the positive label 1. With the
usual anomaly labels (1 = anomaly, as in the bundled data and the ODDS
sets) it computes one minus the detector's ROC-AUC, and ``GridSearchCV``
picks the worst setting without a word. The scorers here rank rows by the
anomaly score ``-score_samples(X)`` instead::

    GridSearchCV(VAEAnomalyDetector(), grid, scoring=anomaly_roc_auc, cv=StratifiedKFold(3))

They work with any fitted estimator that has ``score_samples`` (higher =
more normal), a :class:`~sklearn.pipeline.Pipeline` ending in one included.
"""

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _anomaly_labels(y):
    """``y`` as 0/1 labels, refusing any other coding (such as the +1/-1 of
    ``predict``, where 1 means normal) rather than reading it inverted."""
    y = np.asarray(y)
    values = np.unique(y)
    if y.ndim != 1 or not np.isin(values, [0, 1]).all():
        raise ValueError(
            f"y must hold labels 0 (normal) and 1 (anomaly), got the values {values[:5].tolist()!r:.80}; "
            "for labels coded as predict codes them (+1 normal, -1 anomaly), pass y == -1"
        )
    return y.astype(int)


def anomaly_roc_auc(estimator, X, y):
    """ROC-AUC of the anomaly score ``-estimator.score_samples(X)`` against
    ``y`` (1 = anomaly): a scorer for ``GridSearchCV`` and
    ``cross_validate``.

    Parameters
    ----------
    estimator : fitted estimator with ``score_samples``
        Such as :class:`~anomvae.VAEAnomalyDetector`, or a pipeline ending
        in one.
    X : array-like of shape (n_samples, n_features)
        Rows to score, with both labels among them (use a stratified
        split, such as ``StratifiedKFold``).
    y : array-like of shape (n_samples,)
        1 (or True) for an anomaly, 0 (or False) for a normal row.

    Returns
    -------
    score : float
        In [0, 1]; higher is better, 0.5 is chance.

    See Also
    --------
    anomaly_average_precision : The area under the precision-recall curve.
    sklearn.metrics.roc_auc_score : The metric.

    Examples
    --------
    >>> import numpy as np
    >>> from anomvae import VAEAnomalyDetector
    >>> from anomvae.metrics import anomaly_roc_auc
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(200, 4))
    >>> detector = VAEAnomalyDetector(max_epochs=20, random_state=0).fit(X)
    >>> X_test = np.vstack([rng.normal(size=(20, 4)), rng.normal(size=(5, 4)) + 6])
    >>> y_test = np.r_[np.zeros(20), np.ones(5)]
    >>> float(anomaly_roc_auc(detector, X_test, y_test))
    1.0
    """
    y = _anomaly_labels(y)
    return roc_auc_score(y, -estimator.score_samples(X))


def anomaly_average_precision(estimator, X, y):
    """Average precision (area under the precision-recall curve) of the
    anomaly score ``-estimator.score_samples(X)``, anomalies (``y == 1``)
    being the positive class: a scorer for ``GridSearchCV``.

    Unlike ROC-AUC it weighs the top of the ranking, the rows a threshold
    flags first, and its chance level is the share of anomalies in ``y``.

    Parameters
    ----------
    estimator : fitted estimator with ``score_samples``
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        1 (or True) for an anomaly, 0 (or False) for a normal row.

    Returns
    -------
    score : float
        In [0, 1]; higher is better.

    See Also
    --------
    anomaly_roc_auc : The area under the ROC curve.
    sklearn.metrics.average_precision_score : The metric.
    """
    y = _anomaly_labels(y)
    return average_precision_score(y, -estimator.score_samples(X))
