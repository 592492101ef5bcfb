"""Fit anomvae on the bundled cardiotocography data and check what it flags.

Run from the repository root:  python examples/quickstart.py
"""

from pathlib import Path

import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from anomvae import VAEAnomalyDetector

DATA = Path(__file__).parent / "data"

train = pd.read_csv(DATA / "cardio_train.csv", index_col="record_id")
new = pd.read_csv(DATA / "cardio_new.csv", index_col="record_id")
labels = new.pop("label")

detector = VAEAnomalyDetector(random_state=0).fit(train)
anomaly_score = -detector.score_samples(new)  # negative ELBO, in nats
flagged = detector.predict(new) == -1

print(f"trained {detector.n_epochs_} epochs on {len(train)} rows; threshold {detector.threshold_:.2f} nats")
print(f"flagged {flagged.sum()} of {len(new)} new rows")
print(f"ROC-AUC {roc_auc_score(labels, anomaly_score):.3f}, "
      f"average precision {average_precision_score(labels, anomaly_score):.3f}")
print("most anomalous records:")
print(pd.Series(anomaly_score, index=new.index, name="anomaly_score").nlargest(5).round(2).to_string())
