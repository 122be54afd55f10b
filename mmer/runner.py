"""Run one cell of the benchmark grid: train a registered model on one CV rotation and test it.

Model selection uses the validation split only: estimators pick their grid point by validation
micro-F1, neural models keep the single epoch with the best validation micro-F1 (``mmer.engine``).
Every record carries its cost: wall time, parameter count and peak resident memory.

Inputs follow the benchmark protocol (README, "The benchmark protocol"): every model gets the node
features of ``nemu.loading.split_datasets`` standardised with the training split's statistics of the
rotation in use (``input_normalization="raw"`` feeds the stored features); the setting is in every record.

The decision threshold is the run-level setting ``threshold_rule`` (``mmer.tuning.THRESHOLD_RULES``): "0.5", the
paper's fixed threshold, or "validation": after selection (C, or the best-validation epoch at 0.5), one threshold
per cell is chosen on the validation split (``mmer.metrics.choose_threshold``: 0.05..0.95, best micro-F1, ties
nearest 0.5) and applied to the test split, for estimators (on ``predict_proba``) and neural models alike. Acc's
empty-union convention is the run-level setting ``empty_union`` (0, the official code's, or 1). Both are part of
the resolved settings (so of the cell's digest) and are recorded in every record (``threshold``,
``threshold_rule``, ``empty_union``).

Every cell run with an output folder leaves a run folder (``run_folder``; format in ``mmer.runs``) that
``hhmpn.predict`` and Table 5 (``baselines.robustness``) accept: the selected checkpoint (a neural model) or the
fitted estimator (``mmer.saved_estimators``, no pickle), run.json, the normalisation statistics, the training
labels, and the cell's own test predictions (``predictions-test.jsonl``, predict's output format).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import ParameterGrid

from mmer.code import model_code
from mmer.early_fusion import early_fused
from mmer.engine import TrainResult, make_loaders, predict, seed_everything, train_and_test
from mmer.metrics import (DEFAULT_THRESHOLD, EMPTY_UNION_CHOICES, EMPTY_UNION_SCORE, binarize, choose_threshold,
                          check_finite, evaluate, micro_f1)
from mmer.predict import prediction_records, write_predictions
from mmer.registry import TRAINING_KEYS, DataInfo, ModelSpec, models, resolve
from mmer.runs import CHECKPOINT_FILE, RUN_FILE, read_run, start_run, write_run
from mmer.saved_estimators import EstimatorFileError, save_estimator
from mmer.tuning import DEFAULT_THRESHOLD_RULE, check_threshold_rule
from nemu.atomic import atomic_write_text
from nemu.loading import column_names, read_table, split_datasets
from nemu.normalization import DEFAULT_INPUT_NORMALIZATION
from nemu.shards import dataset_fingerprint, read_manifest

METRIC_KEYS = ("accuracy", "hamming_loss", "micro_f1", "macro_f1", "macro_f1_present", "subset_accuracy")
#: Run-level settings of every cell, with their defaults: how a cell decides and scores, not what the model is.
#: They enter the resolved settings (and so the digest) under these names and never reach a model's factory.
RUN_SETTINGS = {"threshold_rule": DEFAULT_THRESHOLD_RULE, "empty_union": EMPTY_UNION_SCORE}
RUNS_DIR = "runs"
METRICS_FILE = "metrics.json"  # beside a run folder of train_run: test and validation metrics, history, cost
#: Per-cell entries of a record's ``settings`` that are part of the grid position, not of the settings.
POSITION_SETTINGS = ("seed",)
#: Gradient-norm clip of a neural configuration that names none.
DEFAULT_CLIP = 10.0


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def run_settings(threshold: str = DEFAULT_THRESHOLD_RULE, empty_union: float = EMPTY_UNION_SCORE) -> dict:
    """The run-level settings (:data:`RUN_SETTINGS`) as overrides, checked: ``threshold`` "0.5" or "validation"
    (``mmer.tuning.THRESHOLD_RULES``), ``empty_union`` 0 or 1 (``mmer.metrics.EMPTY_UNION_CHOICES``)."""
    check_threshold_rule(threshold)
    if float(empty_union) not in EMPTY_UNION_CHOICES:
        raise ValueError(f"empty_union must be one of {EMPTY_UNION_CHOICES}, got {empty_union!r}")
    return {"threshold_rule": threshold, "empty_union": float(empty_union)}


def resolved_settings(spec: ModelSpec, profile: str, overrides: Mapping | None = None,
                      input_normalization: str = DEFAULT_INPUT_NORMALIZATION) -> dict:
    """Everything a cell's result depends on besides its data and grid place, resolved once: the profile's
    configuration, the run-level settings (:data:`RUN_SETTINGS`: their defaults unless ``overrides`` sets them,
    e.g. with :func:`run_settings`), ``overrides`` and the input normalisation. The cell's digest and its run
    both come from it."""
    settings = spec.config(profile) | RUN_SETTINGS | dict(overrides or {}) | {"input_normalization": input_normalization}
    run_settings(settings["threshold_rule"], settings["empty_union"])  # a bad value fails before any cell runs
    return settings


def settings_digest(settings: Mapping) -> str:
    """sha256 (first 16 hex digits) of the resolved settings, without the per-cell seed."""
    relevant = {k: v for k, v in settings.items() if k not in POSITION_SETTINGS}
    return hashlib.sha256(_canonical(relevant).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One cell of the benchmark grid: a model on one dataset, CV rotation, seed and modality subset."""

    model: str
    dataset: str
    fold: int
    seed: int
    modalities: tuple[str, ...] | None = None  # None: all the dataset's modalities
    fingerprint: str = ""  # the dataset build's fingerprint ("" when not known, e.g. in unit tests)
    settings: str = ""  # settings_digest of the model's resolved settings ("" when not known)
    code: str = ""  # mmer.code's code_digest of the model's and the runner's sources ("" when not known)

    @property
    def key(self) -> str:
        """The cell's place in the grid (what it is), independent of the data build and settings."""
        subset = "+".join(self.modalities) if self.modalities else "all"
        return f"{self.model}|{self.dataset}|fold={self.fold}|seed={self.seed}|modalities={subset}"

    @property
    def identity(self) -> str:
        """The grid place plus what it is computed from (data, settings, code): a record is reused only under the
        same identity."""
        return f"{self.key}|data={self.fingerprint}|settings={self.settings}|code={self.code}"


def model_slug(name: str) -> str:
    """A model name as a folder name: lower case, "w/o" as "no" (the one spelling of the ablations), runs of other
    characters as one '-' (``HHMPN w/o F2F`` -> ``hhmpn-no-f2f``, ``ML-GCN`` -> ``ml-gcn``)."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"w/o|\bwithout\b", "no", name.lower())).strip("-") or "model"


def run_folder(out_dir: Path, cell: Cell) -> Path:
    """``OUT/runs/<dataset>/<model-slug>/fold<k>-seed<s>-<modalities joined by + or "all">``: a cell's run."""
    subset = "+".join(cell.modalities) if cell.modalities else "all"
    return Path(out_dir) / RUNS_DIR / cell.dataset / model_slug(cell.model) / f"fold{cell.fold}-seed{cell.seed}-{subset}"


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


def select_on_validation(factory: Callable[..., object], grid: Mapping[str, Iterable] | Sequence[Mapping],
                         X_train, Y_train, X_valid, Y_valid,
                         score: Callable[[np.ndarray, np.ndarray], float] = micro_f1):
    """Pick hyper-parameters on the validation split: ``(best_params, model fitted on train)``.

    Every point of ``grid`` (a ``ParameterGrid`` spec: {name: values} or a list of such) is fitted as
    ``factory(**params).fit(X_train, Y_train)`` and scored by ``score(Y_valid, model.predict(X_valid))``
    (micro-F1 by default). The highest score wins; ties go to the earliest point in grid order. The
    returned model is the winner as fitted on train (no refit on train + valid); the test split is never
    seen. ``model.selection_scores_`` lists ``(params, score)`` for every point.
    """
    best_params, best_model, best_score, scores = None, None, -np.inf, []
    for params in ParameterGrid(grid):
        model = factory(**params).fit(X_train, Y_train)
        value = float(score(Y_valid, model.predict(X_valid)))
        scores.append((dict(params), value))
        if value > best_score:
            best_params, best_model, best_score = dict(params), model, value
    if best_model is None:
        raise ValueError("empty grid")
    best_model.selection_scores_ = scores
    return best_params, best_model



def decide(rule: str, valid_gold: np.ndarray, valid_probabilities: np.ndarray,
           default: float = DEFAULT_THRESHOLD) -> float:
    """The decision threshold a cell applies under ``rule``: ``default`` (0.5) for "0.5"; for "validation" the
    threshold with the best micro-F1 on the *validation* split (``mmer.metrics.choose_threshold``)."""
    if check_threshold_rule(rule) == "validation":
        return choose_threshold(valid_gold, valid_probabilities)[0]
    return float(default)


def _run_estimator(spec: ModelSpec, config: dict, info: DataInfo, datasets: dict, rule: str = DEFAULT_THRESHOLD_RULE,
                   empty_union: float = EMPTY_UNION_SCORE) -> dict:
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = (early_fused(datasets[s]) for s in
                                                                ("train", "valid", "test"))
    grid = config.get("grid") or {}
    with warnings.catch_warnings():  # capped solver iterations are a configuration choice, not news
        warnings.simplefilter("ignore", ConvergenceWarning)
        params, model = select_on_validation(lambda **p: spec.factory(config, info).set_params(**p), grid,
                                             x_train, y_train, x_valid, y_valid)
    if rule == "validation":  # C chosen at the estimator's own decision, then one threshold on predict_proba
        threshold = decide(rule, y_valid, model.predict_proba(x_valid))
        predicted, predicted_valid = (binarize(model.predict_proba(x), threshold) for x in (x_test, x_valid))
    else:  # the estimator's own decision: binarize(predict_proba) at 0.5 (LP: its label-combination vote)
        threshold = DEFAULT_THRESHOLD
        predicted, predicted_valid = model.predict(x_test), model.predict(x_valid)
    return {"test": evaluate(y_test, predicted, info.label_names, empty_union=empty_union),
            "valid": evaluate(y_valid, predicted_valid, info.label_names, empty_union=empty_union),
            "selected": params, "parameters": estimator_parameters(model), "threshold": float(threshold),
            "test_predictions": per_song_outcome(datasets["test"].ids, y_test, predicted), "model": model,
            "test_probabilities": model.predict_proba(x_test), "test_decisions": predicted}


def write_estimator_run(run_dir: Path, spec: ModelSpec, config: dict, info: DataInfo, datasets: dict, root: Path,
                        cell: Cell, outcome: dict, rule: str) -> None:
    """An estimator cell's run folder (``mmer.runs``; the fitted estimator in ``mmer.saved_estimators``' format, no
    pickle): what Table 5 and ``hhmpn-predict`` load. run.json's ``decision`` says how it decides as the cell did:
    "estimator" (its own ``predict``: LP's label-combination vote) under the 0.5 rule, "threshold" (p >= run.json's
    config.threshold) under the validation rule. Written after the cell's numbers, which it does not change."""
    start_run(run_dir)
    files = save_estimator(run_dir, outcome["model"], sys.modules[spec.factory.__module__])
    write_run(run_dir, model=spec.name, config=dict(config) | {"threshold": outcome["threshold"]}, info=info,
              fold=cell.fold, seed=cell.seed, statistics=datasets["train"].normalization, data=root,
              manifest=read_manifest(root),
              extra={"kind": "estimator", "extra_columns": list(spec.extra_columns), "selected": outcome["selected"],
                     "threshold_rule": rule, "decision": "estimator" if rule != "validation" else "threshold",
                     "files": {"estimator": files[0].name, "arrays": files[1].name,
                               "normalization": "normalization.json", "train_labels": "train_labels.npy"}})
    write_predictions(run_dir / "predictions-test.jsonl", prediction_records(
        datasets["test"].ids, outcome["test_probabilities"], info.label_names, outcome["threshold"], datasets["test"],
        decisions=outcome["test_decisions"]))


def train_neural(spec: ModelSpec, config: dict, info: DataInfo, datasets: dict, *, root: Path, fold: int | None,
                 seed: int, device: str | None = None, run_dir: Path | None = None,
                 progress: bool = False) -> tuple[TrainResult, dict, object]:
    """The one training entry point of every neural model (``hhmpn-train`` and the benchmark's cells).

    Builds the model with the registry's factory (as ``mmer.predict`` rebuilds it from run.json), trains on
    train, keeps the single epoch with the best validation micro-F1 and tests that checkpoint. With
    ``run_dir`` it writes the run folder (``mmer.runs``). Returns ``(TrainResult, test metrics, model)``."""
    seed_everything(seed)  # weight initialisation
    model = spec.factory(config, info)
    if run_dir is not None:
        start_run(run_dir)
    result, test = train_and_test(
        model, datasets, epochs=config["epochs"], lr=config["lr"], batch_size=config["batch_size"],
        clip=config.get("clip", DEFAULT_CLIP), threshold=config.get("threshold", DEFAULT_THRESHOLD), seed=seed,
        device=device, checkpoint_path=None if run_dir is None else run_dir / CHECKPOINT_FILE, progress=progress,
        label_names=info.label_names)
    if run_dir is not None:
        write_run(run_dir, model=spec.name, config=config, info=info, fold=fold, seed=seed,
                  statistics=datasets["train"].normalization, data=root, manifest=read_manifest(root),
                  extra={"extra_columns": list(spec.extra_columns)})
    return result, test, model


def train_run(data: Path, out: Path, model: str, config: Mapping, *, modalities: list[str] | None = None,
              fold: int | None = None, seed: int = 0, device: str | None = None, progress: bool = True,
              input_normalization: str = DEFAULT_INPUT_NORMALIZATION) -> dict:
    """Train the registered neural ``model`` with ``config`` on ``data`` (the published split, or CV rotation
    ``fold``) through :func:`train_neural`, write the run folder ``out`` and its ``metrics.json``; returns it."""
    out, data = Path(out), Path(data)
    spec = models()[resolve(model)]
    datasets = split_datasets(data, fold, modalities, input_normalization=input_normalization)
    info = data_info(read_manifest(data).get("dataset", "data"), data, datasets)
    result, test, _ = train_neural(spec, dict(config) | {"seed": seed}, info, datasets, root=data, fold=fold,
                                   seed=seed, device=device, run_dir=out, progress=progress)
    metrics = {"test": test, "valid": result.best_valid, "best_epoch": result.best_epoch,
               "selection": "single checkpoint with the best validation micro-F1",
               "num_parameters": result.num_parameters, "train_seconds": round(result.train_seconds, 2),
               "sizes": {split: len(ds) for split, ds in datasets.items()}, "run": read_run(out),
               "history": result.history}
    check_finite(metrics, f"{out / METRICS_FILE}")
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return metrics


def _run_neural(spec: ModelSpec, config: dict, info: DataInfo, datasets: dict, seed: int, device: str | None,
                run_dir: Path | None, root: Path, cell: Cell, rule: str = DEFAULT_THRESHOLD_RULE,
                empty_union: float = EMPTY_UNION_SCORE) -> dict:
    result, _, model = train_neural(spec, config, info, datasets, root=root, fold=cell.fold, seed=seed,
                                    device=device, run_dir=run_dir)
    # The selected checkpoint's probabilities (the epoch was chosen at config["threshold"], 0.5): the threshold
    # is decided on validation alone, then test is scored, recorded per song and written to the run folder at it.
    loaders = make_loaders({s: datasets[s] for s in ("valid", "test")}, config["batch_size"], seed)
    outcome = {}
    for split in ("valid", "test"):
        ids, probabilities = predict(model, loaders[split], device)
        gold = dict(zip(datasets[split].ids, datasets[split].labels))
        outcome[split] = (ids, np.asarray([gold[i] for i in ids]).reshape(len(ids), -1), probabilities)
    threshold = decide(rule, outcome["valid"][1], outcome["valid"][2], config.get("threshold", DEFAULT_THRESHOLD))
    ids, gold, probabilities = outcome["test"]
    if run_dir is not None:
        if rule == "validation":  # hhmpn-predict on this folder decides as the cell did (run.json's threshold)
            run = read_run(run_dir)
            run["config"]["threshold"], run["threshold_rule"] = float(threshold), rule
            atomic_write_text(run_dir / RUN_FILE, json.dumps(run, indent=2, ensure_ascii=False) + "\n")
        write_predictions(run_dir / "predictions-test.jsonl", prediction_records(
            ids, probabilities, info.label_names, threshold, datasets["test"]))
    scored = {split: evaluate(y, binarize(p, threshold), info.label_names, empty_union=empty_union)
              for split, (_, y, p) in outcome.items()}
    return {"test": scored["test"], "valid": scored["valid"], "selected": {"epoch": result.best_epoch},
            "parameters": result.num_parameters, "threshold": float(threshold),
            "test_predictions": per_song_outcome(ids, gold, binarize(probabilities, threshold))}


def per_song_outcome(ids, gold, predicted) -> dict:
    """A cell's per-song test outcome, as stored with its record (paired per-song tests pool these over
    rotations): ids, and each song's gold and predicted label sets as 0/1 strings in label order."""
    def bits(rows) -> list[str]:
        return ["".join("1" if v > 0 else "0" for v in row) for row in np.asarray(rows)]

    return {"ids": [str(i) for i in ids], "gold": bits(gold), "predicted": bits(predicted)}


def run_cell(cell: Cell, spec: ModelSpec, root: Path, profile: str, *, device: str | None = None,
             overrides: dict | None = None, out_dir: Path | None = None,
             input_normalization: str = DEFAULT_INPUT_NORMALIZATION, threshold: str | None = None,
             empty_union: float | None = None) -> dict:
    """Train and test ``spec`` on ``cell``; returns the record for the results store.

    ``overrides`` replaces entries of the profile's configuration (e.g. ``{"epochs": 1}`` for smoke runs).
    With ``out_dir``, every cell (neural or estimator) writes its run folder ``run_folder(out_dir, cell)`` (path in
    the record's ``run_dir``).
    ``input_normalization``: ``"standardize"`` (default, the protocol) or ``"raw"``. ``threshold`` ("0.5" or
    "validation") and ``empty_union`` (0 or 1), when given, set the run-level settings (:func:`run_settings`; the
    same as passing them in ``overrides``, which is how ``baselines.run_all`` hands them to every cell).
    """
    if threshold is not None or empty_union is not None:
        current = RUN_SETTINGS | dict(overrides or {})
        overrides = dict(overrides or {}) | run_settings(current["threshold_rule"] if threshold is None else threshold,
                                                         current["empty_union"] if empty_union is None else empty_union)
    base = {"key": cell.key, "model": spec.name, "group": spec.group, "dataset": cell.dataset, "fold": cell.fold,
            "seed": cell.seed, "input_normalization": input_normalization}
    reason = missing_columns(root, spec.extra_columns)
    if reason is not None:
        return base | {"modalities": list(cell.modalities or modality_names(root)), "status": "not_applicable",
                       "reason": reason}
    datasets = split_datasets(root, cell.fold, cell.modalities, spec.extra_columns,
                              input_normalization=input_normalization)
    info = data_info(cell.dataset, root, datasets)
    base["modalities"] = list(info.modality_dims)
    base["dataset_fingerprint"] = dataset_fingerprint(read_manifest(root))
    reason = spec.applicable(info)
    if reason is not None:
        return base | {"status": "not_applicable", "reason": reason}
    settings = resolved_settings(spec, profile, overrides, input_normalization)
    if cell.settings and cell.settings != settings_digest(settings):
        raise ValueError(f"cell {cell.key}: its settings digest {cell.settings} is not that of the settings it "
                         f"would run with ({settings_digest(settings)}); build cells and runs from one "
                         f"resolved_settings()")
    rule, empty_union = settings["threshold_rule"], float(settings["empty_union"])
    config = ({k: v for k, v in settings.items() if k != "input_normalization" and k not in RUN_SETTINGS}
              | {"seed": cell.seed})
    code = model_code(spec.factory)
    if cell.code and cell.code != code["code_digest"]:  # the sources changed since the grid was made
        raise ValueError(f"cell {cell.key}: its code digest {cell.code} is not that of the sources it would run "
                         f"with ({code['code_digest']}); the code changed under the benchmark")
    _reset_peak_rss()
    started = time.perf_counter()
    run_dir = None
    if spec.kind == "estimator":
        outcome = _run_estimator(spec, config, info, datasets, rule, empty_union)
        if out_dir is not None:
            run_dir = run_folder(out_dir, cell)
            try:
                write_estimator_run(run_dir, spec, config, info, datasets, root, cell, outcome, rule)
            except EstimatorFileError as exc:  # an estimator of classes the safe format does not know: no folder
                outcome["run_folder_error"] = str(exc)
                try:
                    run_dir.rmdir()  # empty: the estimator is encoded before anything is written
                except OSError:
                    pass
                run_dir = None
    else:
        run_dir = run_folder(out_dir, cell) if out_dir is not None else None
        outcome = _run_neural(spec, config, info, datasets, cell.seed, device, run_dir, root, cell, rule, empty_union)
    seconds = time.perf_counter() - started
    test = outcome["test"]
    record = base | {
        "status": "ok",
        "metrics": {k: float(test[k]) for k in METRIC_KEYS},
        "per_label_f1": {name: float(v["f1"]) for name, v in test["per_label"].items()},
        "valid_micro_f1": float(outcome["valid"]["micro_f1"]),
        "selected": outcome["selected"],
        "run_seconds": round(seconds, 3),
        "parameters": int(outcome["parameters"]),
        "peak_memory_mb": _peak_rss_mb(),
        "sizes": {split: len(ds) for split, ds in datasets.items()},
        # what the factory got, and the run-level settings (the input setting is top-level)
        "settings": dict(config) | {"threshold_rule": rule, "empty_union": empty_union},
        "threshold": outcome["threshold"],  # the decision threshold applied to test (and to test_predictions)
        "threshold_rule": rule,
        "empty_union": empty_union,  # Acc of an empty gold + empty prediction row
        "training_keys": [k for k in TRAINING_KEYS if k in config],
        "test_predictions": outcome["test_predictions"],
        **code,  # code_files, code_digest, package_version, git_commit (mmer.code)
    }
    if run_dir is not None:
        record["run_dir"] = str(run_dir)
    if "run_folder_error" in outcome:
        record["run_folder_error"] = outcome["run_folder_error"]
    return record
