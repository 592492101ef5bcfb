"""Anomalies in images with anomvae: a convolutional VAE on scikit-learn's digits.

Writes the bundled 8x8 digits as PNG files, then runs the commands of the
image guide (docs/images.md) on them: trains on zeros, calibrates on other
zeros, scores new zeros and other digits with heatmaps, and puts eight of
the heatmaps side by side into docs/images/digits-heatmaps.png.

    .venv/bin/python examples/images.py                # the picture in the image guide
    .venv/bin/python examples/images.py --pngs digits  # only write digits/train,
                                                       # digits/reference and digits/new
                                                       # for the command-line walk-through
"""

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from anomvae.cli import main as anomvae

PICTURE = Path(__file__).resolve().parents[1] / "docs" / "images" / "digits-heatmaps.png"


def write_pngs(folder):
    """Zeros 0-119 into folder/train, zeros 120-149 into folder/reference,
    the other 28 zeros and 20 other digits into folder/new."""
    digits = load_digits()
    zeros, others = np.flatnonzero(digits.target == 0), np.flatnonzero(digits.target != 0)[:20]
    for sub, rows in (("train", zeros[:120]), ("reference", zeros[120:150]), ("new", np.r_[zeros[150:], others])):
        (Path(folder) / sub).mkdir(parents=True, exist_ok=True)
        for i in rows:
            pixels = (digits.images[i] / 16.0 * 255 + 0.5).astype(np.uint8)  # 0..16 grey levels -> 0..255
            Image.fromarray(pixels, mode="L").save(Path(folder) / sub / f"{i:04d}_digit{digits.target[i]}.png")


def run(*args):
    """One anomvae command, as from the shell."""
    try:
        anomvae([str(a) for a in args], standalone_mode=False)
    except SystemExit as exc:  # --fail-on-anomaly and errors
        if exc.code:
            raise


def draw_sheet(rows, maps):
    """Four held-out zeros' heatmaps above the four highest-scoring other digits'."""
    zeros = [k for k, row in enumerate(rows) if row["path"].endswith("digit0.png")][:4]
    others = sorted((k for k, row in enumerate(rows) if not row["path"].endswith("digit0.png")),
                    key=lambda k: -float(rows[k]["anomaly_score"]))[:4]
    tiles = [Image.open(next(maps.glob(f"{k + 1:06d}-*.png"))) for k in zeros + others]
    gap, (width, height) = 12, tiles[0].size
    sheet = Image.new("RGB", (4 * width + 3 * gap, 2 * height + gap), "white")
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % 4) * (width + gap), (n // 4) * (height + gap)))
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(PICTURE, optimize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pngs", metavar="FOLDER", help="Only write the digits as PNG files here.")
    args = parser.parse_args()
    if args.pngs:
        write_pngs(args.pngs)
        return

    with tempfile.TemporaryDirectory() as tmp:
        digits, model = Path(tmp) / "digits", Path(tmp) / "digits.anomvae"
        write_pngs(digits)
        run("fit", digits / "train", "-o", model, "--random-state", "0")
        run("calibrate", model, digits / "reference", "--fpr", "0.05")
        run("score", model, digits / "new", "-o", Path(tmp) / "scores.csv", "--heatmaps", Path(tmp) / "heatmaps")
        with open(Path(tmp) / "scores.csv", newline="") as results:
            rows = list(csv.DictReader(results))
        truth = [not row["path"].endswith("digit0.png") for row in rows]
        auc = roc_auc_score(truth, [float(row["anomaly_score"]) for row in rows])
        print(f"ROC-AUC, held-out zeros against other digits: {auc:.3f}")
        draw_sheet(rows, Path(tmp) / "heatmaps")
    print(f"wrote {PICTURE}: top row held-out zeros, bottom row the most anomalous other digits")


if __name__ == "__main__":
    main()
