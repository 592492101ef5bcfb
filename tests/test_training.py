"""anomvae.training: the training loop (trimming, rows_kept, Adam, early stopping,
the KL warm-up and beta, batch sizes, the recorded history) and the
refit_inliers="auto" rule of training.refit_rows."""

import inspect
import logging

import numpy as np
import pytest
import torch
from conftest import FAST, REFIT_FAST, make_low_rank, quiet_fit
from sklearn.exceptions import ConvergenceWarning

from anomvae import VAEAnomalyDetector
from anomvae.config import NetworkConfig
from anomvae.model import build_vae
from anomvae.training import EarlyStopping, TrainingOptions, fit_network, train

# ------------------------------------------------------ training loop


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


# ----------------------------------- when refit_inliers="auto" refits


@pytest.mark.parametrize("batch_size, refits", [(33, False), (34, True)])
def test_auto_refits_only_when_batches_are_trimmed(contaminated, batch_size, refits):
    X, _ = contaminated
    params = {**REFIT_FAST, "batch_size": batch_size, "max_epochs": 6}
    auto = quiet_fit(VAEAnomalyDetector(refit_inliers="auto", **params), X)
    assert (auto.n_refit_excluded_ is not None) == refits
    expected = quiet_fit(VAEAnomalyDetector(refit_inliers=refits, **params), X)
    np.testing.assert_array_equal(auto.score_samples(X), expected.score_samples(X))


def test_auto_does_not_refit_when_training_ends_within_the_warm_up(contaminated):
    # Trimming starts after kl_warmup (3 in REFIT_FAST) epochs: with 3 epochs no row is ever trimmed.
    X, _ = contaminated
    params = {**REFIT_FAST, "batch_size": 34}
    within = quiet_fit(VAEAnomalyDetector(refit_inliers="auto", **{**params, "max_epochs": 3}), X)
    past = quiet_fit(VAEAnomalyDetector(refit_inliers="auto", **{**params, "max_epochs": 4}), X)
    assert within.n_refit_excluded_ is None and past.n_refit_excluded_ is not None


@pytest.mark.parametrize("n_rows, refits", [(30, False), (40, True)])
def test_auto_reads_the_rows_a_batch_really_holds(inliers, n_rows, refits):
    # A batch_size larger than the data gives one batch of the 27 (or 36)
    # rows left after the validation split: 3% of 27 trims no row, of 36 one.
    params = {**REFIT_FAST, "batch_size": 1000, "max_epochs": 6}
    auto = quiet_fit(VAEAnomalyDetector(refit_inliers="auto", **params), inliers[:n_rows])
    assert auto.batch_size_ == 1000 and (auto.n_refit_excluded_ is not None) == refits


def test_training_options_are_the_estimators_parameters_with_their_defaults():
    defaults = {name: p.default for name, p in inspect.signature(VAEAnomalyDetector).parameters.items()}
    options = TrainingOptions()
    for name in TrainingOptions.__dataclass_fields__:
        assert getattr(options, name) == defaults[name], name
    assert TrainingOptions.from_params(VAEAnomalyDetector(lr=0.5).get_params()).lr == 0.5


def test_early_stopping_keeps_named_state():
    module = torch.nn.Linear(1, 1)
    stopping = EarlyStopping(patience=2, tol=0.1)
    for epoch, loss in enumerate([10.0, 9.5, 9.4, 9.3], start=1):
        with torch.no_grad():
            module.weight.fill_(epoch)
        stopped = stopping.update(epoch, loss, module)
    # 9.5 and 9.4 improve by less than 10%: stale after epochs 2 and 3, so it stops there;
    # the weights kept are those of the lowest loss seen, improvement large or small.
    assert stopping.stale == 3 and stopping.stopped and stopped
    assert stopping.best_loss == 9.3 and stopping.best_epoch == 4
    with torch.no_grad():
        module.weight.fill_(0.0)
    assert stopping.restore_best(module) and module.weight.item() == 4.0
    assert not EarlyStopping(patience=2, tol=0.1).restore_best(module)


def test_the_loop_runs_without_the_estimator(inliers):
    config = NetworkConfig("mlp", inliers.shape[1], (16,), 2, "gaussian", 4, (1e-3,) * inliers.shape[1])
    torch.manual_seed(0)
    module = build_vae(config)
    seen = []
    result = train(module, inliers.astype(np.float32), None, TrainingOptions(max_epochs=5, kl_warmup=2),
                   seeds=(1, 2), device="cpu", on_epoch=lambda record, net: seen.append((record.epoch, net)))
    assert result.n_epochs == 5 and result.history.epoch == [1, 2, 3, 4, 5] and not result.converged
    assert [epoch for epoch, _ in seen] == [1, 2, 3, 4, 5] and all(net is module for _, net in seen)
    # Monitored on the training rows, as no validation rows were given.
    assert np.isfinite(result.history.val_loss).all() and result.batch_size == 37


def test_fit_network_is_the_estimators_fit(inliers):
    detector = VAEAnomalyDetector(max_epochs=4, random_state=3).fit(inliers)
    net = fit_network(inliers, TrainingOptions.from_params(detector.get_params()), np.random.RandomState(3), "cpu")
    assert net.config == detector.network_config_ and net.training.history == detector.history_
    for name, value in net.module.state_dict().items():
        assert torch.equal(value, detector.module_.state_dict()[name]), name
    np.testing.assert_array_equal(net.standardizer.scale, detector.scale_)


def test_fit_network_leaves_torchs_global_generator_alone(inliers):
    before = torch.random.get_rng_state()
    fit_network(inliers[:50], TrainingOptions(max_epochs=1), np.random.RandomState(0), "cpu")
    assert torch.equal(before, torch.random.get_rng_state())


def test_train_refuses_to_go_on_after_divergence(inliers):
    module = build_vae(NetworkConfig("mlp", 8, (8,), 2, "gaussian"))
    with pytest.raises(ValueError, match="training diverged at epoch 1"):
        train(module, inliers.astype(np.float32) * 1e30, None, TrainingOptions(max_epochs=2), seeds=(0, 0),
              device="cpu")


def test_each_epoch_is_logged_with_the_patience_left(inliers, caplog):
    caplog.set_level(logging.DEBUG, logger="anomvae")
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 100, "n_iter_no_change": 4, "tol": 0.5,
                                               "kl_warmup": 3}), inliers)
    logged = [r for r in caplog.records if hasattr(r, "anomvae_epoch")]
    assert [r.anomvae_epoch.epoch for r in logged] == list(range(1, detector.n_epochs_ + 1))
    left = [r.anomvae_patience_left for r in logged]
    # Full patience through the warm-up; early stopping ends training at 0.
    assert left[:3] == [4, 4, 4] and left[-1] == 0 and 0 not in left[:-1]
    assert all(b in (a - 1, 4) for a, b in zip(left, left[1:]))
    caplog.clear()
    quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 2, "n_iter_no_change": None}), inliers)
    assert [r.anomvae_patience_left for r in caplog.records if hasattr(r, "anomvae_epoch")] == [None, None]
