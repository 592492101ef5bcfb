"""The report as one HTML page that opens offline.

No JavaScript and no external resource: styles are inline, figures are
``data:image/png;base64`` URIs, and a Content-Security-Policy forbids
anything else, so the page shows the same on an air-gapped host. Every
string that comes from the data or the user (ids, feature names, paths) is
escaped. Numbers a program may read back carry ``id`` and ``data-value``
attributes holding their exact ``repr``.
"""

import base64
import html
import io
import json
import math

import numpy as np

from .histogram import LINEAR_WIDTH

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.6em}table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .6em;
text-align:left;vertical-align:top;border-bottom:1px solid #eee}th{background:#f6f6f6}td.num{text-align:right;
font-variant-numeric:tabular-nums}.flag{color:#b2182b;font-weight:600}.ok{color:#2a6e2a}.note{color:#666;
font-size:.85em}img.figure{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:12px}.cell{border:1px solid #ddd;
padding:6px;font-size:.8em;max-width:340px;overflow-wrap:anywhere}.cell img{image-rendering:pixelated;max-width:100%}
ul.why{margin:0;padding-left:1.1em}.shifted{background:#fde0dd;padding:.4em .6em}
"""
# A grid cell's content width, in CSS pixels: .cell's max-width less its padding.
CELL_WIDTH = 340 - 2 * 6
# Forbids scripts, remote images, fonts, frames and requests of any kind.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value):
    """``value`` as HTML text, quotes escaped (safe in attributes too)."""
    return html.escape(str(value), quote=True)


def number(value, digits=6):
    """``value`` for people: up to ``digits`` significant digits; "n/a" for None."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    value = float(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def datum(key, value, text=None, tag="td", cls="num"):
    """An element holding a number: ``id=key``, ``data-value`` its repr."""
    raw = "" if value is None else repr(value.item() if isinstance(value, np.generic) else value)
    return (f'<{tag} id="{esc(key)}" class="{cls}" data-value="{esc(raw)}">'
            f"{esc(number(value) if text is None else text)}</{tag}>")


def png_uri(data):
    """PNG bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def pil_png(picture):
    """A PIL image as PNG bytes."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def img(data, alt, cls="figure"):
    return f'<img class="{cls}" alt="{esc(alt)}" src="{png_uri(data)}">'


def page(title, sections):
    """The whole document: ``sections`` are HTML fragments."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n")


def model_section(facts):
    rows = "".join(f"<tr><th>{esc(f.label)}</th>" + (datum(f.key, f.value, f.text, cls="") if f.value is not None
                                                      else f'<td id="{esc(f.key)}">{esc(f.text)}</td>') + "</tr>"
                   for f in facts)
    return f'<section id="model">\n<h2>Model</h2>\n<table>{rows}</table>\n</section>'


def training_section(curves_png, history, best_epoch):
    if curves_png is None:
        return ('<section id="training">\n<h2>Training</h2>\n<p class="note">No training history recorded '
                "in this model file.</p>\n</section>")
    validation = "" if any(v == v for v in history.val_loss) else \
        " No validation loss: the model was fitted without validation rows."
    return ('<section id="training">\n<h2>Training</h2>\n'
            + img(curves_png, "training and validation loss, reconstruction and KL per epoch") +
            f'\n<p class="note">Per epoch, in nats per row; the dotted line marks the best epoch '
            f"({esc(best_epoch)}), whose weights the model kept; shaded: the KL warm-up.{validation}</p>\n"
            "</section>")


def counts_section(findings, histogram_png):
    s, what = findings.summary, findings.what
    unscored = "" if not s.rows_not_scored else \
        f'<p class="flag">{s.rows_not_scored:,} {what} could not be scored (empty, NaN or infinite values, ' \
        "or unreadable): they are counted here and not in the histogram.</p>"
    rows = [("rows", f"{what} read", s.rows), ("rows-scored", f"{what} scored", s.rows_scored),
            ("rows-not-scored", f"{what} not scored", s.rows_not_scored), ("anomalies", "flagged", s.anomalies),
            ("threshold", "threshold (nats)", s.threshold), ("max-score", "highest score (nats)", s.max_score),
            ("calibration-fpr", "calibration rate", s.calibration_fpr)]
    table = "".join(f"<tr><th>{esc(label)}</th>{datum('batch-' + key, value)}</tr>" for key, label, value in rows)
    return (f'<section id="batch">\n<h2>Batch: {esc(findings.name)}</h2>\n<table>{table}</table>\n{unscored}\n'
            + shift_paragraph(s.score_shift, what, s.rows_scored) + "\n"
            + img(histogram_png, "histogram of the batch's anomaly scores over the model's scores") +
            f'\n<p class="note">{_histogram_note(findings.histogram)}</p>\n</section>')


def shift_paragraph(shift, what, rows_scored=None):
    if shift is None:
        why = f"no {what} could be scored" if rows_scored == 0 else "the model keeps no baseline scores"
        return f'<p id="shift" class="note">No shift test: {why}.</p>'
    verdict = (f"the scores differ from the model's {shift.baseline} scores: the data may have shifted"
               if shift.shifted else f"no evidence that the scores differ from the model's {shift.baseline} scores")
    cls = ' class="shifted"' if shift.shifted else ""
    return (f'<p id="shift"{cls} data-shifted="{str(shift.shifted).lower()}" data-baseline="{esc(shift.baseline)}">'
            f"Shift test (two-sample Kolmogorov-Smirnov, {shift.n_batch:,} {what} against "
            f"{shift.n_baseline:,} {esc(shift.baseline)} scores): statistic "
            + datum("shift-statistic", shift.ks_statistic, tag="span", cls="")
            + ", p-value " + datum("shift-p-value", shift.ks_p_value, tag="span", cls="")
            + f" (level {shift.level:g}): {esc(verdict)}.</p>")


def _histogram_note(histogram):
    infinite = sum(histogram.infinite.values())
    left = f" {infinite:,} infinite scores are not drawn." if infinite else ""
    return ("Each series as its share of scores per bin; bins of equal width on the asinh scale (linear within "
            f"{LINEAR_WIDTH:g} nat of zero, logarithmic beyond), exact counts kept in {histogram.n_bins} bins "
            f"whatever the batch's size. The red line is the threshold.{left}")


def top_section(findings, threshold):
    rows = findings.top
    if not rows:
        why = f"No {findings.what} could be scored." if not findings.summary.rows_scored else \
            f"None listed: the report was asked for the top 0 {findings.what}."
        return f'<section id="top">\n<h2>Top anomalies</h2>\n<p class="note">{why}</p>\n</section>'
    id_names = list(rows[0]["ids"])
    head = "".join(f"<th>{esc(name)}</th>" for name in ["#", *id_names, "anomaly score", "p-value", "flagged"])
    explained = findings.what == "rows" and "explanation" in rows[0]
    head += "<th>top features: observed vs reconstructed (contribution)</th>" if explained else ""
    body = []
    for rank, row in enumerate(rows, 1):
        flag = '<td class="flag">yes</td>' if row["flagged"] else '<td class="ok">no</td>'
        cells = "".join(f'<td class="id">{esc(_id_text(row["ids"][name]))}</td>' for name in id_names)
        why = _explanation(row["explanation"]) if explained else ""
        body.append(f'<tr class="top-row" data-ids="{esc(json.dumps(row["ids"]))}" '
                    f'data-score="{row["anomaly_score"]!r}"><td class="num">{rank}</td>{cells}'
                    f'<td class="num">{number(row["anomaly_score"])}</td>'
                    f'<td class="num">{number(row["p_value"], 3)}</td>{flag}{why}</tr>')
    return (f'<section id="top">\n<h2>The {len(rows)} highest-scoring {findings.what}</h2>\n'
            f'<table id="top-table"><tr>{head}</tr>\n' + "\n".join(body) + "</table>\n"
            f'<p class="note">Flagged: score above the threshold ({number(threshold)} nats).'
            + (" A feature's contribution is its share of the score, in nats." if explained else "")
            + "</p>\n</section>")


def _id_text(value):
    return "" if value is None else value


def _explanation(items):
    return "<td><ul class=\"why\">" + "".join(
        f"<li>{esc(e['feature'])}: {number(e['observed'], 4)} vs {number(e['reconstructed'], 4)} "
        f"({number(e['contribution'], 3)} nats)</li>" for e in items) + "</ul></td>"


def grid_section(cells, title, key, note):
    """A grid of images (``cells``: (png bytes, caption) pairs)."""
    items = "".join(f'<div class="cell">{img(data, caption, cls="")}<br>{esc(caption)}</div>'
                    for data, caption in cells)
    return (f'<section id="{esc(key)}">\n<h2>{esc(title)}</h2>\n<div class="grid">{items}</div>\n'
            f'<p class="note">{esc(note)}</p>\n</section>')


def model_histogram_section(histogram_png, histogram):
    return ('<section id="scores">\n<h2>The model\'s scores</h2>\n'
            + img(histogram_png, "histogram of the model's training and calibration scores")
            + f'\n<p class="note">{_histogram_note(histogram)}</p>\n</section>')
