"""``anomvae report``: one self-contained HTML page about a model and a batch.

:func:`report` (also ``anomvae.report``) writes it: the model and how its
threshold was set, its training curves, and for a batch its counts, shift
test, score histogram over the model's scores, top anomalies with their
explanations, and for image models a grid of the most anomalous images
beside their heatmaps. It needs matplotlib (``pip install 'anomvae[report]'``).

Memory and size are bounded whatever the batch's size: the batch is
streamed as ``anomvae score`` streams it, the histogram keeps a fixed
number of bins (:class:`~anomvae.reporting.histogram.ScoreHistogram`),
and the page holds at most ``top`` rows and ``GRID_ANOMALIES +
GRID_NORMAL`` images. As for ``score --summary-json``, the shift test
holds one float per scored row.
"""

from .. import plots
from ..schema import id_columns_of
from . import html
from .facts import model_facts
from .gather import Findings, baseline_histogram, gather
from .histogram import LINEAR_WIDTH

__all__ = ["report", "render", "Findings"]

# Images the grids show: the most anomalous, and the most normal.
GRID_ANOMALIES, GRID_NORMAL = 8, 4
# Heatmaps' and images' shorter side in the grid, in pixels.
GRID_SIDE = 128
# The widest and tallest a pair (image and heatmap) is drawn: the width of a
# grid cell's content (html.CELL_WIDTH); larger images are scaled down, so
# that a pair neither overflows its cell nor grows the page with the images' size.
PAIR_WIDTH, PAIR_HEIGHT = html.CELL_WIDTH, 2 * html.CELL_WIDTH


def report(model, data=None, output="report.html", *, images=None, threshold=None, top=20, explain_top=3,
           id_columns=(), chunk_size=None, delimiter=",", decimal=".", invalid_rows="error"):
    """Write an HTML report on ``model`` and, if given, the batch ``data``.

    Parameters
    ----------
    model : str or VAEAnomalyDetector
        A model file, or a fitted detector.
    data : str, default=None
        A CSV file (``"-"`` for stdin), Parquet data, or for an image model
        images (a folder, glob, image files, ``.npy``/``.npz``); None for a
        report on the model alone.
    output : str, default="report.html"
        Written atomically; ``"-"`` for standard output.
    images : bool, default=None
        Whether ``data`` is images; None: when the model is an image model.
    threshold : float, default=None
        Anomaly-score cut in nats instead of the model's, as ``score --threshold``.
    top : int, default=20
        Rows in the table of top anomalies.
    explain_top : int, default=3
        Features listed per top row (tables).
    id_columns : sequence of str, default=()
        As for :func:`~anomvae.scoring.score_csv`; () uses those the model
        file records, if any.
    chunk_size : int, default=None
        Rows (10,000) or images (256) read at a time.
    delimiter, decimal : str
        The CSV's format.
    invalid_rows : {"error", "mark"}, default="error"
        Rows that cannot be scored fail, naming them, or are counted as not scored.

    Returns
    -------
    Findings or None
        What the report shows of the batch (``summary`` is what ``score
        --summary-json --summary-top TOP`` reports), None without ``data``.
    """
    plots.require()
    metadata = model_path = None
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from ..persistence import load_with_metadata

        model_path = str(model)
        model, metadata = load_with_metadata(model_path)
    if images is None:
        images = getattr(model, "image_shape_", None) is not None
    if invalid_rows not in ("error", "mark"):
        raise ValueError(f"invalid_rows must be 'error' or 'mark', got {invalid_rows!r}")
    ids = id_columns_of(metadata, id_columns)
    from ..files import atomic_write

    # Opened first, so that an output that cannot be written fails before
    # the batch is scored rather than after.
    with atomic_write(output) as stream:
        findings = None
        if data is not None:
            findings = gather(model, data, images=images, threshold=threshold, n_top=top, n_normal=GRID_NORMAL,
                              explain_top=explain_top, id_columns=ids if not images else (),
                              chunk_size=chunk_size, delimiter=delimiter, decimal=decimal,
                              mark_invalid=invalid_rows == "mark", n_pictured=GRID_ANOMALIES)
        stream.write(render(model, findings, metadata=metadata, model_path=model_path, threshold=threshold))
    return findings


def render(model, findings=None, *, metadata=None, model_path=None, threshold=None):
    """The report's HTML text (see :func:`report`)."""
    cut = model.threshold_ if threshold is None else threshold
    name = f"{model_path or 'model'}" + (f" on {findings.name}" if findings else "")
    sections = [html.model_section(model_facts(model, metadata, model_path, threshold)), _training(model)]
    if findings is None:
        histogram = baseline_histogram(model, cut)
        edges, counts = histogram.used()
        figure = plots.score_histogram(edges, counts, cut, title="the model's anomaly scores",
                                        linear_width=LINEAR_WIDTH)
        sections.append(html.model_histogram_section(plots.png_bytes(figure), histogram))
        return html.page(f"anomvae report: {name}", sections)
    edges, counts = findings.histogram.used()
    figure = plots.score_histogram(edges, counts, cut, title=f"{findings.name} over the model's scores",
                                    linear_width=LINEAR_WIDTH)
    sections.append(html.counts_section(findings, plots.png_bytes(figure)))
    sections.append(html.top_section(findings, findings.summary.threshold))
    if findings.what == "images":
        sections += _image_grids(model, findings)
    return html.page(f"anomvae report: {name}", sections)


def _training(model):
    history = getattr(model, "history_", None)
    if history is None or not len(history):
        return html.training_section(None, history, None)
    figure = plots.training_curves(history, getattr(model, "best_epoch_", None))
    return html.training_section(plots.png_bytes(figure), history, model.best_epoch_)


def _image_grids(model, findings):
    """The most anomalous and the most normal images, each beside its
    heatmap on the model's one colour scale."""
    from ..explain import HeatScale

    scale, threshold = HeatScale.for_model(model), findings.summary.threshold
    note = (f"Each image beside where its score comes from: red where a pixel adds more than {scale.low:.3g} "
            f"nats (clear) up to {scale.high:.3g} nats (full colour), one scale for every image of the model.")
    anomalous = findings.top[:GRID_ANOMALIES]
    # In a batch of few images the lowest-scoring are among the highest:
    # shown once, in the first grid, not again as "the most normal".
    shown = [row["ids"] for row in anomalous]
    normal = [row for row in findings.normal if row["ids"] not in shown]
    grids = []
    if anomalous:
        grids.append(html.grid_section([_pair(model, row, scale, threshold) for row in anomalous],
                                       "The most anomalous images", "images", note))
    if normal:
        grids.append(html.grid_section([_pair(model, row, scale, threshold) for row in normal],
                                       "The most normal images", "normal-images",
                                       "The lowest-scoring images, on the same scale, for comparison."
                                       if anomalous else note))
    return grids


def _pair(model, row, scale, threshold):
    """An image beside its heatmap, as PNG bytes, and its caption."""
    from PIL import Image

    from ..explain import heatmap_image

    shape = model.image_shape_
    # No score line under the heatmap: at the grid's size it would be cut
    # off, and the caption below the pair says it.
    heat = heatmap_image(row["pixels"], row["contributions"], shape, scale=scale, min_side=GRID_SIDE)
    channels, height, width = shape
    factor = max(1, -(-GRID_SIDE // min(height, width)))
    pixels = (row["pixels"].reshape(shape).transpose(1, 2, 0) * 255 + 0.5).clip(0, 255).astype("uint8")
    original = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode="L" if channels == 1 else "RGB")
    original = original.resize((width * factor, height * factor), Image.Resampling.NEAREST).convert("RGB")
    pair = Image.new("RGB", (original.width + 6 + heat.width, max(original.height, heat.height)), "white")
    pair.paste(original, (0, 0))
    pair.paste(heat, (original.width + 6, 0))
    shrink = min(PAIR_WIDTH / pair.width, PAIR_HEIGHT / pair.height)
    if shrink < 1:
        pair = pair.resize((max(1, round(pair.width * shrink)), max(1, round(pair.height * shrink))),
                           Image.Resampling.LANCZOS)
    p_value = "" if row["p_value"] is None else f", p-value {row['p_value']:.3g}"
    flag = "ANOMALY" if row["flagged"] else "normal"
    return html.pil_png(pair), (f"{flag}: {row['ids'].get('path', '')}: {row['anomaly_score']:.4g} nats "
                                f"({'above' if flag == 'ANOMALY' else 'at or below'} {threshold:.4g}){p_value}")
