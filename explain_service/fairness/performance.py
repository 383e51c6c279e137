"""A model's performance on a labelled set, for the transparency report: accuracy, ROC AUC, calibration.

Labels are class names as the model's ``class_names`` give them (as in bias audits); rows whose label is
not a class name are left out and counted. A row's decision is the class the service answers (the most
probable one). For two classes, ROC AUC and calibration are about the positive class (the favourable
class, else the second); for more, ROC AUC is one-vs-rest, macro-averaged, and calibration is about
the predicted class's probability being right. The file is read whole: for files beyond memory, audit
with ``explain-service fairness``, which reads in chunks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explain_service.fairness.monitor import favourable_class
from explain_service.registry.model import LoadedModel

CALIBRATION_BINS = 10


def read_labelled(path: Path, label: str) -> tuple[pd.DataFrame, pd.Series, str]:
    """The rows, the label column and the file's sha256 of a CSV or Parquet file."""
    data = path.read_bytes()
    frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    if label not in frame.columns:
        raise ValueError(f"the file has no label column {label!r}")
    return frame.drop(columns=[label]), frame[label], hashlib.sha256(data).hexdigest()


def performance(
    model: LoadedModel, rows: pd.DataFrame, labels: pd.Series, data_sha256: str
) -> dict[str, Any]:
    """Accuracy, ROC AUC and calibration of ``model`` on ``rows`` with true ``labels`` (class names)."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

    if not model.is_classifier:
        raise ValueError("performance is reported for classifiers")
    names = list(model.class_names)
    text = labels.astype(str)
    known = text.isin(names).to_numpy()
    frame = model.schema.coerce(rows.loc[known, model.schema.names])
    truth = np.array([names.index(v) for v in text[known]], dtype=np.int64)
    proba = model.predict_proba(frame)
    predicted = proba.argmax(axis=1)
    out: dict[str, Any] = {
        "data": {"sha256": data_sha256, "rows": len(rows), "used": int(known.sum())},
        "accuracy": float(accuracy_score(truth, predicted)),
    }
    if len(names) == 2:
        positive = names.index(favourable_class(names, model.manifest.favorable) or names[1])
        is_positive = (truth == positive).astype(int)
        score = proba[:, positive]
        out["positive"] = names[positive]
        out["roc_auc"] = (
            float(roc_auc_score(is_positive, score)) if 0 < is_positive.sum() < len(truth) else None
        )
    else:
        is_positive = (predicted == truth).astype(int)
        score = proba.max(axis=1)
        out["roc_auc"] = float(roc_auc_score(truth, proba, multi_class="ovr", labels=list(range(len(names)))))
    fraction, mean_predicted = calibration_curve(
        is_positive, score, n_bins=CALIBRATION_BINS, strategy="uniform"
    )
    out["calibration"] = {
        "about": "the positive class" if len(names) == 2 else "the predicted class being right",
        "brier_score": float(brier_score_loss(is_positive, score)),
        "bins": [
            {"mean_predicted": float(p), "fraction_positive": float(f)}
            for p, f in zip(mean_predicted, fraction, strict=True)
        ],
    }
    return out
