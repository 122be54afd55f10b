"""Per-sample probabilities and label sets from a trained HHMPN run.

    python -m hhmpn.predict --checkpoint RUN --data OUT --split test [--output FILE]

Writes JSON lines (default ``RUN/predictions-{split}.jsonl``): ``id``, ``probabilities`` {label: p},
``predicted`` (labels with p >= threshold), and ``labels`` (the true set, when the data has it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from hhmpn.config import HHMPNConfig
from hhmpn.engine import load_checkpoint, predict
from hhmpn.train import CHECKPOINT_FILE, RUN_FILE, build_model
from nemu.loading import MMERDataset, collate


def predict_run(run_dir: Path, data: Path, split: str, output: Path | None = None, device: str | None = None,
                batch_size: int = 64) -> Path:
    run_dir = Path(run_dir)
    run = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    config = HHMPNConfig(**run["config"])
    dataset = MMERDataset(data, split, run["modalities"])
    if dataset.label_names != run["labels"]:
        raise ValueError(f"{data}: labels {dataset.label_names} differ from the run's {run['labels']}")
    if dataset.modality_dims != run["modality_dims"]:
        raise ValueError(f"{data}: modality dims {dataset.modality_dims} differ from the run's {run['modality_dims']}")
    model = load_checkpoint(build_model(run["modality_dims"], len(run["labels"]), config),
                            run_dir / CHECKPOINT_FILE, device)
    ids, probabilities = predict(model, DataLoader(dataset, batch_size=batch_size, collate_fn=collate), device)
    output = Path(output) if output else run_dir / f"predictions-{split}.jsonl"
    truth = {sample_id: row for sample_id, row in zip(dataset.ids, dataset.labels)}
    with output.open("w", encoding="utf-8") as handle:
        for sample_id, probs in zip(ids, probabilities):
            record = {
                "id": sample_id,
                "probabilities": {name: round(float(p), 6) for name, p in zip(run["labels"], probs)},
                "predicted": [name for name, p in zip(run["labels"], probs) if p >= config.threshold],
                "labels": [name for name, y in zip(run["labels"], truth[sample_id]) if y],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hhmpn.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder written by hhmpn.train")
    p.add_argument("--data", type=Path, required=True, help="built dataset folder")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="split to predict")
    p.add_argument("--output", type=Path, help="JSON-lines output (default RUN/predictions-SPLIT.jsonl)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    args = p.parse_args(argv)
    try:
        path = predict_run(args.checkpoint, args.data, args.split, args.output, args.device, args.batch_size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"hhmpn.predict: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
