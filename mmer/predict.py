"""Predictions from a run folder of any neural model (HHMPN or a baseline), as a library.

A run folder (``mmer.runs``) is loaded once (:func:`load_run`): the model is rebuilt from the registry, the
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

What prediction promises: the data is the run's own build (``mmer.runs.check_build``: labels, dims and the
manifest's fingerprint), the run's statistics are usable in float32 (``mmer.runs.read_statistics``) and give
finite features, no non-finite probability is ever returned as a record or written (ValueError instead),
songs with no node in any of the run's modalities are skipped and named (the build quarantines such songs),
and nothing is written anywhere but the file the caller names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmer.engine import predict
from mmer.metrics import DEFAULT_THRESHOLD, binarize
from mmer.registry import DataInfo, models
from mmer.runs import (CHECKPOINT_FILE, RunFolderError, check_state_fits, find_dataset, load_state_dict,
                       read_build, read_run, read_statistics, read_train_labels)
from nemu.atomic import atomic_write_text
from nemu.loading import MMERDataset, collate
from nemu.normalization import NodeStatistics
from nemu.splits import HF_SPLIT_NAMES, cv_rotation, split_key


@dataclass
class LoadedRun:
    """A run folder loaded once: the rebuilt model with its weights, its settings and its input statistics."""

    run_dir: Path
    run: dict
    model: object  # torch.nn.Module, in eval mode
    statistics: NodeStatistics
    threshold: float
    device: str | None = None

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
        return predict(self.model, DataLoader(dataset, batch_size=batch_size, collate_fn=collate), self.device)

    def predict_songs(self, dataset, batch_size: int = 64) -> tuple[list[str], np.ndarray, list[str]]:
        """(ids, probabilities, skipped ids): :meth:`predict_dataset` of the songs that have a node in at least
        one of the run's modalities; the others are skipped (the build quarantines such songs), in order."""
        empty = songs_without_nodes(dataset, list(self.modality_dims))
        if not empty:
            kept = dataset
        else:
            gone = set(empty)
            kept = _Rows(dataset, [i for i in range(len(dataset)) if i not in gone])
        skipped = [dataset.ids[i] for i in empty]
        if len(kept) == 0:
            return [], np.zeros((0, len(self.label_names)), dtype=np.float32), skipped
        ids, probabilities = self.predict_dataset(kept, batch_size)
        return list(ids), probabilities, skipped

    def records(self, ids, probabilities, dataset=None) -> list[dict]:
        """predict's output records (:func:`prediction_records`) with the run's labels and threshold."""
        return prediction_records(ids, probabilities, self.label_names, self.threshold, dataset)


def prediction_records(ids, probabilities, label_names, threshold: float, dataset=None) -> list[dict]:
    """predict's output records: id, probabilities {label: p}, predicted set (p >= threshold), and the
    true set (``labels``) when ``dataset`` has the sample."""
    truth = {sample_id: row for sample_id, row in zip(dataset.ids, dataset.labels)} if dataset is not None else {}
    out = []
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(ids), len(label_names))
    bad = ~np.isfinite(probabilities)
    if bad.any():
        row, column = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"{int(bad.any(axis=1).sum())} song(s) got a non-finite probability (first {ids[row]!r}, "
                         f"{label_names[column]}: {probabilities[row, column]}); nothing is written: the model's "
                         f"weights or its normalisation statistics are damaged, or the data does not fit them")
    decisions = binarize(np.asarray(probabilities).reshape(len(ids), len(label_names)), threshold)
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
    if spec.kind != "neural":
        raise RunFolderError(f"{run_dir}: model {run['model']!r} is a {spec.kind}, not a neural model")
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
    threshold = float(run["config"].get("threshold", DEFAULT_THRESHOLD))
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

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.rows[index]]


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


def predict_split(run: "LoadedRun | str | Path", data: str | Path | None = None, split: str = "test",
                  fold: int | None = None, *, batch_size: int = 64, device: str | None = None) -> SplitPrediction:
    """Predict ``data``'s ``split`` with a run (a :class:`LoadedRun` or a run folder, loaded then).

    ``fold`` None predicts the run's OWN rotation (run.json's fold; the published split folders for a run
    trained on them), so its ``test`` split is the songs the run never saw; ``data`` None finds the run's own
    dataset (relative to the run folder first). Writes nothing; :func:`write_predictions` writes the records."""
    if not isinstance(run, LoadedRun):
        run = load_run(run, device)
    data = run.find_dataset() if data is None else Path(data)
    key = split_key(split)
    fold = run.fold if fold is None else fold
    dataset = run.dataset(data, key) if fold is None else run.dataset(data, None, cv_rotation(fold)[key])
    ids, probabilities, skipped = run.predict_songs(dataset, batch_size)
    return SplitPrediction(run.records(ids, probabilities, dataset), skipped, fold, HF_SPLIT_NAMES.get(key, key),
                           run.threshold, data, trained_on(run.fold, fold, key), run.fold)
