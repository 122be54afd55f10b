"""Multi-label stratified 10-fold assignment and the train/valid/test rotation built on it.

Every sample gets a ``fold`` in 0..9 by iterative stratification (Sechidis et al. 2011, the
iterative-stratification package), so each fold keeps the label distribution. The published split
is rotation 0 of the 10-fold cross-validation: test = fold 0, valid = fold 1, train = folds 2..9,
i.e. 8:1:1. Rotation k (``cv_rotation(k)``) gives the k-th cross-validation run the same way.
"""

from __future__ import annotations

import numpy as np

N_FOLDS = 10
SPLITS = ("train", "valid", "test")  # the split folders and the manifest's keys
VALIDATION = "validation"  # what Hugging Face datasets calls the valid split; accepted everywhere as its name
# The split names users write (command lines, MMERDataset, nemu.load) -> the folder/manifest key
SPLIT_ALIASES = {"train": "train", VALIDATION: "valid", "valid": "valid", "test": "test"}
SPLIT_CHOICES = ("train", VALIDATION, "test")  # what --help offers; "valid" is accepted too (the old name)
HF_SPLIT_NAMES = {"train": "train", "valid": VALIDATION, "test": "test"}  # folder -> the dataset card's split


def split_key(name: str) -> str:
    """The folder/manifest key of a split name: "validation" (the name datasets uses) and "valid" are the same
    split; other names are returned unchanged, for the caller to refuse with the splits the dataset has."""
    return SPLIT_ALIASES.get(name, name)


def assign_folds(label_matrix: np.ndarray, seed: int, n_folds: int = N_FOLDS,
                 groups: np.ndarray | None = None) -> np.ndarray:
    """Fold index per row of a (samples × labels) 0/1 matrix; deterministic for a given ``seed``.

    ``groups`` (one integer per row) keeps rows of one group in one fold: songs whose media are
    byte-identical are one song for the split, or the same content would sit in train and test. The
    groups are stratified as units, each carrying the union of its rows' labels; without ``groups``
    every row is its own group and the result is the plain row-level stratification.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    label_matrix = np.asarray(label_matrix)
    n = len(label_matrix)
    if groups is None:
        groups = np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape}, expected ({n},)")
    # One unit per group, in order of first appearance (deterministic, and the identity without groups).
    _, first, unit_of_row = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    unit_of_row = rank[unit_of_row.ravel()]
    n_units = len(order)
    if n_units < n_folds:
        raise ValueError(f"{n_units} samples (songs with byte-identical media counted once) cannot fill "
                         f"{n_folds} cross-validation folds; at least {n_folds} are needed")
    unit_labels = np.zeros((n_units, label_matrix.shape[1] if label_matrix.ndim == 2 else 0), dtype=np.int8)
    np.maximum.at(unit_labels, unit_of_row, label_matrix.astype(np.int8))
    unit_folds = np.full(n_units, -1, dtype=np.int8)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, test_index) in enumerate(splitter.split(np.zeros((n_units, 1)), unit_labels)):
        unit_folds[test_index] = fold
    return unit_folds[unit_of_row]


def cv_rotation(k: int, n_folds: int = N_FOLDS) -> dict[str, list[int]]:
    """Folds in each split for cross-validation run ``k``: test = k, valid = k+1, train = the rest."""
    if not 0 <= k < n_folds:  # a rotation outside the folds is a mistake, never wrapped around
        raise ValueError(f"cross-validation rotation must be in 0..{n_folds - 1}, got {k}")
    test, valid = k, (k + 1) % n_folds
    return {"train": [f for f in range(n_folds) if f not in (test, valid)], "valid": [valid], "test": [test]}


def split_of_fold(fold: int, k: int = 0) -> str:
    for split, folds in cv_rotation(k).items():
        if fold in folds:
            return split
    raise ValueError(f"fold {fold} out of range")
