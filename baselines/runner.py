"""Run one cell of the benchmark grid: train a registered model on one CV rotation and test it.

Model selection uses the validation split only: estimators pick their grid point by validation
micro-F1, neural models keep the single epoch with the best validation micro-F1 (``hhmpn.engine``).
Every record carries its cost: wall time, parameter count and peak resident memory.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from baselines.registry import TRAINING_KEYS, DataInfo, ModelSpec
from baselines.results import Cell
from nemu.loading import column_names, read_table, split_datasets
from nemu.metrics import evaluate
from nemu.shards import read_manifest

METRIC_KEYS = ("accuracy", "hamming_loss", "micro_f1", "macro_f1", "subset_accuracy")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets the kernel's peak-RSS counter (VmHWM) for this process.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def data_info(name: str, root: Path, datasets: dict) -> DataInfo:
    train = datasets["train"]
    return DataInfo(dataset=name, modality_dims=dict(train.modality_dims), label_names=list(train.label_names),
                    train_labels=train.labels.astype(np.int8), columns=tuple(column_names(root)))


def modality_names(root: Path) -> list[str]:
    return [m["name"] for m in read_manifest(root)["modalities"]]


def missing_columns(root: Path, columns: tuple[str, ...]) -> str | None:
    """Why the dataset cannot feed these per-sample columns (absent or entirely null), or None."""
    present = set(column_names(root))
    for column in columns:
        if column not in present:
            return f"needs per-sample {column!r}, which this dataset does not have"
        table = read_table(root, None, [column])
        if table[column].null_count == table.num_rows:
            return f"needs per-sample {column!r}, which is empty (null) throughout this dataset"
    return None


def estimator_parameters(model) -> int:
    """Learned coefficients (``coef_``, ``intercept_``) of a possibly nested scikit-learn estimator."""
    from sklearn.base import BaseEstimator

    seen, total, stack = set(), 0, [model]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for name, value in vars(current).items():
            if name in ("coef_", "intercept_") and isinstance(value, np.ndarray):
                total += value.size
            elif isinstance(value, BaseEstimator):
                stack.append(value)
            elif isinstance(value, (list, tuple)):  # estimators_, chains, Pipeline steps (name, estimator)
                for item in value:
                    items = item if isinstance(item, tuple) else (item,)
                    stack.extend(v for v in items if isinstance(v, BaseEstimator))
    return total


def _run_estimator(spec: ModelSpec, config: dict, info: DataInfo, datasets: dict) -> dict:
    from baselines.classical import select_on_validation
    from baselines.early_fusion import early_fused

    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = (early_fused(datasets[s]) for s in
                                                                ("train", "valid", "test"))
    grid = config.get("grid") or {}
    with warnings.catch_warnings():  # capped solver iterations are a configuration choice, not news
        warnings.simplefilter("ignore", ConvergenceWarning)
        params, model = select_on_validation(lambda **p: spec.factory(config, info).set_params(**p), grid,
                                             x_train, y_train, x_valid, y_valid)
    return {"test": evaluate(y_test, model.predict(x_test), info.label_names),
            "valid": evaluate(y_valid, model.predict(x_valid), info.label_names),
            "selected": params, "parameters": estimator_parameters(model)}


def _run_neural(spec: ModelSpec, config: dict, info: DataInfo, datasets: dict, seed: int, device: str | None,
                checkpoint: Path | None) -> dict:
    from hhmpn.engine import seed_everything, train_and_test

    seed_everything(seed)  # weight initialisation
    model = spec.factory(config, info)
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    result, test = train_and_test(
        model, datasets, epochs=config["epochs"], lr=config["lr"], batch_size=config["batch_size"],
        clip=config.get("clip", 10.0), threshold=config.get("threshold", 0.5), seed=seed, device=device,
        checkpoint_path=checkpoint, progress=False, label_names=info.label_names)
    return {"test": test, "valid": result.best_valid, "selected": {"epoch": result.best_epoch},
            "parameters": result.num_parameters}


def run_cell(cell: Cell, spec: ModelSpec, root: Path, profile: str, *, device: str | None = None,
             checkpoint_dir: Path | None = None, overrides: dict | None = None) -> dict:
    """Train and test ``spec`` on ``cell``; returns the record for the results store.

    ``overrides`` replaces entries of the profile's configuration (e.g. ``{"epochs": 1}`` for smoke runs).
    """
    base = {"key": cell.key, "model": spec.name, "group": spec.group, "dataset": cell.dataset, "fold": cell.fold,
            "seed": cell.seed}
    reason = missing_columns(root, spec.extra_columns)
    if reason is not None:
        return base | {"modalities": list(cell.modalities or modality_names(root)), "status": "not_applicable",
                       "reason": reason}
    datasets = split_datasets(root, cell.fold, cell.modalities, spec.extra_columns)
    info = data_info(cell.dataset, root, datasets)
    base["modalities"] = list(info.modality_dims)
    reason = spec.applicable(info)
    if reason is not None:
        return base | {"status": "not_applicable", "reason": reason}
    config = spec.config(profile) | (overrides or {}) | {"seed": cell.seed}
    _reset_peak_rss()
    started = time.perf_counter()
    if spec.kind == "estimator":
        outcome = _run_estimator(spec, config, info, datasets)
    else:
        checkpoint = None
        if spec.figure_source and checkpoint_dir is not None and cell.modalities is None:
            checkpoint = checkpoint_dir / cell.dataset / spec.name / f"fold{cell.fold}-seed{cell.seed}.pt"
        outcome = _run_neural(spec, config, info, datasets, cell.seed, device, checkpoint)
    seconds = time.perf_counter() - started
    test = outcome["test"]
    return base | {
        "status": "ok",
        "metrics": {k: float(test[k]) for k in METRIC_KEYS},
        "per_label_f1": {name: float(v["f1"]) for name, v in test["per_label"].items()},
        "valid_micro_f1": float(outcome["valid"]["micro_f1"]),
        "selected": outcome["selected"],
        "run_seconds": round(seconds, 3),
        "parameters": int(outcome["parameters"]),
        "peak_memory_mb": _peak_rss_mb(),
        "sizes": {split: len(ds) for split, ds in datasets.items()},
        "settings": {k: v for k, v in config.items()},
        "training_keys": [k for k in TRAINING_KEYS if k in config],
    }
