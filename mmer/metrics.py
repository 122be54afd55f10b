"""Multi-label evaluation metrics used throughout the project (HHMPN paper, "Evaluation Metrics").

The paper reports four numbers; all are computed here with scikit-learn on binary indicator matrices
of shape (n_samples, n_labels):

* ``accuracy`` -- the paper's *Acc*: the multi-label (Jaccard) accuracy, the mean over samples of
  |y ∩ ŷ| / |y ∪ ŷ|. It is **not** subset accuracy. A sample whose true and predicted label sets are
  both empty has an empty union; by default it scores :data:`EMPTY_UNION_SCORE` = 0, the convention of
  the official HHMPN code (``utils/evals.py:get_accuracy`` divides by max(|y ∪ ŷ|, 1)). Pass
  ``empty_union=1.0`` to count it as a perfect match instead. The value used is returned under
  ``accuracy_empty_union`` so every result record names its convention.
* ``hamming_loss`` -- fraction of wrong (sample, label) cells; smaller is better.
* ``micro_f1`` and ``macro_f1`` -- label-based F1. A label with no true and no predicted positives
  has an undefined F1; it counts as :data:`F1_ZERO_DIVISION` = 0 in the macro average (scikit-learn's
  default behaviour, which the official code's ``get_metrics`` also used).

Subset accuracy (exact match of the whole label set) is reported separately as ``subset_accuracy``;
per-label precision, recall, F1 and support are under ``per_label``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    hamming_loss,
    jaccard_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)

#: Score of a sample whose true and predicted label sets are both empty (official HHMPN convention).
EMPTY_UNION_SCORE = 0.0
#: Value of precision / recall / F1 when their denominator is zero.
F1_ZERO_DIVISION = 0.0
#: Decision threshold on predicted probabilities (paper and official code: 0.5, ``p >= 0.5`` is positive).
DEFAULT_THRESHOLD = 0.5

#: Scalar keys of :func:`evaluate`'s result, in reporting order.
SCALAR_KEYS = (
    "accuracy",
    "hamming_loss",
    "micro_f1",
    "macro_f1",
    "subset_accuracy",
    "micro_precision",
    "micro_recall",
    "macro_precision",
    "macro_recall",
)


def binarize(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Turn probabilities into a 0/1 int matrix: ``p >= threshold`` is a predicted label."""
    return (np.asarray(probabilities) >= threshold).astype(np.int64)


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Micro-F1 of 0/1 matrices, the selection metric of every model (validation only) and :func:`evaluate`'s."""
    return float(f1_score(np.asarray(y_true).astype(np.int64), np.asarray(y_pred).astype(np.int64),
                          average="micro", zero_division=F1_ZERO_DIVISION))


def _as_indicator(y: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(y)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_labels), got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1 (binarize probabilities first)")
    return array.astype(np.int64)


def evaluate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    label_names: Sequence[str] | None = None,
    *,
    empty_union: float = EMPTY_UNION_SCORE,
    zero_division: float = F1_ZERO_DIVISION,
) -> dict:
    """All metrics for binary indicator matrices ``y_true`` and ``y_pred`` of shape (n_samples, n_labels).

    Returns a dict with the float entries of :data:`SCALAR_KEYS`, plus ``n_samples``, ``n_labels``,
    ``accuracy_empty_union`` (the convention used for ``accuracy``), and ``per_label``:
    ``{label_name: {"precision", "recall", "f1", "support"}}``.
    """
    y_true = _as_indicator(y_true, "y_true")
    y_pred = _as_indicator(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: y_true {y_true.shape} vs y_pred {y_pred.shape}")
    n_samples, n_labels = y_true.shape
    if n_samples == 0:
        raise ValueError("cannot evaluate zero samples")
    if label_names is None:
        label_names = [f"label_{i}" for i in range(n_labels)]
    label_names = list(label_names)
    if len(label_names) != n_labels:
        raise ValueError(f"{len(label_names)} label names for {n_labels} labels")

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, average=None, labels=list(range(n_labels)), zero_division=zero_division
    )
    result = {
        # Paper's Acc: sample-averaged Jaccard index; empty union scores `empty_union`.
        "accuracy": float(jaccard_score(y_true, y_pred, average="samples", zero_division=empty_union)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=zero_division)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=zero_division)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "micro_precision": float(precision_score(y_true, y_pred, average="micro", zero_division=zero_division)),
        "micro_recall": float(recall_score(y_true, y_pred, average="micro", zero_division=zero_division)),
        "macro_precision": float(precision_score(y_true, y_pred, average="macro", zero_division=zero_division)),
        "macro_recall": float(recall_score(y_true, y_pred, average="macro", zero_division=zero_division)),
        "accuracy_empty_union": float(empty_union),
        "n_samples": int(n_samples),
        "n_labels": int(n_labels),
        "per_label": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
    }
    return result


def evaluate_probabilities(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    label_names: Sequence[str] | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    **kwargs,
) -> dict:
    """:func:`evaluate` after thresholding ``probabilities`` at ``threshold`` (recorded as ``threshold``)."""
    result = evaluate(y_true, binarize(probabilities, threshold), label_names, **kwargs)
    result["threshold"] = float(threshold)
    return result
