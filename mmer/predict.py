"""Predictions from a run folder of any neural model (HHMPN or a baseline), as a library.

A run folder (``mmer.runs``) is loaded once (:func:`load_run`): the model is rebuilt from the registry, the
run's saved input-normalisation statistics are applied to the data, and the data must have the run's labels
and modality dimensions. A run folder that cannot be used raises :class:`mmer.runs.RunFolderError` with a
one-line message. Output records (:func:`prediction_records`): ``id``, ``probabilities`` {label: p},
``predicted`` (``mmer.metrics.binarize``: p >= threshold) and ``labels`` (the true set, when the data has it).
New songs from raw files: ``mmer.inference``. The command line is ``pipelines.predict`` (``hhmpn-predict``)::

    from mmer.predict import load_run
    run = load_run("RUN")
    ids, probabilities = run.predict_dataset(run.dataset("OUT", "test"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmer.engine import predict
from mmer.metrics import DEFAULT_THRESHOLD, binarize
from mmer.registry import DataInfo, models
from mmer.runs import (CHECKPOINT_FILE, RunFolderError, check_state_fits, load_state_dict, read_run,
                       read_statistics, read_train_labels)
from nemu.loading import MMERDataset, collate
from nemu.normalization import NodeStatistics
from nemu.shards import read_manifest
from nemu.splits import cv_rotation


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

    def dataset(self, data: str | Path, split: str = "test", folds=None):
        """The run's modalities of ``data``'s ``split`` (or of ``folds``), normalised with the run's statistics."""
        manifest = read_manifest(Path(data))
        dims = {m["name"]: m["dim"] for m in manifest["modalities"]}
        absent = [m for m in self.modality_dims if m not in dims]
        if absent:
            raise RunFolderError(f"{data}: has no modality {absent[0]!r}, which the run {self.run_dir} needs "
                                 f"(it has {', '.join(dims)})")
        extra = self.run.get("extra_columns") or []
        dataset = MMERDataset(data, split, list(self.modality_dims), folds=folds, extra_columns=extra)
        self.check_dataset(dataset)
        dataset.apply_normalization(self.statistics)
        return dataset

    def predict_dataset(self, dataset, batch_size: int = 64) -> tuple[list[str], np.ndarray]:
        """(ids, probabilities (N, L)) of a dataset whose features are already normalised by :meth:`dataset`."""
        from torch.utils.data import DataLoader


        if getattr(dataset, "normalization", None) is None or not dataset.normalization.same_as(self.statistics):
            raise RunFolderError(f"{getattr(dataset, 'root', 'the data')}: features are not normalised with the "
                                 f"run's statistics; get the dataset from LoadedRun.dataset")
        return predict(self.model, DataLoader(dataset, batch_size=batch_size, collate_fn=collate), self.device)

    def records(self, ids, probabilities, dataset=None) -> list[dict]:
        """predict's output records (:func:`prediction_records`) with the run's labels and threshold."""
        return prediction_records(ids, probabilities, self.label_names, self.threshold, dataset)


def prediction_records(ids, probabilities, label_names, threshold: float, dataset=None) -> list[dict]:
    """predict's output records: id, probabilities {label: p}, predicted set (p >= threshold), and the
    true set (``labels``) when ``dataset`` has the sample."""
    truth = {sample_id: row for sample_id, row in zip(dataset.ids, dataset.labels)} if dataset is not None else {}
    out = []
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


def write_predictions(path: Path, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def predict_run(run_dir: Path, data: Path, split: str, output: Path | None = None, device: str | None = None,
                batch_size: int = 64, fold: int | None = None) -> Path:
    """Predict ``data``'s ``split`` (of CV rotation ``fold`` when given) with the run in ``run_dir``;
    returns the JSON-lines file written."""

    run = load_run(run_dir, device)
    dataset = run.dataset(data, split) if fold is None else run.dataset(data, None, cv_rotation(fold)[split])
    ids, probabilities = run.predict_dataset(dataset, batch_size)
    output = Path(output) if output else Path(run_dir) / f"predictions-{split}.jsonl"
    return write_predictions(output, run.records(ids, probabilities, dataset))
