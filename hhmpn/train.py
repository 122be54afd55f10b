"""Train HHMPN on a built dataset and report the test metrics of the best-validation checkpoint.

    python -m hhmpn.train --data OUT --out RUN [--profile quick|paper] [--epochs N]
        [--ablation no_f2f|no_f2l|no_l2l|no_m2l] [--modalities lyrics,audio,...] [--fold K]

Writes ``RUN/model.pt`` (state_dict of the checkpoint with the best validation micro-F1),
``RUN/run.json`` (what predict needs to rebuild the model) and ``RUN/metrics.json`` (test metrics,
the selected epoch's validation metrics, the per-epoch history, cost).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import torch
from hhmpn.config import HHMPNConfig, profile
from hhmpn.engine import seed_everything, train_and_test
from hhmpn.model import ABLATIONS, HHMPN
from nemu.loading import split_datasets

CHECKPOINT_FILE = "model.pt"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"


def build_model(modality_dims: dict[str, int], num_labels: int, config: HHMPNConfig) -> HHMPN:
    return HHMPN(modality_dims, num_labels, **config.model_kwargs())


def train(data: Path, out: Path, config: HHMPNConfig, *, modalities: list[str] | None = None,
          fold: int | None = None, seed: int = 0, device: str | None = None, progress: bool = True) -> dict:
    """Train, select on validation micro-F1, evaluate that one checkpoint on test; returns metrics.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = split_datasets(data, fold, modalities)
    train_set = datasets["train"]
    seed_everything(seed)  # weight initialisation
    model = build_model(train_set.modality_dims, len(train_set.label_names), config)
    run = {"data": str(data), "fold": fold, "seed": seed, "modalities": list(train_set.modality_dims),
           "modality_dims": train_set.modality_dims, "labels": train_set.label_names, "config": config.to_dict()}
    (out / RUN_FILE).write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    result, test = train_and_test(model, datasets, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                                  clip=config.clip, threshold=config.threshold, seed=seed, device=device,
                                  checkpoint_path=out / CHECKPOINT_FILE, progress=progress,
                                  label_names=train_set.label_names)
    metrics = {"test": test, "valid": result.best_valid, "best_epoch": result.best_epoch,
               "selection": "single checkpoint with the best validation micro-F1",
               "num_parameters": result.num_parameters, "train_seconds": round(result.train_seconds, 2),
               "sizes": {split: len(ds) for split, ds in datasets.items()}, "run": run,
               "history": result.history}
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return metrics


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hhmpn.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a built dataset folder (NEMu or MOSEI layout)")
    p.add_argument("--out", type=Path, required=True, help="run folder for model.pt, run.json, metrics.json")
    p.add_argument("--profile", choices=("quick", "paper"), default="paper",
                   help="paper: d=256, T=3, batch 64, lambda 0.2, 50 epochs; quick: a small CPU configuration")
    p.add_argument("--epochs", type=int, help="override the profile's number of epochs")
    p.add_argument("--ablation", choices=ABLATIONS, help="remove one module, as in the paper's ablation study")
    p.add_argument("--modalities", help="comma-separated subset of the dataset's modalities (default: all)")
    p.add_argument("--fold", type=int, help="cross-validation rotation k (test = fold k, valid = fold k+1); "
                                            "default: the published train/valid/test split")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, dropout and shuffling")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (small models often run faster with 1)")
    for f in fields(HHMPNConfig):
        if f.name in ("epochs", "ablation"):
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float if f.type in ("float", float) else int,
                       dest=f"override_{f.name}", help=f"override the profile's {f.name}")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> HHMPNConfig:
    config = profile(args.profile)
    changes = {name[len("override_"):]: value for name, value in vars(args).items()
               if name.startswith("override_") and value is not None}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.ablation is not None:
        changes["ablation"] = args.ablation
    return config.replace(**changes)


def format_metrics(metrics: dict) -> str:
    return (f"Acc {metrics['accuracy']:.4f}  HL {metrics['hamming_loss']:.4f}  miF1 {metrics['micro_f1']:.4f}  "
            f"maF1 {metrics['macro_f1']:.4f}  (subset accuracy {metrics['subset_accuracy']:.4f})")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modalities = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
    try:
        metrics = train(args.data, args.out, config_from_args(args), modalities=modalities, fold=args.fold,
                        seed=args.seed, device=args.device, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"hhmpn.train: error: {exc}", file=sys.stderr)
        return 2
    print(f"best epoch {metrics['best_epoch']} (validation micro-F1 {metrics['valid']['micro_f1']:.4f})")
    print("test: " + format_metrics(metrics["test"]))
    print(f"wrote {args.out / METRICS_FILE} and {args.out / CHECKPOINT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
