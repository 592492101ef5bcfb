"""anomvae.metrics: scorers with labels 1 = anomaly, where scikit-learn's
"roc_auc" reads the detector's ranking inverted."""

import warnings

import numpy as np
import pytest
from conftest import FAST
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from anomvae import VAEAnomalyDetector
from anomvae.errors import PosteriorCollapseWarning
from anomvae.metrics import anomaly_average_precision, anomaly_roc_auc


def test_scorers_rank_rows_by_the_anomaly_score(fitted, test_set):
    X, y = test_set
    anomaly_score = -fitted.score_samples(X)
    assert anomaly_roc_auc(fitted, X, y) == roc_auc_score(y, anomaly_score) > 0.9
    assert anomaly_average_precision(fitted, X, y) == average_precision_score(y, anomaly_score) > 0.5
    # Boolean labels are 0/1 labels.
    assert anomaly_roc_auc(fitted, X, y == 1) == anomaly_roc_auc(fitted, X, y)


@pytest.mark.parametrize("scorer", [anomaly_roc_auc, anomaly_average_precision])
def test_labels_coded_as_predict_codes_them_are_refused(fitted, test_set, scorer):
    # +1 normal, -1 anomaly: read as 1 = anomaly it would invert the ranking.
    X, y = test_set
    with pytest.raises(ValueError, match=r"labels 0 \(normal\) and 1 \(anomaly\), got the values \[-1, 1\].*y == -1"):
        scorer(fitted, X, np.where(y == 1, -1, 1))


def _search(scoring, X, y):
    # beta=50 pushes every latent unit onto the prior (posterior collapse):
    # the model forgets the correlations the test set's outliers break.
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(VAEAnomalyDetector(**FAST), {"beta": [1.0, 50.0]}, scoring=scoring, cv=cv, refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        return search.fit(X, y)


def test_grid_search_with_the_scorer_picks_the_better_setting_where_roc_auc_picks_the_worse(test_set):
    X, y = test_set
    ours, sklearns = _search(anomaly_roc_auc, X, y), _search("roc_auc", X, y)
    auc = ours.cv_results_["mean_test_score"]
    assert auc[0] > auc[1] + 0.1  # beta=1 separates the outliers far better
    assert ours.best_params_ == {"beta": 1.0}
    # "roc_auc" ranks decision_function (higher = more normal) against label 1 = anomaly.
    np.testing.assert_allclose(sklearns.cv_results_["mean_test_score"], 1 - auc, rtol=0, atol=1e-12)
    assert sklearns.best_params_ == {"beta": 50.0}
