"""Multi-label stratified 10-fold assignment and the train/valid/test rotation built on it.

Every sample gets a ``fold`` in 0..9 by iterative stratification (Sechidis et al. 2011, the
iterative-stratification package), so each fold keeps the label distribution. The published split
is rotation 0 of the 10-fold cross-validation: test = fold 0, valid = fold 1, train = folds 2..9,
i.e. 8:1:1. Rotation k (``cv_rotation(k)``) gives the k-th cross-validation run the same way.
"""

from __future__ import annotations

import numpy as np

N_FOLDS = 10
SPLITS = ("train", "valid", "test")


def assign_folds(label_matrix: np.ndarray, seed: int, n_folds: int = N_FOLDS) -> np.ndarray:
    """Fold index per row of a (samples × labels) 0/1 matrix; deterministic for a given ``seed``."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    n = len(label_matrix)
    if n < n_folds:
        raise ValueError(f"{n} samples cannot fill {n_folds} cross-validation folds; at least {n_folds} are needed")
    folds = np.full(n, -1, dtype=np.int8)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, test_index) in enumerate(splitter.split(np.zeros((n, 1)), label_matrix)):
        folds[test_index] = fold
    return folds


def cv_rotation(k: int, n_folds: int = N_FOLDS) -> dict[str, list[int]]:
    """Folds in each split for cross-validation run ``k``: test = k, valid = k+1, train = the rest."""
    test, valid = k % n_folds, (k + 1) % n_folds
    return {"train": [f for f in range(n_folds) if f not in (test, valid)], "valid": [valid], "test": [test]}


def split_of_fold(fold: int, k: int = 0) -> str:
    for split, folds in cv_rotation(k).items():
        if fold in folds:
            return split
    raise ValueError(f"fold {fold} out of range")
