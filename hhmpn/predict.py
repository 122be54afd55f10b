"""Per-sample probabilities and label sets from a run folder of any neural model (HHMPN or a baseline).

    hhmpn-predict --run RUN --data OUT --split test [--output FILE]
    hhmpn-predict --run RUN --raw RAW [--output FILE]                    # new songs, no tags needed
    hhmpn-predict --run RUN --lyrics FILE --audio FILE --image FILE... [--comments FILE]   # one song

RUN is a run folder written by ``hhmpn.train`` or by a neural cell of ``baselines.run_all``
(``OUT/runs/<dataset>/<model>/fold<k>-seed<s>-<modalities>/``; see ``hhmpn.runs``). The model is rebuilt
from the registry, the run's saved input-normalisation statistics are applied to the data, and the data
must have the run's labels and modality dimensions. A run folder that cannot be used (missing files,
unreadable run.json, a checkpoint that is not a weights-only state_dict or does not fit the model, other
labels or dims than the data) is refused with a one-line error and exit code 2.

Writes JSON lines (default ``RUN/predictions-{split}.jsonl``): ``id``, ``probabilities`` {label: p},
``predicted`` (labels with p >= threshold), and ``labels`` (the true set, when the data has it).

New songs (``--raw`` or one song's files) are featurised with exactly the settings of the dataset the run was
trained on, read from its manifest, by the build's own code, then normalised with the run's statistics
(``hhmpn.inference``; output on standard output unless ``--output``). From Python: ``hhmpn.inference.Predictor``.

From Python (load once, predict many)::

    from hhmpn.predict import load_run
    run = load_run("RUN")
    ids, probabilities = run.predict_dataset(run.dataset("OUT", "test"))
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hhmpn.runs import (CHECKPOINT_FILE, RunFolderError, check_state_fits, load_state_dict, read_run,
                        read_statistics, read_train_labels)
from nemu import cli
from nemu.normalization import NodeStatistics


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
        from nemu.loading import MMERDataset
        from nemu.shards import read_manifest

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

        from hhmpn.engine import predict
        from nemu.loading import collate

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
    for sample_id, probs in zip(ids, probabilities):
        record = {"id": sample_id,
                  "probabilities": {name: round(float(p), 6) for name, p in zip(label_names, probs)},
                  "predicted": [name for name, p in zip(label_names, probs) if p >= threshold]}
        if sample_id in truth:
            record["labels"] = [name for name, y in zip(label_names, truth[sample_id]) if y]
        out.append(record)
    return out


def load_run(run_dir: str | Path, device: str | None = None) -> LoadedRun:
    """Load a run folder: rebuild its registered model, load the weights, read its statistics.

    Raises :class:`hhmpn.runs.RunFolderError` (a ValueError with a one-line message) for any folder
    that cannot be used.
    """
    import torch

    from baselines.registry import DataInfo, models

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
    threshold = float(run["config"].get("threshold", 0.5))
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
    from nemu.splits import cv_rotation

    run = load_run(run_dir, device)
    dataset = run.dataset(data, split) if fold is None else run.dataset(data, None, cv_rotation(fold)[split])
    ids, probabilities = run.predict_dataset(dataset, batch_size)
    output = Path(output) if output else Path(run_dir) / f"predictions-{split}.jsonl"
    return write_predictions(output, run.records(ids, probabilities, dataset))


def parser() -> argparse.ArgumentParser:
    p = cli.command_parser("hhmpn.predict", __doc__)
    cli.add_run(p, aliases=("--checkpoint",))  # or a run_all cell's: RESULTS/runs/DATASET/MODEL/CELL
    cli.add_data(p, required=False,
                 more="its --split is predicted (required then); with --raw or a song's files: the dataset the run "
                      "was trained on, where it is now (default: RUN/run.json's)")
    cli.add_split(p)
    cli.add_fold(p, help_default="the published split folders; with it, --split is taken from rotation K, as "
                                 "run_all's cell for fold K did")
    cli.add_output(p, "JSON lines, one per sample (default: RUN/predictions-SPLIT.jsonl; new songs: standard "
                      "output)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    from hhmpn.inference import add_new_song_arguments  # here: hhmpn.inference imports this module

    add_new_song_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except RuntimeError as exc:
            print(f"hhmpn.predict: error: --device {args.device!r}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
    from hhmpn.inference import predict_new_songs, wants_new_songs

    try:
        if wants_new_songs(args):  # --raw RAW or one song's files
            return predict_new_songs(args, args.run)
        if args.data is None:
            raise ValueError("--data DATA is required (or --raw RAW, or one song's --lyrics/--audio/--image/"
                             "--comments files)")
        path = predict_run(args.run, args.data, args.split, args.output, args.device, args.batch_size,
                           args.fold)
    except (OSError, ValueError) as exc:  # RunFolderError is a ValueError; every message is one line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hhmpn.predict: error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
