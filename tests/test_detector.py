"""VAEAnomalyDetector, the estimator: detection, determinism, the latent space,
the scikit-learn ecosystem, devices, and errors on bad parameters and input."""

import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, make_low_rank, quiet_fit
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anomvae import VAEAnomalyDetector

# ---------------------------------------------------------- detection


def test_planted_outliers_rank_above_inliers(fitted, test_set):
    X, y = test_set
    assert roc_auc_score(y, -fitted.score_samples(X)) > 0.95


def test_flags_outliers_and_few_inliers(fitted, test_set):
    X, y = test_set
    flagged = fitted.predict(X) == -1
    assert flagged[y == 1].mean() > 0.8
    assert flagged[y == 0].mean() < 0.1


def test_outputs_types_and_relations(fitted, test_set):
    X, _ = test_set
    scores = fitted.score_samples(X.astype(np.float32))
    assert scores.dtype == np.float64 and scores.shape == (len(X),)
    np.testing.assert_array_equal(fitted.decision_function(X), fitted.score_samples(X) - fitted.offset_)
    labels = fitted.predict(X)
    assert labels.dtype.kind == "i" and set(np.unique(labels)) <= {-1, 1}
    np.testing.assert_array_equal(labels == -1, -fitted.score_samples(X) > fitted.threshold_)
    assert fitted.threshold_ == -fitted.offset_


def test_scores_are_elbo_in_original_units(inliers):
    """Rescaling a feature by c shifts every log-density by -log(c)."""
    detector = quiet_fit(VAEAnomalyDetector(**FAST), inliers)
    scaled = inliers * np.r_[10.0, np.ones(inliers.shape[1] - 1)]
    rescaled = quiet_fit(VAEAnomalyDetector(**FAST), scaled)
    np.testing.assert_allclose(
        rescaled.score_samples(scaled), detector.score_samples(inliers) - np.log(10.0), rtol=1e-4, atol=1e-4
    )


def test_bernoulli_likelihood_on_binary_data():
    rng = np.random.RandomState(0)
    prototypes = rng.rand(2, 12) > 0.5
    X = prototypes[rng.randint(2, size=400)] ^ (rng.rand(400, 12) < 0.05)
    noise = (rng.rand(20, 12) > 0.5).astype(float)
    detector = quiet_fit(VAEAnomalyDetector(likelihood="bernoulli", **FAST), X.astype(float))
    np.testing.assert_array_equal(detector.scale_, 1.0)
    y = np.r_[np.zeros(100), np.ones(20)]
    assert roc_auc_score(y, -detector.score_samples(np.vstack([X[:100], noise]))) > 0.9
    means = detector.sample(10, random_state=0)
    assert ((means >= 0) & (means <= 1)).all()
    assert set(np.unique(detector.sample(10, noise=True))) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"needs values in \[0, 1\]; column 3"):
        detector.score_samples(np.where(np.arange(12) == 3, 2.0, 0.0)[None, :])


def test_importance_weighted_scores(fitted, test_set):
    X, y = test_set
    iwae = clone(fitted).set_params(score_bound="iwae")
    # The bound is a scoring choice: reuse the trained network.
    iwae.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_") or k.startswith("_")})
    elbo_scores, iwae_scores = fitted.score_samples(X), iwae.score_samples(X)
    # A tighter bound on log p(x): higher on average than the ELBO estimate.
    assert iwae_scores.mean() > elbo_scores.mean()
    assert roc_auc_score(y, -iwae_scores) > 0.95
    np.testing.assert_array_equal(iwae.score_samples(X[[3, 1, 200]]), iwae_scores[[3, 1, 200]])


# -------------------------------------------------------- determinism


def test_repeated_calls_give_identical_scores(fitted, test_set):
    X, _ = test_set
    np.testing.assert_array_equal(fitted.score_samples(X), fitted.score_samples(X))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_score_of_a_row_ignores_its_batch(fitted, test_set, data):
    X, _ = test_set
    full = fitted.score_samples(X)
    rows = data.draw(st.lists(st.integers(0, len(X) - 1), min_size=1, max_size=60))
    np.testing.assert_array_equal(fitted.score_samples(X[rows]), full[rows])
    labels = fitted.predict(X[rows])
    assert set(np.unique(labels)) <= {-1, 1}


@pytest.mark.parametrize("size", [1, 7, 16, 17, 33, 240])
def test_score_independent_of_batch_size(fitted, test_set, size):
    X, _ = test_set
    full = fitted.score_samples(X)
    parts = np.concatenate([fitted.score_samples(X[i:i + size]) for i in range(0, len(X), size)])
    np.testing.assert_array_equal(parts, full)


def test_score_independent_of_other_rows_across_chunks(fitted, test_set):
    """A row scores the same alone and inside a file-sized batch spanning many chunks."""
    X, _ = test_set
    big = np.vstack([X] * 20)  # more rows than one internal chunk
    assert len(big) > 1024
    np.testing.assert_array_equal(fitted.score_samples(big)[-len(X):], fitted.score_samples(X))


def test_same_random_state_same_model(inliers, test_set):
    X, _ = test_set
    a = quiet_fit(VAEAnomalyDetector(**FAST), inliers)
    b = quiet_fit(VAEAnomalyDetector(**FAST), inliers)
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    c = quiet_fit(VAEAnomalyDetector(**{**FAST, "random_state": 1}), inliers)
    assert not np.array_equal(a.score_samples(X), c.score_samples(X))


def test_global_random_generators_untouched(inliers):
    torch_state = torch.get_rng_state().clone()
    numpy_state = np.random.get_state()[1].copy()
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 2}), inliers)
    detector.sample(5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)


# ------------------------------------------------------- latent space


def test_transform_and_inverse_transform(fitted, test_set):
    X, _ = test_set
    normal = X[:200]
    Z = fitted.transform(normal)
    assert Z.shape == (200, fitted.latent_dim_) and Z.dtype == np.float64
    reconstruction = fitted.inverse_transform(Z)
    assert reconstruction.shape == normal.shape
    # The decoded means reconstruct the rows far better than the column means.
    error = np.mean((reconstruction - normal) ** 2)
    baseline = np.mean((normal - normal.mean(axis=0)) ** 2)
    assert error < 0.1 * baseline
    with pytest.raises(ValueError, match="latent space"):
        fitted.inverse_transform(np.zeros((2, fitted.latent_dim_ + 1)))


def test_sample_draws_rows_like_the_training_data():
    rng = np.random.RandomState(0)
    X = rng.normal(loc=[100.0, -5.0], scale=[10.0, 0.5], size=(500, 2))
    detector = quiet_fit(VAEAnomalyDetector(**FAST), X)
    samples = detector.sample(2000, random_state=0, noise=True)
    assert samples.shape == (2000, 2)
    assert abs(samples[:, 0].mean() - 100.0) < 2.0 and abs(samples[:, 1].mean() + 5.0) < 0.1
    np.testing.assert_allclose(samples.std(axis=0), [10.0, 0.5], rtol=0.25)
    np.testing.assert_array_equal(detector.sample(3, random_state=1), detector.sample(3, random_state=1))
    with pytest.raises(ValueError, match="n_samples"):
        detector.sample(0)


def test_interpolation_between_two_rows(fitted, test_set):
    X, _ = test_set
    z = fitted.transform(X[:2])
    path = fitted.inverse_transform(np.linspace(z[0], z[1], 5))
    assert path.shape == (5, X.shape[1]) and np.isfinite(path).all()


# ---------------------------------------------------------- ecosystem


def test_pickle_and_joblib_round_trip(fitted, test_set, tmp_path):
    X, _ = test_set
    expected = fitted.score_samples(X)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.score_samples(X), expected)
    joblib.dump(fitted, tmp_path / "model.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "model.joblib").score_samples(X), expected)
    assert restored.history_ == fitted.history_
    assert hasattr(fitted, "module_")  # pickling leaves the original intact


def test_pickled_weights_live_on_the_cpu(fitted):
    state = fitted.__getstate__()
    assert "module_" not in state
    assert all(t.device.type == "cpu" for t in state["_module_state"].values())


def test_gpu_trained_model_loads_without_cuda(fitted, test_set, monkeypatch):
    """A model whose device_ is CUDA unpickles onto the CPU when CUDA is absent."""
    X, _ = test_set
    state = fitted.__getstate__()
    state["device_"] = "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored = VAEAnomalyDetector.__new__(VAEAnomalyDetector)
    with pytest.warns(UserWarning, match="trained on cuda"):
        restored.__setstate__(state)
    assert restored.device_ == "cpu"
    np.testing.assert_array_equal(restored.score_samples(X), fitted.score_samples(X))


def test_pipeline_and_clone(inliers, test_set):
    X, y = test_set
    pipeline = make_pipeline(StandardScaler(), VAEAnomalyDetector(standardize=False, **{**FAST, "max_epochs": 60}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(inliers)
    assert roc_auc_score(y, -pipeline.score_samples(X)) > 0.9
    assert set(np.unique(pipeline.predict(X))) == {-1, 1}
    twin = clone(pipeline)
    assert twin.get_params()["vaeanomalydetector__lr"] == FAST["lr"]
    assert not hasattr(twin[-1], "module_")


def test_grid_search_over_a_parameter(inliers, test_set):
    X, y = test_set

    def auc(estimator, X_, y_):
        return roc_auc_score(y_, -estimator.score_samples(X_))

    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(VAEAnomalyDetector(**FAST), {"latent_dim": [1, 3]}, scoring=auc, cv=cv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    # The search's scores are those of fitting each setting by hand on the
    # same folds: set_params, clone and random_state carry through the search.
    by_hand = []
    for latent_dim in (1, 3):
        folds = []
        for train, test in cv.split(X, y):
            detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "latent_dim": latent_dim}), X[train])
            folds.append(auc(detector, X[test], y[test]))
        by_hand.append(np.mean(folds))
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], by_hand, rtol=0, atol=1e-12)
    best = int(np.argmax(by_hand))
    assert search.best_params_ == {"latent_dim": (1, 3)[best]}
    refit = quiet_fit(VAEAnomalyDetector(**{**FAST, "latent_dim": (1, 3)[best]}), X)
    np.testing.assert_array_equal(search.best_estimator_.score_samples(X), refit.score_samples(X))


def test_latent_means_as_a_named_frame_in_a_pipeline(inliers):
    # TransformerMixin: set_output and get_feature_names_out, one name per latent dimension.
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = pd.DataFrame(inliers, columns=[f"f{i}" for i in range(inliers.shape[1])])
    pipeline = make_pipeline(StandardScaler(), VAEAnomalyDetector(**{**FAST, "max_epochs": 2, "latent_dim": 3}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.set_output(transform="pandas").fit(frame)
    Z = pipeline.transform(frame)
    names = ["vaeanomalydetector0", "vaeanomalydetector1", "vaeanomalydetector2"]
    assert isinstance(Z, pd.DataFrame) and list(Z.columns) == names
    assert list(pipeline[-1].get_feature_names_out()) == names
    np.testing.assert_array_equal(Z.to_numpy(), pipeline[-1].transform(pipeline[0].transform(frame)))
    assert pipeline[-1].__sklearn_tags__().transformer_tags is not None


def test_feature_names_are_kept(inliers):
    columns = [f"f{i}" for i in range(inliers.shape[1])]
    frame = pd.DataFrame(inliers, columns=columns)
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 2}), frame)
    assert list(detector.feature_names_in_) == columns
    with pytest.raises(ValueError, match="feature names should match"):
        detector.score_samples(frame[columns[::-1]])


def test_init_stores_parameters_unchanged():
    detector = VAEAnomalyDetector(hidden_dims=[8, 4], device="auto")
    assert detector.hidden_dims == [8, 4] and detector.device == "auto"
    with pytest.raises(TypeError):
        VAEAnomalyDetector(8)  # keyword-only


def test_device_is_resolved_at_fit(inliers):
    detector = quiet_fit(VAEAnomalyDetector(device="cpu", **{**FAST, "max_epochs": 1}), inliers)
    assert detector.device_ == "cpu" and detector.device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_clear_error(inliers):
    with pytest.raises(ValueError, match="CUDA is not available"):
        VAEAnomalyDetector(device="cuda", max_epochs=1).fit(inliers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_matches_the_contract(inliers, test_set):
    X, y = test_set
    detector = quiet_fit(VAEAnomalyDetector(device="cuda", **FAST), inliers)
    assert detector.device_.startswith("cuda")
    scores = detector.score_samples(X)
    rows = [5, 3, 200, 1]
    np.testing.assert_array_equal(detector.score_samples(X[rows]), scores[rows])
    restored = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(restored.score_samples(X), scores)
    assert roc_auc_score(y, -scores) > 0.9


# ---------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params, message",
    [
        ({"device": "tpu-9000"}, "not a torch device"),
        ({"hidden_dims": (8, 0)}, "integers from 1 to 65536"),
        ({"hidden_dims": (30_000_000,)}, "integers from 1 to 65536"),
        ({"hidden_dims": (4,) * 100_000}, "at most 32 integers"),
        ({"n_score_samples": 1_000_000_000}, "n_score_samples"),
        ({"device": "meta"}, "cannot train or score a network"),
        ({"contamination": 0.7}, "contamination"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"lr": 0.0}, "lr"),
        ({"trim_fraction": 0.5}, "trim_fraction"),
        ({"trim_by": "score"}, "trim_by"),
        ({"batch_size": "large"}, "batch_size"),
    ],
)
def test_bad_parameters_are_named(inliers, params, message):
    with pytest.raises(ValueError, match=message):
        VAEAnomalyDetector(**params).fit(inliers)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[1.0, np.nan] * 4]), "NaN"),
        (np.array([[1.0, np.inf] * 4]), "infinity"),
        (np.zeros((3, 5)), "X has 5 features, but VAEAnomalyDetector is expecting 8"),
        (np.array([["a"] * 8]), "could not convert|convert"),
        (np.zeros((0, 8)), "0 sample"),
    ],
)
def test_bad_input_at_scoring_is_a_clear_error(fitted, bad, message):
    for method in (fitted.score_samples, fitted.predict, fitted.decision_function, fitted.transform):
        with pytest.raises(ValueError, match=message):
            method(bad)


def test_one_sample_is_a_clear_error():
    with pytest.raises(ValueError, match="1 sample"):
        VAEAnomalyDetector().fit(np.zeros((1, 3)))


def test_unfitted_detector_says_so():
    with pytest.raises(NotFittedError):
        VAEAnomalyDetector().score_samples(np.zeros((2, 2)))


def test_diverging_training_is_reported():
    X = make_low_rank(200) * 1e30
    with pytest.raises(ValueError, match="training diverged"):
        VAEAnomalyDetector(standardize=False, max_epochs=2, random_state=0).fit(X)
