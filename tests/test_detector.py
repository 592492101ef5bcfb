"""Behaviour of VAEAnomalyDetector: detection, contract, determinism, errors."""

import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_low_rank, quiet_fit
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anomvae import VAEAnomalyDetector
from anomvae.model import build_vae

FAST = dict(max_epochs=15, batch_size=32, lr=3e-3, random_state=0)


# ------------------------------------------------------------- detection


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


def test_auto_threshold_is_tukeys_fence_on_training_scores(fitted, inliers):
    anomaly = -fitted.score_samples(inliers)
    q1, q3 = np.percentile(anomaly, [25, 75])
    assert fitted.threshold_ == pytest.approx(q3 + 1.5 * (q3 - q1))


@pytest.mark.parametrize("contamination", [0.05, 0.2])
def test_contamination_sets_training_flag_rate(inliers, contamination):
    detector = quiet_fit(VAEAnomalyDetector(contamination=contamination, **FAST), inliers)
    assert np.mean(detector.predict(inliers) == -1) == pytest.approx(contamination, abs=1 / len(inliers))
    np.testing.assert_array_equal(detector.fit_predict(inliers), detector.predict(inliers))


def test_scores_are_elbo_in_original_units(inliers):
    """Rescaling a feature by c shifts every log-density by -log(c)."""
    detector = quiet_fit(VAEAnomalyDetector(**FAST), inliers)
    scaled = inliers * np.r_[10.0, np.ones(inliers.shape[1] - 1)]
    rescaled = quiet_fit(VAEAnomalyDetector(**FAST), scaled)
    np.testing.assert_allclose(
        rescaled.score_samples(scaled), detector.score_samples(inliers) - np.log(10.0), rtol=1e-4, atol=1e-4
    )


# ---------------------------------------------------------- determinism


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


# ------------------------------------------------------------- training


def test_monitoring_runs_only_when_something_uses_it(inliers):
    common = dict(max_epochs=3, kl_warmup=0, validation_fraction=0.0, random_state=0)
    unmonitored = quiet_fit(VAEAnomalyDetector(n_iter_no_change=None, **common), inliers)
    assert np.isnan(unmonitored.history_.val_loss).all()
    assert np.isfinite(unmonitored.history_.train_loss).all()
    # Early stopping without a validation split watches the training rows.
    watched = quiet_fit(VAEAnomalyDetector(n_iter_no_change=5, **common), inliers)
    assert np.isfinite(watched.history_.val_loss).all()
    # The monitor pass does not touch the weights' training.
    np.testing.assert_array_equal(unmonitored.history_.train_loss, watched.history_.train_loss)


@pytest.mark.parametrize("n_rows, expected", [(90, 16), (500, 28), (3000, 128)])
def test_auto_batch_size_follows_the_training_rows(n_rows, expected):
    X = np.random.default_rng(0).normal(size=(n_rows, 3))
    detector = quiet_fit(VAEAnomalyDetector(max_epochs=1, random_state=0), X)
    n_train = n_rows - int(0.1 * n_rows)
    assert detector.batch_size_ == expected == min(128, max(16, n_train // 16))
    fixed = quiet_fit(VAEAnomalyDetector(batch_size=50, max_epochs=1, random_state=0), X)
    assert fixed.batch_size_ == 50


def test_trained_parameters_own_their_memory(fitted, inliers):
    # Training runs on one flat tensor; afterwards each parameter is its own
    # tensor again, with no gradient left behind, also when training fails.
    params = list(fitted.module_.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)
    assert all(p.grad is None for p in params)
    from anomvae.training import TrainingOptions, train

    module = build_vae(fitted.network_config_)
    with pytest.raises(ValueError, match="diverged"):
        train(module, inliers.astype(np.float32), None, TrainingOptions(max_epochs=3, lr=1e30),
              seeds=(0, 1), device="cpu")
    params = list(module.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)
    assert all(p.grad is None for p in params)


def test_trimming_leaves_out_each_batchs_worst_rows_after_warm_up(inliers):
    common = dict(max_epochs=8, kl_warmup=3, n_iter_no_change=None, batch_size=100, trim_by="loss", random_state=0)
    trimmed = quiet_fit(VAEAnomalyDetector(trim_fraction=0.1, **common), inliers).history_
    # The objective is the mean over the kept rows: during the warm-up it is
    # the mean over every row; after it, the 10% worst rows are left out.
    everyone = np.add(trimmed.train_reconstruction, np.multiply(trimmed.beta, trimmed.train_kl))
    np.testing.assert_allclose(trimmed.train_loss[:3], everyone[:3], rtol=1e-5)
    assert all(t < e - 0.01 * abs(e) for t, e in zip(trimmed.train_loss[3:], everyone[3:]))
    untrimmed = quiet_fit(VAEAnomalyDetector(trim_fraction=0.0, **common), inliers).history_
    np.testing.assert_allclose(
        untrimmed.train_loss,
        np.add(untrimmed.train_reconstruction, np.multiply(untrimmed.beta, untrimmed.train_kl)),
        rtol=1e-5,
    )


def test_batches_too_small_to_trim_train_on_every_row(inliers):
    common = dict(max_epochs=3, kl_warmup=1, batch_size=33, random_state=0)
    a = quiet_fit(VAEAnomalyDetector(trim_fraction=0.03, **common), inliers)
    b = quiet_fit(VAEAnomalyDetector(trim_fraction=0.0, **common), inliers)
    assert a.history_.train_loss == b.history_.train_loss


def test_rows_kept_ranks_by_the_chosen_term():
    from anomvae.training import rows_kept as _rows_kept

    # Row 0 has the highest loss, row 3 the largest KL term.
    per_row = torch.tensor([9.0, 1.0, 2.0, 3.0, 2.0])
    kl = torch.tensor([0.5, 0.1, 0.2, 4.0, 0.3])
    assert _rows_kept(per_row, kl, 4, "loss").tolist() == [False, True, True, True, True]
    assert _rows_kept(per_row, kl, 4, "kl").tolist() == [True, True, True, False, True]
    # Ties at the cut stay in: asked for 2 rows, it keeps the two that share the 2nd-lowest loss.
    assert _rows_kept(per_row, kl, 2, "loss").tolist() == [False, True, True, False, True]


def test_trim_by_kl_leaves_out_each_batchs_largest_kl_rows(inliers, monkeypatch):
    from anomvae import training as module

    real = module.rows_kept
    seen = []

    def spy(per_row, kl, n_kept, trim_by):
        kept = real(per_row, kl, n_kept, trim_by)
        seen.append((kl.detach().clone(), per_row.detach().clone(), kept, trim_by))
        return kept

    monkeypatch.setattr(module, "rows_kept", spy)
    common = dict(max_epochs=4, kl_warmup=2, n_iter_no_change=None, validation_fraction=0.0,
                  batch_size=100, trim_fraction=0.1, random_state=0)
    by_kl = quiet_fit(VAEAnomalyDetector(trim_by="kl", **common), inliers)
    # Trimming starts after the warm-up: epochs 3 and 4, each batch of 100 loses 10 rows.
    assert len(seen) == 2 * -(-len(inliers) // 100) and all(t == "kl" for *_, t in seen)
    for kl, per_row, kept, _ in seen:
        n = kl.shape[0]
        assert int(kept.sum()) == n - int(0.1 * n)
        assert kl[kept].max() <= kl[~kept].min()
    # The spied terms are the training loop's own: per epoch, their totals
    # give the recorded mean KL term and the trimmed objective.
    per_epoch = len(seen) // 2
    for epoch, calls in ((2, seen[:per_epoch]), (3, seen[per_epoch:])):
        kl_total = sum(float(kl.sum()) for kl, *_ in calls)
        loss_total = sum(float(per_row[kept].mean()) * len(per_row) for _, per_row, kept, _ in calls)
        assert kl_total / len(inliers) == pytest.approx(by_kl.history_.train_kl[epoch], rel=1e-5)
        assert loss_total / len(inliers) == pytest.approx(by_kl.history_.train_loss[epoch], rel=1e-5)
    # In some batch the rows worst by loss are not those worst by KL, so the fits differ.
    assert any(not torch.equal(kept, real(per_row, kl, int(kept.sum()), "loss")) for kl, per_row, kept, _ in seen)
    by_loss = quiet_fit(VAEAnomalyDetector(trim_by="loss", **common), inliers)
    assert by_kl.history_.train_loss[:2] == by_loss.history_.train_loss[:2]
    assert by_kl.history_.train_loss[2:] != by_loss.history_.train_loss[2:]


def test_adam_falls_back_when_the_fused_kernel_is_missing(monkeypatch):
    from anomvae import training as module

    real = torch.optim.Adam
    calls = []

    def adam(params, **options):
        calls.append(options)
        if options.get("fused"):
            raise RuntimeError("fused=True requires all the params to be on a supported device")
        return real(params, **options)

    monkeypatch.setattr(module.torch.optim, "Adam", adam)
    optimiser = module.adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3, weight_decay=0.0)
    assert isinstance(optimiser, real) and optimiser.defaults["foreach"] is True
    assert [c.get("fused") for c in calls] == [True, None]


def test_history_records_every_epoch(fitted):
    history = fitted.history_.to_dict()
    assert set(history) == {
        "epoch", "beta", "train_loss", "train_reconstruction", "train_kl",
        "val_loss", "val_reconstruction", "val_kl",
    }
    assert all(len(values) == fitted.n_epochs_ for values in history.values())
    assert history["epoch"] == list(range(1, fitted.n_epochs_ + 1))
    # Warm-up: beta ramps to its final value over kl_warmup epochs.
    np.testing.assert_allclose(history["beta"][:10], np.arange(1, 11) / 10)
    assert history["beta"][-1] == 1.0
    np.testing.assert_allclose(
        history["val_loss"], np.add(history["val_reconstruction"], history["val_kl"]), rtol=1e-6
    )
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_beta_changes_what_is_learned(inliers):
    kwargs = {**FAST, "kl_warmup": 0}
    free = quiet_fit(VAEAnomalyDetector(beta=0.0, **kwargs), inliers)
    regular = quiet_fit(VAEAnomalyDetector(beta=1.0, **kwargs), inliers)
    # Without the KL penalty the posterior drifts far from the prior.
    assert free.history_.train_kl[-1] > 2 * regular.history_.train_kl[-1]
    np.testing.assert_allclose(free.history_.train_loss, free.history_.train_reconstruction, rtol=1e-5)


def test_early_stopping_restores_the_best_epoch(inliers, test_set):
    X, _ = test_set
    stopped = VAEAnomalyDetector(**{**FAST, "max_epochs": 200, "n_iter_no_change": 3, "tol": 0.05}).fit(inliers)
    assert stopped.n_epochs_ < 200
    post_warmup = stopped.history_.val_loss[9:]
    assert stopped.best_epoch_ == 10 + int(np.argmin(post_warmup))
    # Training is deterministic, so the weights kept are those of a model
    # trained for exactly best_epoch_ epochs.
    replay = VAEAnomalyDetector(
        **{**FAST, "max_epochs": stopped.best_epoch_, "n_iter_no_change": None}
    ).fit(inliers)
    np.testing.assert_array_equal(stopped.score_samples(X), replay.score_samples(X))


def test_warns_when_max_epochs_cuts_training_short(inliers):
    with pytest.warns(ConvergenceWarning, match="max_epochs=2"):
        VAEAnomalyDetector(**{**FAST, "max_epochs": 2}).fit(inliers)


@pytest.mark.parametrize("n_samples", [2, 5, 40])
def test_fits_when_fewer_rows_than_a_batch(n_samples):
    X = make_low_rank(n_samples)
    detector = quiet_fit(VAEAnomalyDetector(max_epochs=3, batch_size=128, random_state=0), X)
    assert np.isfinite(detector.score_samples(X)).all()
    assert len(detector.history_.train_loss) == 3


def test_verbose_prints_each_epoch(inliers, capsys):
    quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 3, "verbose": 1}), inliers)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3: loss")


def test_constant_feature_is_scored_finitely(inliers):
    X = np.column_stack([inliers, np.full(len(inliers), 7.0)])
    detector = quiet_fit(VAEAnomalyDetector(**FAST), X)
    assert detector.scale_[-1] == 1.0
    shifted = X[:5].copy()
    shifted[:, -1] = 8.0
    scores = detector.score_samples(np.vstack([X[:5], shifted]))
    assert np.isfinite(scores).all()
    assert (scores[5:] < scores[:5] - 0.1).all()


@pytest.mark.parametrize("unit", [1.0, 1e-13])
def test_a_feature_in_tiny_units_is_scaled_not_dropped(inliers, unit):
    # The same data, one feature written in units 1e13 times smaller: its
    # spread is real, and a row 100 spreads out on it must still stand out.
    X = inliers.copy()
    X[:, 0] = (1 + 0.1 * np.random.RandomState(3).normal(size=len(X))) * unit
    detector = quiet_fit(VAEAnomalyDetector(**FAST), X)
    assert detector.scale_[0] == pytest.approx(X[:, 0].std(), rel=1e-9)
    far = X[:3].copy()
    far[:, 0] = 100 * unit
    assert (detector.predict(far) == -1).all()


def test_rounding_noise_on_a_constant_feature_is_not_a_spread(inliers):
    X = np.column_stack([inliers, np.full(len(inliers), 0.1) * 3])  # 0.30000000000000004 everywhere
    X[::2, -1] = 0.3  # and 0.3: differences of one unit in the last place
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 2}), X)
    assert detector.scale_[-1] == 1.0


@pytest.mark.parametrize("value", [3.5e38, 1e300])
def test_values_beyond_float32_are_an_error_not_a_nan_score(inliers, value):
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 2}), inliers)
    row = inliers[:1].copy()
    row[0, 2] = value
    with pytest.raises(ValueError, match=r"X\[0, 2\] = .* too large for the model"):
        detector.score_samples(row)
    with pytest.raises(ValueError, match=rf"X\[{len(inliers)}, 2\] = .* too large for the model"):
        VAEAnomalyDetector(**FAST).fit(np.vstack([inliers, row]))


def test_bernoulli_likelihood_on_binary_data():
    rng = np.random.RandomState(0)
    prototypes = rng.rand(2, 12) > 0.5
    X = prototypes[rng.randint(2, size=400)] ^ (rng.rand(400, 12) < 0.05)
    noise = (rng.rand(20, 12) > 0.5).astype(float)
    detector = quiet_fit(VAEAnomalyDetector(likelihood="bernoulli", **FAST), X.astype(float))
    np.testing.assert_array_equal(detector.scale_, 1.0)
    y = np.r_[np.zeros(100), np.ones(20)]
    assert roc_auc_score(y, -detector.score_samples(np.vstack([X[:100], noise]))) > 0.9
    assert ((detector.sample(10, random_state=0) >= 0) & (detector.sample(10) <= 1)).all()
    assert set(np.unique(detector.sample(10, noise=True))) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"needs values in \[0, 1\]; column 3"):
        detector.score_samples(np.where(np.arange(12) == 3, 2.0, 0.0)[None, :])


# ------------------------------------------------------ latent space


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


# ------------------------------------------------------------ ecosystem


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


# ----------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params, message",
    [
        ({"device": "tpu-9000"}, "not a torch device"),
        ({"hidden_dims": (8, 0)}, "positive integers"),
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
