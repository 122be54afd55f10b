"""Multi-label evaluation metrics used throughout the project (HHMPN paper, "Evaluation Metrics").

The paper reports four numbers; all are computed here from the per-label confusion counts of binary
indicator matrices of shape (n_samples, n_labels), with one code path for every ``n_labels >= 1``
(scikit-learn reads a single column as a *binary* target, where "micro" averages over the classes 0 and 1
and sample-wise Jaccard is refused; tests/test_metrics.py checks every value against scikit-learn's
multi-label functions, and the one-label case against its binary ones). The conventions:

* ``accuracy`` -- the paper's *Acc*: the multi-label (Jaccard) accuracy, the mean over samples of
  |y ∩ ŷ| / |y ∪ ŷ|. It is **not** subset accuracy. A sample whose true and predicted label sets are
  both empty has an empty union; by default it scores :data:`EMPTY_UNION_SCORE` = 0, the convention of
  the official HHMPN code (``utils/evals.py:get_accuracy`` divides by max(|y ∪ ŷ|, 1)) and
  scikit-learn's ``jaccard_score(average="samples")`` default. ``empty_union=1.0`` counts it as a perfect
  match instead, as subset accuracy does (MOSEI keeps segments with no emotion: there the choice moves
  Acc). The value used is returned under ``accuracy_empty_union`` so every result record names its
  convention; the benchmark's ``--empty-union 0|1`` sets it (:data:`EMPTY_UNION_CHOICES`).
* ``hamming_loss`` -- fraction of wrong (sample, label) cells; smaller is better.
* ``micro_f1`` and ``macro_f1`` -- label-based F1. A label with no true and no predicted positives
  has an undefined F1; it counts as :data:`F1_ZERO_DIVISION` = 0 in the macro average (scikit-learn's
  default behaviour, which the official code's ``get_metrics`` also used), so a label absent from a test
  fold's gold pulls ``macro_f1`` down even when the model correctly never predicts it.
* ``macro_f1_present`` -- the macro-F1 over the labels with at least one positive in ``y_true`` (the labels
  present in the test fold), reported beside the all-labels ``macro_f1`` (the paper's); with no label
  present it is :data:`F1_ZERO_DIVISION`. ``n_labels_present`` says how many labels it averages.

Subset accuracy (exact match of the whole label set) is reported separately as ``subset_accuracy``;
per-label precision, recall, F1 and support are under ``per_label``. The decision rule is
:func:`binarize` (``p >= threshold``); :func:`choose_threshold` picks one threshold on a validation split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Score of a sample whose true and predicted label sets are both empty (official HHMPN convention).
EMPTY_UNION_SCORE = 0.0
#: The values ``evaluate(empty_union=...)`` and the benchmark's ``--empty-union`` accept: the official code's 0,
#: or 1 (the empty/empty pair is a perfect match, as in subset accuracy).
EMPTY_UNION_CHOICES = (0.0, 1.0)
#: Value of precision / recall / F1 when their denominator is zero.
F1_ZERO_DIVISION = 0.0
#: Decision threshold on predicted probabilities (paper and official code: 0.5, ``p >= 0.5`` is positive).
DEFAULT_THRESHOLD = 0.5
#: Candidate thresholds of :func:`choose_threshold`: 0.05, 0.10, ..., 0.95 (rounded, so 0.5 is exactly 0.5).
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))

#: Scalar keys of :func:`evaluate`'s result, in reporting order.
SCALAR_KEYS = (
    "accuracy",
    "hamming_loss",
    "micro_f1",
    "macro_f1",
    "macro_f1_present",
    "subset_accuracy",
    "micro_precision",
    "micro_recall",
    "macro_precision",
    "macro_recall",
)


def binarize(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Turn probabilities into a 0/1 int matrix: ``p >= threshold`` is a predicted label.

    Non-finite probabilities or threshold are refused (:class:`NonFiniteResult`): NaN would silently read as
    "no label"."""
    probabilities = np.asarray(probabilities)
    if not np.isfinite(threshold):
        raise NonFiniteResult(f"the threshold is {threshold}, not a finite number")
    if probabilities.dtype.kind in "fc" and not np.isfinite(probabilities).all():
        raise NonFiniteResult(f"{int((~np.isfinite(probabilities)).sum())} predicted probabilities are not "
                              f"finite (NaN or infinite); the model or its inputs are broken")
    return (probabilities >= threshold).astype(np.int64)


def _ratio(numerator, denominator, zero_division: float):
    """numerator / denominator elementwise, ``zero_division`` where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, zero_division)


def _counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, false positives and false negatives of 0/1 matrices."""
    tp = np.sum((y_true == 1) & (y_pred == 1), axis=0)
    fp = np.sum((y_true == 0) & (y_pred == 1), axis=0)
    fn = np.sum((y_true == 1) & (y_pred == 0), axis=0)
    return tp, fp, fn


def _f1(tp, fp, fn, zero_division: float):
    # 2tp / (2tp + fp + fn): scikit-learn's definition; undefined (zero_division) only with no true and no
    # predicted positive.
    return _ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + np.asarray(fp) + np.asarray(fn), zero_division)


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Micro-F1 of 0/1 matrices (any number of label columns), the selection metric of every model
    (validation only) and :func:`evaluate`'s."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = np.asarray(y_pred).astype(np.int64)
    tp, fp, fn = _counts(y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1))
    return float(_f1(tp.sum(), fp.sum(), fn.sum(), F1_ZERO_DIVISION))


def choose_threshold(y_true: np.ndarray, probabilities: np.ndarray,
                     grid: Sequence[float] = THRESHOLD_GRID) -> tuple[float, float]:
    """The decision threshold with the best micro-F1 of ``binarize(probabilities, t)`` against ``y_true``:
    ``(threshold, its micro-F1)``. Meant for a validation split only. Ties go to the threshold nearest
    :data:`DEFAULT_THRESHOLD`, then to the smaller one (deterministic)."""
    if len(grid) == 0:
        raise ValueError("empty threshold grid")
    scored = [(micro_f1(y_true, binarize(probabilities, t)), float(t)) for t in grid]
    best = max(score for score, _ in scored)
    threshold = min((t for score, t in scored if score == best), key=lambda t: (abs(t - DEFAULT_THRESHOLD), t))
    return threshold, best


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
    """All metrics for binary indicator matrices ``y_true`` and ``y_pred`` of shape (n_samples, n_labels),
    ``n_labels >= 1``.

    Returns a dict with the float entries of :data:`SCALAR_KEYS`, plus ``n_samples``, ``n_labels``,
    ``n_labels_present``, ``accuracy_empty_union`` (the convention used for ``accuracy``), and ``per_label``:
    ``{label_name: {"precision", "recall", "f1", "support"}}``.
    """
    y_true = _as_indicator(y_true, "y_true")
    y_pred = _as_indicator(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: y_true {y_true.shape} vs y_pred {y_pred.shape}")
    n_samples, n_labels = y_true.shape
    if n_samples == 0:
        raise ValueError("cannot evaluate zero samples")
    if n_labels == 0:
        raise ValueError("cannot evaluate zero labels")
    if label_names is None:
        label_names = [f"label_{i}" for i in range(n_labels)]
    label_names = list(label_names)
    if len(label_names) != n_labels:
        raise ValueError(f"{len(label_names)} label names for {n_labels} labels")

    tp, fp, fn = _counts(y_true, y_pred)
    support = tp + fn
    precision = _ratio(tp, tp + fp, zero_division)
    recall = _ratio(tp, support, zero_division)
    f1 = _f1(tp, fp, fn, zero_division)
    present = support > 0
    intersection = np.sum(y_true & y_pred, axis=1)
    union = np.sum(y_true | y_pred, axis=1)
    result = {
        # Paper's Acc: sample-averaged Jaccard index; empty union scores `empty_union`.
        "accuracy": float(np.mean(_ratio(intersection, union, empty_union))),
        "hamming_loss": float(np.mean(y_true != y_pred)),
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum(), zero_division)),
        "macro_f1": float(np.mean(f1)),
        # Over the labels the gold has at least once: an absent label's F1 (0 by the convention above) is left out.
        "macro_f1_present": float(np.mean(f1[present])) if present.any() else float(zero_division),
        "subset_accuracy": float(np.mean(np.all(y_true == y_pred, axis=1))),
        "micro_precision": float(_ratio(tp.sum(), tp.sum() + fp.sum(), zero_division)),
        "micro_recall": float(_ratio(tp.sum(), support.sum(), zero_division)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "accuracy_empty_union": float(empty_union),
        "n_samples": int(n_samples),
        "n_labels": int(n_labels),
        "n_labels_present": int(present.sum()),
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


class NonFiniteResult(ValueError):
    """A result holding NaN or an infinity: the message names the quantity (e.g. ``metrics.micro_f1``)."""


def non_finite(value, where: str = "") -> str | None:
    """The dotted name of the first non-finite number in ``value`` (dicts, lists, numbers, arrays), else None."""
    if isinstance(value, (float, np.floating)):
        return None if np.isfinite(value) else where or "value"
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return f"{where}[{int(np.flatnonzero(~np.isfinite(value.ravel()))[0])}]" if where else "value"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = non_finite(item, f"{where}[{index}]")
            if found:
                return found
    return None


def _value_at(record, dotted: str):
    value = record
    try:
        for part in dotted.replace("[", ".[").split("."):
            if part:
                value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    except (KeyError, IndexError, TypeError, ValueError):
        return "not finite"
    return value


def check_finite(record, what: str = "result") -> None:
    """Raise :class:`NonFiniteResult` naming the first non-finite number of ``record`` (nothing is written)."""
    found = non_finite(record)
    if found:
        raise NonFiniteResult(f"{what} has a non-finite {found} ({_value_at(record, found)}); not written")
