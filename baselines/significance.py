"""Significance tests for the benchmark tables: the corrected resampled t-test, a paired per-song bootstrap and
Holm–Bonferroni.

Why not the plain paired t-test over CV rotations: rotations share most of their training data, so their
differences are correlated and the plain test's variance is too small; it rejects too often (Nadeau & Bengio,
"Inference for the generalization error", Machine Learning 52, 2003). Their corrected resampled t-test inflates
the variance by the test/train size ratio:

    t = mean(d) / sqrt((1/k + n_test/n_train) * var(d, ddof=1)),   df = k - 1,

with d_j the difference of two models on rotation j (each model's value seed-averaged first), k rotations.
n_test/n_train is the mean of the rotations' ratios from the records' ``sizes`` (the training split only: the
validation split is used for selection, not fitting, and a smaller n_train makes the test more conservative).

The paired bootstrap resamples songs: every song is tested in exactly one rotation, so the rotations' test
predictions pool into one prediction per song and seed. A resample draws songs with replacement (the same draw
for both models: paired), recomputes each metric on it for every seed of each model, averages over seeds and takes
the difference. The 95% interval is the 2.5/97.5 percentiles of the resampled differences; the two-sided p-value
is twice the smaller share of resampled differences on either side of zero (the percentile interval inverted),
with the usual +1 so that it is never exactly 0. The metrics are computed from per-song counts in one matrix
product per resample batch (the same formulas as ``mmer.metrics.evaluate``; tests/test_significance.py checks
that they agree), so 2,000 resamples take well under a second.

Holm–Bonferroni (Holm 1979) controls the family-wise error over a family of comparisons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mmer.metrics import EMPTY_UNION_SCORE, F1_ZERO_DIVISION

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
#: n_test / n_train of a rotation by design (test = 1 fold, valid = 1, train = 8 of 10: ``nemu.splits``), used only
#: when records carry no ``sizes``.
DESIGN_TEST_TRAIN_RATIO = 1 / 8
METRICS = ("accuracy", "hamming_loss", "micro_f1", "macro_f1")
CORRECTED_T_TEST = "corrected resampled t-test over rotations (Nadeau & Bengio 2003)"
BOOTSTRAP_TEST = "paired per-song bootstrap of the pooled test predictions"
CORRECTION = "Holm–Bonferroni"


@dataclass(frozen=True)
class TTest:
    t: float
    p: float
    df: int
    k: int
    mean_difference: float
    ratio: float  # n_test / n_train used in the correction


def corrected_t_test(differences: Sequence[float], test_train_ratio: float) -> TTest | None:
    """Nadeau & Bengio's corrected resampled t-test of per-rotation differences; None with fewer than two.

    All differences equal: zero variance; p is 1 when they are all 0 (no difference) and 0 otherwise (the same
    non-zero difference on every rotation; t is infinite)."""
    d = np.asarray(differences, dtype=float)
    k = len(d)
    if k < 2:
        return None
    mean = float(d.mean())
    variance = float(d.var(ddof=1))
    scale = np.sqrt((1.0 / k + test_train_ratio) * variance)
    if scale == 0 or not np.isfinite(scale):
        if np.isclose(mean, 0.0, atol=1e-15):
            return TTest(0.0, 1.0, k - 1, k, mean, test_train_ratio)
        return TTest(float(np.sign(mean) * np.inf), 0.0, k - 1, k, mean, test_train_ratio)
    t = mean / scale
    p = float(2 * stats.t.sf(abs(t), df=k - 1))
    return TTest(float(t), min(p, 1.0), k - 1, k, mean, test_train_ratio)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the input's order; None entries (no test) are not in the family.

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) * p_(j)): step-down, so the
    adjusted values keep the raw order. Reject where the adjusted p < alpha."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(sorted(present, key=lambda item: (item[0], item[1]))):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def size_ratio(records: Sequence[Mapping]) -> float:
    """Mean n_test / n_train over the records' rotations (from ``sizes``), or the design's 1/8 without sizes."""
    by_fold: dict[int, float] = {}
    for record in records:
        sizes = record.get("sizes") or {}
        if sizes.get("test") and sizes.get("train"):
            by_fold.setdefault(record["fold"], sizes["test"] / sizes["train"])
    return float(np.mean(list(by_fold.values()))) if by_fold else DESIGN_TEST_TRAIN_RATIO


# --- the bootstrap -------------------------------------------------------------------------------------------


def _matrix(rows: Sequence[str]) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows], dtype=np.int64).reshape(len(rows), -1)


def pooled_predictions(records: Sequence[Mapping], folds: Sequence[int] | None = None
                       ) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]] | None:
    """(gold per song id, {seed: predicted per song id}) pooled over the records' rotations (``folds`` only, when
    given); a seed counts only where it has predictions on every one of those rotations. None when a record has
    no ``test_predictions``."""
    gold: dict[str, np.ndarray] = {}
    by_seed: dict[int, dict[int, dict[str, np.ndarray]]] = {}
    for record in records:
        if folds is not None and record["fold"] not in folds:
            continue
        outcome = record.get("test_predictions")
        if not outcome:
            return None
        g, p = _matrix(outcome["gold"]), _matrix(outcome["predicted"])
        for song, g_row, p_row in zip(outcome["ids"], g, p):
            gold[(record["fold"], song)] = g_row
            by_seed.setdefault(record["seed"], {}).setdefault(record["fold"], {})[(record["fold"], song)] = p_row
    wanted = set(folds) if folds is not None else {r["fold"] for r in records}
    seeds = {seed: {song: row for fold_rows in per_fold.values() for song, row in fold_rows.items()}
             for seed, per_fold in by_seed.items() if set(per_fold) >= wanted}
    return (gold, seeds) if seeds else None


def _song_counts(gold: np.ndarray, predicted: np.ndarray, empty_union: float) -> dict[str, np.ndarray]:
    """Per-song pieces every metric is a sum of: tp/fp/fn per label, the song's Jaccard index, its wrong cells."""
    tp = gold & predicted
    fp = (1 - gold) & predicted
    fn = gold & (1 - predicted)
    union = (gold | predicted).sum(1)
    jaccard = np.where(union > 0, tp.sum(1) / np.maximum(union, 1), empty_union)
    return {"tp": tp, "fp": fp, "fn": fn, "jaccard": jaccard, "wrong": (fp + fn).sum(1)}


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, zero_division: float) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), zero_division)


def weighted_metrics(counts: Mapping[str, np.ndarray], weights: np.ndarray,
                     zero_division: float = F1_ZERO_DIVISION) -> dict[str, np.ndarray]:
    """The four metrics of resamples given as song multiplicities ``weights`` (R, n_songs), one value per
    resample; weights of ones are the metrics of the songs themselves (equal to ``mmer.metrics.evaluate``)."""
    n = weights.sum(1).astype(float)
    n_labels = counts["tp"].shape[1]
    tp, fp, fn = (weights @ counts[key] for key in ("tp", "fp", "fn"))  # (R, L)
    return {"accuracy": weights @ counts["jaccard"] / n,
            "hamming_loss": weights @ counts["wrong"] / (n * n_labels),
            "micro_f1": _f1(tp.sum(1), fp.sum(1), fn.sum(1), zero_division),
            "macro_f1": _f1(tp, fp, fn, zero_division).mean(1)}


@dataclass(frozen=True)
class Bootstrap:
    difference: float  # seed-averaged metric of A minus that of B on all pooled songs
    low: float  # 2.5th percentile of the resampled differences
    high: float  # 97.5th percentile
    p: float
    songs: int
    resamples: int
    seeds_a: int
    seeds_b: int


def paired_bootstrap(records_a: Sequence[Mapping], records_b: Sequence[Mapping],
                     metrics: Sequence[str] = METRICS, *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, empty_union: float = EMPTY_UNION_SCORE,
                     zero_division: float = F1_ZERO_DIVISION) -> dict[str, Bootstrap] | None:
    """Paired bootstrap of metric(A) - metric(B) over the songs both tested on their common rotations.

    Deterministic for ``seed``: the song draws come from ``numpy.random.default_rng(seed)`` and depend on nothing
    else than the number of common songs. None when either side lacks per-song predictions or no song is common."""
    folds = sorted({r["fold"] for r in records_a} & {r["fold"] for r in records_b})
    if not folds:
        return None
    pooled_a, pooled_b = pooled_predictions(records_a, folds), pooled_predictions(records_b, folds)
    if pooled_a is None or pooled_b is None:
        return None
    songs = sorted(set(pooled_a[0]) & set(pooled_b[0]), key=lambda key: (key[0], str(key[1])))
    if not songs:
        return None
    gold = np.stack([pooled_a[0][s] for s in songs])
    rng = np.random.default_rng(seed)
    n = len(songs)
    # each resample as song multiplicities: equivalent to drawing n songs with replacement
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    everything = np.ones((1, n), dtype=np.int64)

    def seed_averaged(pooled, w: np.ndarray) -> dict[str, np.ndarray]:
        per_seed = []
        for predicted in pooled[1].values():
            counts = _song_counts(gold, np.stack([predicted[s] for s in songs]), empty_union)
            per_seed.append(weighted_metrics(counts, w, zero_division))
        return {m: np.mean([values[m] for values in per_seed], axis=0) for m in metrics}

    observed_a, observed_b = seed_averaged(pooled_a, everything), seed_averaged(pooled_b, everything)
    resampled_a, resampled_b = seed_averaged(pooled_a, weights), seed_averaged(pooled_b, weights)
    result = {}
    for m in metrics:
        deltas = resampled_a[m] - resampled_b[m]
        deltas = np.where(np.abs(deltas) < 1e-12, 0.0, deltas)  # float noise of identical predictions is 0
        below, above = int((deltas <= 0).sum()), int((deltas >= 0).sum())
        p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
        low, high = np.percentile(deltas, [2.5, 97.5])
        result[m] = Bootstrap(float(observed_a[m][0] - observed_b[m][0]), float(low), float(high), p, n,
                              resamples, len(pooled_a[1]), len(pooled_b[1]))
    return result
