"""Predictions from a run folder of any model (HHMPN, a neural baseline or an estimator), as a library.

A run folder (``mmer.runs``) is loaded once (:func:`load_run`): a neural model is rebuilt from the registry and
its weights loaded, an estimator loaded from its pickle-free files (``mmer.saved_estimators``; it predicts from
the early-fused inputs, ``mmer.early_fusion``, and decides as its cell did: run.json's ``decision``), the
run's saved input-normalisation statistics are applied to the data, and the data must have the run's labels
and modality dimensions. A run folder that cannot be used raises :class:`mmer.runs.RunFolderError` with a
one-line message. Output records (:func:`prediction_records`): ``id``, ``probabilities`` {label: p},
``predicted`` (``mmer.metrics.binarize``: p >= threshold) and ``labels`` (the true set, when the data has it).
New songs from raw files: ``mmer.inference``. The command line is ``pipelines.predict`` (``hhmpn-predict``)::

    from mmer.predict import load_run, predict_split
    run = load_run("RUN")
    result = predict_split(run, "OUT")                  # the run's own rotation, its test split
    result.records, result.skipped, result.trained_on    # trained_on: the run's splits these songs were in
    ids, probabilities = run.predict_dataset(run.dataset("OUT", "test"))   # the published test split folders
    predict_split(run, "OUT", perturbations=[parse("drop:lyrics")])          # inputs broken at prediction: mmer.perturb

What prediction promises: the data is the run's own build (``mmer.runs.check_build``: labels, dims and the
manifest's fingerprint), the run's statistics are usable in float32 (``mmer.runs.read_statistics``) and give
finite features, no non-finite probability is ever returned as a record or written (ValueError instead),
songs with no node in any of the run's modalities are skipped and named (the build quarantines such songs),
and nothing is written anywhere but the file the caller names. Perturbations (``mmer.perturb``) apply after
that rule and after normalisation: a song whose every modality is dropped is predicted from empty input (the
run's :meth:`LoadedRun.empty_input_probabilities`), not skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import sys
from collections.abc import Sequence

from mmer.early_fusion import mean_pooled
from mmer.engine import predict
from mmer.metrics import DEFAULT_THRESHOLD, binarize
from mmer.perturb import Perturbation, PerturbedDataset, check as check_perturbations, parse  # noqa: F401
from mmer.registry import DataInfo, models
from mmer.runs import (CHECKPOINT_FILE, RunFolderError, check_state_fits, find_dataset, load_state_dict,
                       read_build, read_run, read_statistics, read_train_labels)
from mmer.saved_estimators import EstimatorFileError, load_estimator
from nemu.atomic import atomic_write_text
from nemu.loading import MMERDataset, collate
from nemu.normalization import NodeStatistics
from nemu.splits import HF_SPLIT_NAMES, cv_rotation, split_key


@dataclass
class LoadedRun:
    """A run folder loaded once: the rebuilt model with its weights (or the fitted estimator), its settings and its
    input statistics."""

    run_dir: Path
    run: dict
    model: object  # torch.nn.Module, in eval mode; or a fitted estimator (kind "estimator")
    statistics: NodeStatistics
    threshold: float
    device: str | None = None
    kind: str = "neural"

    @property
    def label_names(self) -> list[str]:
        return list(self.run["labels"])

    @property
    def modality_dims(self) -> dict[str, int]:
        return dict(self.run["modality_dims"])

    def check_dataset(self, dataset) -> None:
        """RunFolderError when ``dataset`` (an MMERDataset) has other labels or modality dims than the run."""
        where = getattr(dataset, "root", "the data")
        if list(dataset.label_names) != self.label_names:
            raise RunFolderError(f"{where}: labels {dataset.label_names} differ from the run's {self.label_names} "
                                 f"({self.run_dir})")
        if dict(dataset.modality_dims) != self.modality_dims:
            raise RunFolderError(f"{where}: modality dims {dict(dataset.modality_dims)} differ from the run's "
                                 f"{self.modality_dims} ({self.run_dir})")

    @property
    def fold(self) -> int | None:
        """The run's rotation (run.json's fold); None for a run trained on the published split folders."""
        return self.run.get("fold")

    def find_dataset(self) -> Path:
        """The run's own dataset where it is now (``mmer.runs.find_dataset``)."""
        return find_dataset(self.run_dir, self.run)

    def dataset(self, data: str | Path | None = None, split: str | None = "test", folds=None):
        """The run's modalities of ``data``'s ``split`` (or of ``folds``), normalised with the run's statistics.

        ``data`` must be the run's build (``mmer.runs.check_build``); None finds the run's own dataset."""
        data = self.find_dataset() if data is None else Path(data)
        read_build(data, self.run, self.run_dir)
        extra = self.run.get("extra_columns") or []
        dataset = MMERDataset(data, split, list(self.modality_dims), folds=folds, extra_columns=extra)
        self.check_dataset(dataset)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below, naming the file
            dataset.apply_normalization(self.statistics)
        check_finite_features(dataset.node_values(), data, self.run_dir)
        return dataset

    def predict_dataset(self, dataset, batch_size: int = 64) -> tuple[list[str], np.ndarray]:
        """(ids, probabilities (N, L)) of a dataset whose features are already normalised by :meth:`dataset`."""
        from torch.utils.data import DataLoader


        if getattr(dataset, "normalization", None) is None or not dataset.normalization.same_as(self.statistics):
            raise RunFolderError(f"{getattr(dataset, 'root', 'the data')}: features are not normalised with the "
                                 f"run's statistics; get the dataset from LoadedRun.dataset")
        if self.kind == "estimator":
            return list(dataset.ids), np.asarray(self.model.predict_proba(mean_pooled(dataset)), dtype=np.float32)
        return predict(self.model, DataLoader(dataset, batch_size=batch_size, collate_fn=collate), self.device)

    def decide(self, dataset, probabilities) -> np.ndarray:
        """The run's 0/1 decisions for ``dataset`` (the songs of ``probabilities``, in order), as its cell decided:
        p >= the run's threshold; an estimator whose run.json says ``decision`` "estimator" by its own
        ``predict`` (LP's label-combination vote differs from thresholding its marginals)."""
        if self.kind == "estimator" and self.run.get("decision") == "estimator" and len(dataset):
            return np.asarray(self.model.predict(mean_pooled(dataset))).astype(np.int8)
        return binarize(np.asarray(probabilities).reshape(-1, len(self.label_names)), self.threshold)

    def predict_songs(self, dataset, batch_size: int = 64, perturbations: Sequence[Perturbation] = (),
                      seed: int = 0) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
        """(ids, probabilities, skipped ids, decisions): :meth:`predict_dataset` and :meth:`decide` of the songs
        that have a node in at least one of the run's modalities; the others are skipped (the build quarantines
        such songs), in order. ``perturbations`` (``mmer.perturb``, drawn from ``seed``) then break the kept
        songs' inputs."""
        check_perturbations(perturbations, list(self.modality_dims))
        empty = songs_without_nodes(dataset, list(self.modality_dims))
        if not empty:
            kept = dataset
        else:
            gone = set(empty)
            kept = _Rows(dataset, [i for i in range(len(dataset)) if i not in gone])
        skipped = [dataset.ids[i] for i in empty]
        if len(kept) == 0:
            return ([], np.zeros((0, len(self.label_names)), dtype=np.float32), skipped,
                    np.zeros((0, len(self.label_names)), dtype=np.int8))
        if perturbations:
            kept = PerturbedDataset(kept, perturbations, seed)
        ids, probabilities = self.predict_dataset(kept, batch_size)
        return list(ids), probabilities, skipped, self.decide(kept, probabilities)

    def empty_input_probabilities(self) -> np.ndarray:
        """(L,): what the run predicts for a song with no node in any modality (every mask empty, or every
        has_nodes 0 for an estimator): the prediction of a song whose every modality is dropped."""
        ids, probabilities = self.predict_dataset(_EmptySongs(self.modality_dims, len(self.label_names),
                                                              self.statistics))
        return np.asarray(probabilities)[0]

    def records(self, ids, probabilities, dataset=None, decisions=None) -> list[dict]:
        """predict's output records (:func:`prediction_records`) with the run's labels and threshold (or the run's
        own ``decisions``, :meth:`decide`)."""
        return prediction_records(ids, probabilities, self.label_names, self.threshold, dataset, decisions)


def prediction_records(ids, probabilities, label_names, threshold: float, dataset=None, decisions=None) -> list[dict]:
    """predict's output records: id, probabilities {label: p}, predicted set (p >= threshold, or ``decisions``,
    an (N, L) 0/1 array, where the model decides otherwise: LP's vote), and the true set (``labels``) when
    ``dataset`` has the sample."""
    truth = {sample_id: row for sample_id, row in zip(dataset.ids, dataset.labels)} if dataset is not None else {}
    out = []
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(ids), len(label_names))
    bad = ~np.isfinite(probabilities)
    if bad.any():
        row, column = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"{int(bad.any(axis=1).sum())} song(s) got a non-finite probability (first {ids[row]!r}, "
                         f"{label_names[column]}: {probabilities[row, column]}); nothing is written: the model's "
                         f"weights or its normalisation statistics are damaged, or the data does not fit them")
    if decisions is None:
        decisions = binarize(np.asarray(probabilities).reshape(len(ids), len(label_names)), threshold)
    decisions = np.asarray(decisions).reshape(len(ids), len(label_names))
    for sample_id, probs, decided in zip(ids, probabilities, decisions):
        record = {"id": sample_id,
                  "probabilities": {name: round(float(p), 6) for name, p in zip(label_names, probs)},
                  "predicted": [name for name, positive in zip(label_names, decided) if positive]}
        if sample_id in truth:
            record["labels"] = [name for name, y in zip(label_names, truth[sample_id]) if y]
        out.append(record)
    return out


def load_run(run_dir: str | Path, device: str | None = None) -> LoadedRun:
    """Load a run folder: rebuild its registered model, load the weights, read its statistics.

    Raises :class:`mmer.runs.RunFolderError` (a ValueError with a one-line message) for any folder
    that cannot be used.
    """
    import torch


    run_dir = Path(run_dir)
    run = read_run(run_dir)
    statistics = read_statistics(run_dir, run)
    registry = models()
    spec = registry.get(run["model"])
    if spec is None:
        raise RunFolderError(f"{run_dir}: model {run['model']!r} is not registered here "
                             f"(registered: {', '.join(registry)})")
    kind = run.get("kind", "neural")
    if spec.kind != kind:
        raise RunFolderError(f"{run_dir}: model {run['model']!r} is a {spec.kind}, but run.json holds a {kind}")
    threshold = float(run["config"].get("threshold", DEFAULT_THRESHOLD))
    if kind == "estimator":
        try:
            estimator = load_estimator(run_dir, sys.modules[spec.factory.__module__])
        except EstimatorFileError as exc:
            raise RunFolderError(str(exc)) from None
        return LoadedRun(run_dir, run, estimator, statistics, threshold, device, kind)
    state = load_state_dict(run_dir)
    info = DataInfo(dataset=str(run.get("dataset", "")), modality_dims=dict(run["modality_dims"]),
                    label_names=list(run["labels"]), train_labels=read_train_labels(run_dir, run),
                    columns=tuple(run.get("columns") or ()))
    try:
        model = spec.factory(dict(run["config"]), info)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(f"{run_dir}/run.json: config does not build {run['model']} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    check_state_fits(model, state, run_dir / CHECKPOINT_FILE)
    model.load_state_dict(state)
    if device is not None:
        model.to(torch.device(device))
    model.eval()
    return LoadedRun(run_dir, run, model, statistics, threshold, device)


def prediction_lines(records: list[dict]) -> str:
    """JSON lines of predict's records; strict JSON (a non-finite number raises ValueError, never ``NaN``)."""
    return "".join(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records)


def write_predictions(path: Path, records: list[dict]) -> Path:
    """Write records as JSON lines, atomically (a refused or interrupted write leaves no partial file)."""
    path = Path(path)
    text = prediction_lines(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def check_finite_features(node_values: dict, data, run_dir) -> None:
    """ValueError when normalising with the run's statistics gave a non-finite feature (float32 overflow)."""
    for modality, values in node_values.items():
        values = np.asarray(values)
        if values.size and not np.isfinite(values).all():
            raise RunFolderError(f"{data}: {modality} features normalised with {Path(run_dir) / 'normalization.json'}"
                                 f" are not finite in float32: the statistics do not fit this data (damaged or "
                                 f"another run's); restore the run folder or retrain")


def songs_without_nodes(dataset, modalities: list[str]) -> list[int]:
    """Indices of the songs of ``dataset`` with no node in any of ``modalities``."""
    out = []
    for index in range(len(dataset)):
        features = dataset[index]["features"]
        if all(len(features[m]) == 0 for m in modalities if m in features):
            out.append(index)
    return out


class _Rows:
    """Some rows of a dataset (what predict keeps), with the attributes predict_dataset reads."""

    def __init__(self, dataset, rows: list[int]):
        self.dataset, self.rows = dataset, rows
        self.root = getattr(dataset, "root", "the data")
        self.normalization = getattr(dataset, "normalization", None)
        self.ids = [dataset.ids[i] for i in rows]
        self.modality_dims = dict(dataset.modality_dims)
        if getattr(dataset, "labels", None) is not None:
            self.labels = np.asarray(dataset.labels)[rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.rows[index]]


class _EmptySongs:
    """One song with no node in any modality, as normalised input (the run's empty-input prediction)."""

    def __init__(self, modality_dims: dict[str, int], num_labels: int, statistics):
        self.root, self.ids, self.normalization = "an empty song", ["(empty)"], statistics
        self.modality_dims = dict(modality_dims)
        self.labels = np.zeros((1, num_labels), dtype=np.float32)
        self._nodes = {m: (np.zeros((0, dim), dtype=np.float32), np.zeros(2, dtype=np.int64))
                       for m, dim in modality_dims.items()}

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        import torch

        return {"id": self.ids[index], "labels": torch.from_numpy(self.labels[index]),
                "features": {m: torch.from_numpy(values) for m, (values, _) in self._nodes.items()}}


def rotation_folds(fold: int | None, split: str) -> list[int]:
    """The folds of ``split`` in rotation ``fold`` (None: the published split folders, which are rotation 0)."""
    return cv_rotation(0 if fold is None else fold)[split_key(split)]


def trained_on(run_fold: int | None, fold: int | None, split: str) -> list[str]:
    """The run's own splits (``train``, ``validation``) that hold songs of rotation ``fold``'s ``split``: where a
    prediction would grade the run on songs it was trained or selected on. Empty when none."""
    asked, own = set(rotation_folds(fold, split)), cv_rotation(0 if run_fold is None else run_fold)
    return [HF_SPLIT_NAMES[s] for s in ("train", "valid") if asked & set(own[s])]


def describe_rotation(fold: int | None) -> str:
    return "the published split folders, rotation 0" if fold is None else f"rotation {fold}"


@dataclass
class SplitPrediction:
    """Predictions of one split of a built dataset: ``records`` (predict's format, the dataset's order), the
    ids skipped for having no node in the run's modalities, and what was predicted: ``fold`` (None: the
    published split folders), ``split``, ``threshold``, and ``trained_on`` (the run's splits among them)."""

    records: list[dict]
    skipped: list[str]
    fold: int | None
    split: str
    threshold: float
    data: Path
    trained_on: list[str] = field(default_factory=list)
    run_fold: int | None = None
    perturbations: tuple = ()
    perturb_seed: int = 0


def predict_split(run: "LoadedRun | str | Path", data: str | Path | None = None, split: str = "test",
                  fold: int | None = None, *, batch_size: int = 64, device: str | None = None,
                  perturbations: Sequence[Perturbation] = (), perturb_seed: int = 0) -> SplitPrediction:
    """Predict ``data``'s ``split`` with a run (a :class:`LoadedRun` or a run folder, loaded then).

    ``fold`` None predicts the run's OWN rotation (run.json's fold; the published split folders for a run
    trained on them), so its ``test`` split is the songs the run never saw; ``data`` None finds the run's own
    dataset (relative to the run folder first). ``perturbations`` (``mmer.perturb``, drawn from ``perturb_seed``)
    break the inputs of the predicted songs. Writes nothing; :func:`write_predictions` writes the records."""
    if not isinstance(run, LoadedRun):
        run = load_run(run, device)
    data = run.find_dataset() if data is None else Path(data)
    key = split_key(split)
    fold = run.fold if fold is None else fold
    dataset = run.dataset(data, key) if fold is None else run.dataset(data, None, cv_rotation(fold)[key])
    ids, probabilities, skipped, decisions = run.predict_songs(dataset, batch_size, perturbations, perturb_seed)
    return SplitPrediction(run.records(ids, probabilities, dataset, decisions), skipped, fold,
                           HF_SPLIT_NAMES.get(key, key), run.threshold, data, trained_on(run.fold, fold, key), run.fold,
                           tuple(perturbations), perturb_seed)
