"""Shared test data, fitted models and helpers.

Fixtures that train a model shared across files are session-scoped, so
each is trained once per run; cheap data fixtures are module-scoped. Test files import the plain
helpers and constants with ``from conftest import ...``.
"""

import ast
import base64
import html.parser
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

import anomvae
from anomvae import VAEAnomalyDetector, cli

# -------------------------------- data and the shared fitted detector


def make_low_rank(n_samples, n_features=8, rank=3, noise=0.1, seed=0, basis_seed=None):
    """Rows near a random ``rank``-dimensional subspace, plus Gaussian noise.

    With ``basis_seed`` the subspace is fixed by it, so that different
    ``seed`` values give independent draws of one distribution.
    """
    rng = np.random.RandomState(seed)
    basis_rng = rng if basis_seed is None else np.random.RandomState(basis_seed)
    basis = basis_rng.normal(size=(rank, n_features))
    return rng.normal(size=(n_samples, rank)) @ basis + noise * rng.normal(size=(n_samples, n_features))


def quiet_fit(estimator, X):
    """``estimator.fit(X)`` without the ConvergenceWarning of short test fits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X)


@pytest.fixture(scope="session")
def normal_rows():
    return make_low_rank(800)


@pytest.fixture(scope="session")
def inliers(normal_rows):
    """Training rows: the first 600 normal rows."""
    return normal_rows[:600]


@pytest.fixture(scope="session")
def test_set(normal_rows):
    """200 held-out normal rows, then 40 planted outliers; labels 1 = outlier."""
    normal = normal_rows[600:]
    rng = np.random.RandomState(1)
    # Off the subspace, but at the inliers' own per-feature scale, so that a
    # detector must learn the correlations rather than the marginal ranges.
    outliers = rng.normal(size=(40, normal.shape[1])) * normal.std(axis=0)
    return np.vstack([normal, outliers]), np.r_[np.zeros(200), np.ones(40)]


@pytest.fixture(scope="session")
def fitted(inliers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAEAnomalyDetector(max_epochs=60, batch_size=32, lr=3e-3, random_state=0).fit(inliers)


def assert_runs_without(args, *modules):
    """Run ``anomvae ARGS`` in a fresh interpreter: it succeeds without
    ever importing any of ``modules``."""
    code = (
        "import sys\nfrom anomvae.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        f"imported = [m for m in {modules!r} if m in sys.modules]\n"
        "assert not imported, f'{imported} imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def model_file_opens(monkeypatch):
    """The paths of every model file opened while the test runs, in order."""
    from anomvae import persistence

    opened = []
    real_open = persistence._open
    monkeypatch.setattr(persistence, "_open", lambda path: opened.append(path) or real_open(path))
    return opened


# ------------------------------------------------- estimator settings


# Short fits for the estimator's tests (test_detector, test_training,
# test_preprocessing, test_calibration, test_schema).
FAST = dict(max_epochs=15, batch_size=32, lr=3e-3, random_state=0)
# Short fits for refit_inliers (test_detector_refit, test_training).
REFIT_FAST = dict(max_epochs=12, kl_warmup=3, batch_size=40, random_state=0)


@pytest.fixture(scope="module")
def contaminated(inliers, test_set):
    """The 600 training inliers with 30 of the test set's kind of outliers among them."""
    X_test, y_test = test_set
    rng = np.random.RandomState(5)
    outliers = rng.normal(size=(30, inliers.shape[1])) * inliers.std(axis=0)
    X = np.vstack([inliers, outliers])
    order = rng.permutation(len(X))
    return X[order], (np.arange(len(X)) >= len(inliers))[order]


# -------------------------------------------- loss terms and networks


@pytest.fixture
def gen():
    """A seeded torch generator (test_elbo, test_model)."""
    return torch.Generator().manual_seed(0)


# --------------------------- rows with a rare count (variance floors)


def with_rare_count(n_samples, seed):
    """Low-rank continuous rows plus a last feature that is a count, 1 in
    about 2% of the rows and 0 in the rest."""
    rng = np.random.RandomState(seed)
    counts = (rng.rand(n_samples) < 0.02).astype(float)
    return np.c_[make_low_rank(n_samples, seed=seed), counts]


@pytest.fixture(scope="module")
def train():
    """600 rows with a rare count (test_preprocessing, test_schema)."""
    return with_rare_count(600, seed=0)


# ------------------------------------------------------- digit images


def digits(digit):
    data = load_digits()
    return (data.data[data.target == digit] / 16.0).astype(np.float32)


@pytest.fixture(scope="session")
def conv_model():
    """A convolutional detector trained on 120 images of the digit 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAEAnomalyDetector(
            architecture="conv", image_shape=(1, 8, 8), likelihood="bernoulli", max_epochs=8,
            batch_size=32, random_state=0,
        ).fit(digits(0)[:120])


@pytest.fixture(scope="session")
def test_images():
    """Held-out images of the digit 0, then 40 of the digit 3."""
    return np.vstack([digits(0)[120:], digits(3)[:40]])


# ----------------------------------------- calibration and monitoring


FEATURES = ["a", "b", "c", "d", "e"]


def draw_rows(n, seed):
    """Independent rows (one per seed) of one fixed distribution: a noisy 2-d subspace.

    The library tests (test_calibration, test_explain, test_results,
    test_scoring) import it as ``draw``."""
    return pd.DataFrame(make_low_rank(n, len(FEATURES), rank=2, noise=0.2, seed=seed, basis_seed=123),
                        columns=FEATURES)


def draw_cli_rows(n, seed):
    """Independent rows (one per seed) of another fixed distribution: a noisy 2-d
    subspace. The command-line tests import it as ``draw``."""
    return pd.DataFrame(make_low_rank(n, len(FEATURES), rank=2, noise=0.2, seed=seed, basis_seed=321),
                        columns=FEATURES)


@pytest.fixture(scope="session")
def detector():
    """A small detector trained on ``draw_rows`` (the library's monitoring tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAEAnomalyDetector(hidden_dims=(16,), max_epochs=30, batch_size=64, lr=3e-3,
                                  random_state=0).fit(draw_rows(500, seed=1))


# ------------------------------------------------ the anomvae command


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
TRAIN = EXAMPLES / "cardio_train.csv"
NEW = EXAMPLES / "cardio_new.csv"
# Short fits: QUICK for the command's CSV models, IMAGE_QUICK for its image models.
QUICK = ["--max-epochs", "5", "--random-state", "0"]
IMAGE_QUICK = ["--max-epochs", "3", "--random-state", "0"]


def invoke(*args, input=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def assert_input_error(result, *fragments):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def score_frame(result):
    assert result.exit_code in (0, 1), result.output
    return pd.read_csv(io.StringIO(result.stdout), dtype={"record_id": str})


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    """A model file that ``anomvae fit`` wrote from the cardio example data."""
    path = tmp_path_factory.mktemp("cli") / "cardio.anomvae"
    result = invoke("fit", TRAIN, "-o", path, "--id-column", "record_id", *QUICK)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def new_frame():
    return pd.read_csv(NEW, dtype={"record_id": str})


def write_digits(folder, digit, count, start=0):
    data = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    images = data.images[data.target == digit][start:start + count]
    for i, image in enumerate(images):
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{digit}_{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def image_model(tmp_path_factory):
    """A model file that ``anomvae fit`` wrote from 60 images of the digit 0."""
    root = tmp_path_factory.mktemp("images")
    train = write_digits(root / "train", 0, 60)
    path = root / "digits.anomvae"
    result = invoke("fit", train, "-o", path, *IMAGE_QUICK)
    assert result.exit_code == 0, result.output
    assert "trained on 60 images of 8x8 grey pixels" in result.stderr
    return path


@pytest.fixture(scope="session")
def image_reference(tmp_path_factory):
    """A folder of 100 images of the digit 0 that ``image_model`` was not trained on."""
    return write_digits(tmp_path_factory.mktemp("reference") / "reference", 0, 100, start=60)


@pytest.fixture(scope="session")
def calibrated_image_model(image_model, image_reference):
    """``image_model`` calibrated by ``anomvae calibrate`` on ``image_reference`` for a false-alarm rate of 0.1."""
    path = image_model.with_name("calibrated.anomvae")
    result = invoke("calibrate", image_model, image_reference, "--fpr", "0.1", "-o", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def new_images(tmp_path):
    """A folder of 5 new images of the digit 0 and 3 of the digit 7."""
    folder = write_digits(tmp_path / "new", 0, 5, start=100)
    write_digits(folder, 7, 3)
    return folder


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """A folder with plain.anomvae (fitted on ``draw_cli_rows``), its calibrated
    copy calibrated.anomvae, reference.csv, and batch.csv with row id07 planted."""
    root = tmp_path_factory.mktemp("monitoring")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        detector = anomvae.VAEAnomalyDetector(hidden_dims=(16,), max_epochs=30, batch_size=64, lr=3e-3,
                                              random_state=0).fit(draw_cli_rows(400, seed=1))
    anomvae.save(detector, root / "plain.anomvae", extra={"id_columns": ["id"]})
    # The reference rows in another column order, with an extra column.
    reference = draw_cli_rows(300, seed=2)[FEATURES[::-1]].assign(note="ok")
    reference.to_csv(root / "reference.csv", index=False)
    batch = draw_cli_rows(60, seed=3)
    batch.loc[7, "c"] += 10 * batch["c"].std()
    batch.insert(0, "id", [f"id{i:02d}" for i in range(60)])
    batch.to_csv(root / "batch.csv", index=False)
    result = invoke("calibrate", root / "plain.anomvae", root / "reference.csv", "--fpr", "0.05",
                    "-o", root / "calibrated.anomvae")
    assert result.exit_code == 0, result.output
    return root


# ------------------------------------------------------------ reports


class ReportPage(html.parser.HTMLParser):
    """An HTML report walked with the standard library's parser: every
    element's tag and attributes, the text of each element with an ``id``,
    and whether the tags are balanced."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.elements, self.texts, self.open, self.errors = [], {}, [], []
        self.feed(text)
        self.close()
        assert not self.open, f"unclosed elements: {self.open}"
        ids = [attrs["id"] for _, attrs in self.elements if "id" in attrs]
        assert len(ids) == len(set(ids)), f"ids used twice: {sorted({i for i in ids if ids.count(i) > 1})}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag not in self.VOID:
            self.open.append((tag, attrs.get("id")))

    def handle_endtag(self, tag):
        assert self.open and self.open[-1][0] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data):
        for _, key in self.open:
            if key:
                self.texts[key] = self.texts.get(key, "") + data

    def by_id(self, key):
        found = [attrs for _, attrs in self.elements if attrs.get("id") == key]
        assert len(found) == 1, (key, len(found))
        return found[0]

    def value(self, key):
        """The number in the ``data-value`` of the element ``key`` (None when empty)."""
        raw = self.by_id(key)["data-value"]
        return None if raw == "" else ast.literal_eval(raw)

    def images(self):
        """Every <img>, decoded with Pillow (each must be a data: PNG)."""
        decoded = []
        for tag, attrs in self.elements:
            if tag == "img":
                prefix = "data:image/png;base64,"
                assert attrs["src"].startswith(prefix), attrs["src"][:40]
                picture = Image.open(io.BytesIO(base64.b64decode(attrs["src"][len(prefix):], validate=True)))
                picture.load()
                decoded.append(picture)
        return decoded

    def top_rows(self):
        """(ids, anomaly score) of each row of the top table, in order."""
        return [(json.loads(attrs["data-ids"]), float(attrs["data-score"]))
                for tag, attrs in self.elements if tag == "tr" and attrs.get("class") == "top-row"]


def assert_offline(text):
    """No script, no URL to fetch: the page opens on an air-gapped host."""
    page = ReportPage(text)
    assert not [tag for tag, _ in page.elements if tag in ("script", "iframe", "object", "embed", "link")]
    for tag, attrs in page.elements:
        for name in ("src", "href"):
            assert not attrs.get(name, "data:").lower().startswith(("http:", "https:", "//")), (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    assert "http://" not in text and "https://" not in text
    return page
