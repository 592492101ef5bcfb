"""Anomalies in images with anomvae: a convolutional VAE on scikit-learn's digits.

Trains on images of the digit 0, scores held-out zeros and other digits, and
draws where each score comes from into docs/images/digits-heatmaps.png.

    .venv/bin/python examples/images.py                # the picture in the image guide
    .venv/bin/python examples/images.py --pngs digits  # only write digits/train and
                                                       # digits/new as PNG files for
                                                       # the command-line walk-through
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score

from anomvae import VAEAnomalyDetector
from anomvae.explain import heatmap_image

PICTURE = Path(__file__).resolve().parents[1] / "docs" / "images" / "digits-heatmaps.png"


def write_pngs(folder, images, labels):
    """Zeros 0-119 into folder/train; the other zeros and 20 other digits into folder/new."""
    zeros, others = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)[:20]
    for sub, rows in (("train", zeros[:120]), ("new", np.r_[zeros[120:], others])):
        (Path(folder) / sub).mkdir(parents=True, exist_ok=True)
        for i in rows:
            pixels = (images[i].reshape(8, 8) * 255 + 0.5).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(Path(folder) / sub / f"{i:04d}_digit{labels[i]}.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pngs", metavar="FOLDER", help="Only write the digits as PNG files here "
                        "(the picture in docs/ is left as it is).")
    args = parser.parse_args()

    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)  # 0..16 grey levels -> [0, 1]
    labels = digits.target
    if args.pngs:
        write_pngs(args.pngs, images, labels)
        print(f"wrote {args.pngs}/train (120 zeros) and {args.pngs}/new (58 zeros, 20 other digits)")
        return

    zeros = np.flatnonzero(labels == 0)
    train, held_out = zeros[:120], zeros[120:]
    others = np.flatnonzero(labels != 0)[:len(held_out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        detector = VAEAnomalyDetector(
            architecture="conv", image_shape=(1, 8, 8), likelihood="bernoulli", random_state=0,
        ).fit(images[train])

    test = np.r_[held_out, others]
    scores = -detector.score_samples(images[test])
    truth = np.r_[np.zeros(len(held_out)), np.ones(len(others))]
    print(f"trained on {len(train)} zeros for {detector.n_epochs_} epochs")
    print(f"ROC-AUC, held-out zeros against other digits: {roc_auc_score(truth, scores):.3f}")
    print(f"flagged: {int(np.sum(scores[len(held_out):] > detector.threshold_))} of {len(others)} other digits, "
          f"{int(np.sum(scores[:len(held_out)] > detector.threshold_))} of {len(held_out)} zeros")

    # Four held-out zeros, then the four other digits with the highest scores.
    shown = np.r_[held_out[:4], others[np.argsort(-scores[len(held_out):])[:4]]]
    contributions = detector.feature_contributions(images[shown])
    # One scale for all eight, so that the overlays compare across images.
    vmax = contributions.max()
    tiles = [heatmap_image(images[i], c, detector.image_shape_, min_side=96, vmax=vmax)
             for i, c in zip(shown, contributions)]
    sheet = Image.new("RGB", (4 * 100, 2 * 100), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % 4) * 100 + 2, (k // 4) * 100 + 2))
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(PICTURE)
    print(f"wrote {PICTURE}: top row held-out zeros, bottom row the most anomalous other digits")


if __name__ == "__main__":
    main()
