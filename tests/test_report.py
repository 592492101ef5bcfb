"""anomvae.reporting: the HTML report from Python, its histogram and its bounds."""

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import FEATURES, ReportPage, assert_offline, draw_rows, quiet_fit
from sklearn.exceptions import ConvergenceWarning

import anomvae
from anomvae.errors import DataError
from anomvae.reporting.histogram import ScoreHistogram
from anomvae.scoring import score_csv

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A CSV batch of 300 rows with ids, two planted outliers and a hostile id."""
    frame = draw_rows(300, seed=7)
    frame.loc[3, "a"] += 25
    frame.loc[8, "c"] -= 25
    frame.insert(0, "id", [f"r{i}" for i in range(300)])
    frame.loc[3, "id"] = "<script>alert(1)</script>"
    path = tmp_path_factory.mktemp("report") / "batch.csv"
    frame.to_csv(path, index=False)
    return path


def test_histogram_keeps_exact_counts_while_it_coarsens():
    rng = np.random.RandomState(0)
    baseline = rng.normal(20, 2, size=500)
    histogram = ScoreHistogram(baseline)
    histogram.add("training", baseline)
    width = histogram.width
    chunks = [rng.normal(20, 2, size=1000), np.array([5e3, -40.0, np.inf, np.nan]), rng.normal(25, 3, size=10)]
    for chunk in chunks:
        histogram.add("batch", chunk)
    assert histogram.width > width  # the outliers coarsened the bins
    assert histogram.counts["batch"].sum() == 1012 and histogram.infinite["batch"] == 2
    assert histogram.counts["training"].sum() == 500
    edges, counts = histogram.used()
    assert counts["batch"].sum() == 1012 and len(edges) == len(counts["batch"]) + 1
    assert np.all(np.diff(edges) > 0) and edges[0] <= -40 and edges[-1] > 5e3
    # Every finite score lies in the bin that counts it.
    one = ScoreHistogram([0.0, 1.0])
    one.add("batch", [0.5, 300.0])
    edges, counts = one.used(max_bins=1000)
    for score in (0.5, 300.0):
        assert counts["batch"][np.searchsorted(edges, score, side="right") - 1] >= 1


def test_report_numbers_are_those_of_the_scorer(detector, batch, tmp_path):
    out = tmp_path / "report.html"
    findings = anomvae.report(detector, str(batch), out, id_columns=["id"], top=5)
    expected = score_csv(detector, str(batch), io.StringIO(), id_columns=["id"], summary_top=5)
    page = assert_offline(out.read_text())
    for key in ("rows", "rows_scored", "rows_not_scored", "anomalies", "threshold", "max_score"):
        assert page.value("batch-" + key.replace("_", "-")) == getattr(expected, key), key
    assert page.value("shift-statistic") == expected.score_shift.ks_statistic
    assert page.value("shift-p-value") == expected.score_shift.ks_p_value
    assert findings.summary.to_dict() == expected.to_dict()
    assert page.top_rows() == [({"id": row["id"]}, row["anomaly_score"]) for row in expected.top_anomalies]
    assert len(page.images()) == 2  # training curves, histogram
    assert {"model", "training", "batch", "top"} <= {attrs.get("id") for tag, attrs in page.elements
                                                      if tag == "section"}


def test_every_user_string_is_escaped(detector, batch, tmp_path):
    text = anomvae.report(detector, str(batch), tmp_path / "r.html", id_columns=["id"]) and \
        (tmp_path / "r.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = ReportPage(text)
    assert {"id": "<script>alert(1)</script>"} in [ids for ids, _ in page.top_rows()[:2]]


def test_top_rows_list_their_features(detector, batch, tmp_path):
    findings = anomvae.report(detector, str(batch), tmp_path / "r.html", id_columns=["id"], top=3,
                              explain_top=2)
    first = next(row for row in findings.top if row["ids"] == {"id": "<script>alert(1)</script>"})
    assert first["flagged"]
    assert [e["feature"] for e in first["explanation"]][0] == "a"
    assert first["explanation"][0]["observed"] > first["explanation"][0]["reconstructed"] + 10
    assert first["p_value"] is None  # the detector is not calibrated


def test_calibrated_model_shows_p_values_and_its_rule(detector, batch, tmp_path):
    calibrated = anomvae.load(_saved(detector, tmp_path))
    calibrated.calibrate(draw_rows(200, seed=11), fpr=0.05)
    findings = anomvae.report(calibrated, str(batch), tmp_path / "r.html", top=3)
    page = ReportPage((tmp_path / "r.html").read_text())
    assert page.value("calibration-fpr") == 0.05 and page.value("batch-calibration-fpr") == 0.05
    assert "calibrated on 200 reference rows" in page.texts["threshold-rule"]
    assert all(0 < row["p_value"] <= 1 for row in findings.top)
    assert page.by_id("shift")["data-baseline"] == "calibration"


def _saved(detector, tmp_path):
    path = tmp_path / "m.anomvae"
    anomvae.save(detector, path)
    return path


def test_model_only_report(detector, tmp_path):
    assert anomvae.report(_saved(detector, tmp_path), output=tmp_path / "m.html") is None
    page = assert_offline((tmp_path / "m.html").read_text())
    sections = {attrs.get("id") for tag, attrs in page.elements if tag == "section"}
    assert sections == {"model", "training", "scores"}
    assert page.value("threshold") == detector.threshold_ and page.value("features") == len(FEATURES)
    assert len(page.images()) == 2


def test_model_fitted_without_validation_and_hostile_feature_names(tmp_path):
    rows = draw_rows(200, seed=1).rename(columns={"a": "<img src=x onerror=alert(1)>"})
    model = quiet_fit(anomvae.VAEAnomalyDetector(hidden_dims=(8,), max_epochs=4, validation_fraction=0.0,
                                                 n_iter_no_change=None, random_state=0), rows)
    rows.to_csv(tmp_path / "batch.csv", index=False)
    anomvae.report(model, str(tmp_path / "batch.csv"), tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    page = assert_offline(text)
    assert "fitted without validation rows" in page.texts["training"]
    # Escaped in the page, so the parser reads it back as text.
    assert "<img src=x" not in text and "<img src=x onerror=alert(1)>" in page.texts["features"]


@pytest.mark.parametrize("name", ["format1-gaussian.anomvae", "format2-gaussian.anomvae"])
def test_old_model_files(name, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        anomvae.report(DATA / name, output=tmp_path / "r.html")
    page = ReportPage((tmp_path / "r.html").read_text())
    assert "not recorded" in page.texts["latent"] or "units active" in page.texts["latent"]
    assert page.images()


def test_report_size_does_not_grow_with_the_batch(detector, tmp_path):
    sizes = {}
    for n in (2_000, 20_000):
        frame = draw_rows(n, seed=n)
        frame.to_csv(tmp_path / f"{n}.csv", index=False)
        anomvae.report(detector, str(tmp_path / f"{n}.csv"), tmp_path / f"{n}.html", chunk_size=3_000)
        sizes[n] = (tmp_path / f"{n}.html").stat().st_size
    assert sizes[20_000] < 1.5 * sizes[2_000], sizes


def test_import_anomvae_loads_neither_torch_nor_matplotlib():
    code = ("import sys, anomvae\nassert callable(anomvae.report)\n"
            "assert not {'torch', 'matplotlib'} & set(sys.modules), sorted({'torch', 'matplotlib'} & set(sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_report_uses_no_pyplot(detector, tmp_path):
    path = _saved(detector, tmp_path)
    code = (f"import sys, anomvae\nanomvae.report({str(path)!r}, output={str(tmp_path / 'r.html')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_missing_matplotlib_names_the_extra(detector, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'anomvae\[report\]'"):
        anomvae.report(detector, output=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_a_failure_leaves_no_file(detector, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c,d,e\n1,2,3,4,\n")
    with pytest.raises(DataError, match="bad.csv"):
        anomvae.report(detector, str(bad), tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == [bad]


def test_image_report_has_both_grids(conv_model, test_images, tmp_path):
    np.save(tmp_path / "batch.npy", test_images.reshape(-1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        findings = anomvae.report(conv_model, str(tmp_path / "batch.npy"), tmp_path / "r.html", top=6)
    page = assert_offline((tmp_path / "r.html").read_text())
    sections = {attrs.get("id") for tag, attrs in page.elements if tag == "section"}
    assert {"images", "normal-images"} <= sections
    # Curves, histogram, 6 anomalies beside their heatmaps and 4 normal ones.
    assert len(page.images()) == 2 + 6 + 4
    assert findings.summary.rows == len(test_images)
    assert findings.normal[0]["anomaly_score"] <= findings.top[-1]["anomaly_score"]


def test_an_image_report_keeps_pixels_only_of_the_images_it_shows(conv_model, test_images, tmp_path):
    # A long --top table of images must not hold every listed image in memory.
    from anomvae.reporting import GRID_ANOMALIES

    np.save(tmp_path / "batch.npy", test_images.reshape(-1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        findings = anomvae.report(conv_model, str(tmp_path / "batch.npy"), tmp_path / "r.html", top=30)
    assert len(findings.top) == min(30, len(test_images)) > GRID_ANOMALIES
    assert [("pixels" in row) for row in findings.top] == [i < GRID_ANOMALIES for i in range(len(findings.top))]
    scores = [row["anomaly_score"] for row in findings.top]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("name", [r"x$\b$.csv", "y$^$.csv", "a$b$_c.csv"])
def test_file_names_with_dollars_are_plain_text_in_the_figures(detector, tmp_path, name):
    # matplotlib reads text between two "$" as mathtext: a file name must not be.
    path = tmp_path / name
    draw_rows(30, seed=3).to_csv(path, index=False)
    anomvae.report(detector, str(path), tmp_path / "r.html")
    from anomvae import plots

    figure = plots.score_histogram(np.array([1.0, 2.0]), {"batch": np.array([3])}, 1.5, title=str(path))
    assert figure.axes[0].title.get_text() == str(path) and not figure.axes[0].title.get_parse_math()
    assert_offline((tmp_path / "r.html").read_text())


def test_large_images_fit_their_grid_cells(tmp_path):
    # 96x96 RGB: each image and its heatmap at 192 pixels, a pair wider than a cell.
    rng = np.random.RandomState(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = anomvae.VAEAnomalyDetector(architecture="conv", image_shape=(3, 96, 96), max_epochs=1, batch_size=8,
                                           random_state=0).fit(rng.rand(16, 3 * 96 * 96))
    np.save(tmp_path / "batch.npy", rng.rand(12, 96, 96, 3))
    anomvae.report(model, str(tmp_path / "batch.npy"), tmp_path / "r.html")
    pairs = ReportPage((tmp_path / "r.html").read_text()).images()[2:]
    assert len(pairs) == 12 and all(p.width <= 328 for p in pairs), [p.size for p in pairs]


def test_a_batch_with_no_scored_row_says_so(detector, tmp_path):
    frame = draw_rows(4, seed=5)
    frame["b"] = np.nan
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    findings = anomvae.report(detector, str(tmp_path / "gaps.csv"), tmp_path / "r.html", invalid_rows="mark")
    page = ReportPage((tmp_path / "r.html").read_text())
    assert findings.summary.rows_not_scored == 4 and page.value("batch-rows-not-scored") == 4
    # The model has baseline scores: the test is missing for want of the batch's.
    assert detector.training_scores_ is not None and "no rows could be scored" in page.texts["shift"]
    assert "No rows could be scored" in page.texts["top"]


def test_top_zero_lists_no_row_but_says_why(detector, batch, tmp_path):
    anomvae.report(detector, str(batch), tmp_path / "r.html", top=0)
    page = ReportPage((tmp_path / "r.html").read_text())
    assert page.value("batch-rows-scored") == 300 and not page.top_rows()
    assert "could be scored" not in page.texts["top"] and "top 0" in page.texts["top"]


def test_an_output_that_cannot_be_written_fails_before_scoring(detector, tmp_path, monkeypatch):
    from anomvae.errors import OutputError

    gather = sys.modules["anomvae.reporting.gather"]  # the module; the package exports a function of its name

    def never(*args, **kwargs):
        raise AssertionError("the batch was scored")

    monkeypatch.setattr(gather, "score_csv", never)
    (tmp_path / "batch.csv").write_text("a,b,c,d,e\n1,2,3,4,5\n")
    with pytest.raises(OutputError, match="cannot write"):
        anomvae.report(detector, str(tmp_path / "batch.csv"), tmp_path / "missing" / "r.html")


def test_a_one_epoch_model_draws_its_curves():
    from anomvae import plots

    model = quiet_fit(anomvae.VAEAnomalyDetector(hidden_dims=(8,), max_epochs=1, random_state=0), draw_rows(100, 2))
    figure = plots.training_curves(model.history_, model.best_epoch_)
    lines = [line for line in figure.axes[0].lines if line.get_label() in ("training", "validation")]
    # One point per curve: without a marker, matplotlib draws nothing of it.
    assert len(lines) == 2 and all(len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", "")
                                   for line in lines)


@pytest.mark.parametrize("top", [20, 0])
def test_a_small_image_batch_shows_each_image_once(conv_model, test_images, tmp_path, top):
    # 5 images: the 4 lowest-scoring are also among the 8 highest.
    np.save(tmp_path / "batch.npy", test_images[:5].reshape(-1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        anomvae.report(conv_model, str(tmp_path / "batch.npy"), tmp_path / "r.html", top=top)
    page = ReportPage((tmp_path / "r.html").read_text())
    captions = [attrs["alt"] for tag, attrs in page.elements if tag == "img" and attrs.get("class") == ""]
    paths = [caption.split(": ")[1] for caption in captions]
    assert sorted(paths) == sorted(set(paths)) and len(paths) == (5 if top else 4)
    sections = {attrs.get("id") for tag, attrs in page.elements if tag == "section"}
    assert ("images" in sections) == bool(top)  # no empty grid
