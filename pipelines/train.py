"""Train HHMPN on a built dataset and report the test metrics of the best-validation checkpoint.

    hhmpn-train --data OUT --out RUN [--profile quick|paper] [--epochs N]
        [--ablation no_f2f|no_f2l|no_l2l|no_m2l] [--modalities lyrics,audio,...] [--fold K]

Writes a run folder (``mmer.runs``, the same format as run_all's neural cells): ``RUN/model.pt``
(state_dict of the checkpoint with the best validation micro-F1), ``RUN/run.json`` (what predict needs to
rebuild the model: registry name ``HHMPN`` or its ablation's, resolved config, dims, labels, fold, seed,
input normalisation, dataset fingerprint), ``RUN/normalization.json`` (the training split's input
statistics), ``RUN/train_labels.npy`` and ``RUN/metrics.json`` (test metrics, the selected epoch's
validation metrics, the per-epoch history, cost).

Inputs follow the benchmark protocol: node features standardised per modality and dimension with the
training split's statistics (``--input-normalization raw`` feeds the stored features unchanged).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import torch

from hhmpn.config import HHMPNConfig, profile
from hhmpn.model import ABLATIONS
from hhmpn.registration import VARIANTS
from mmer.runner import METRICS_FILE, train_run
from mmer.runs import CHECKPOINT_FILE
from nemu.normalization import DEFAULT_INPUT_NORMALIZATION, INPUT_NORMALIZATIONS
from pipelines import cli


def registry_name(config: HHMPNConfig) -> str:
    """The registry name of this configuration's model: ``HHMPN`` or its ablation's (``HHMPN w/o F2F``)."""
    return next(name for name, ablation in VARIANTS.items() if ablation == config.ablation)


def train(data: Path, out: Path, config: HHMPNConfig, *, modalities: list[str] | None = None,
          fold: int | None = None, seed: int = 0, device: str | None = None, progress: bool = True,
          input_normalization: str = DEFAULT_INPUT_NORMALIZATION) -> dict:
    """HHMPN (or its ablation) with ``config``, through ``mmer.runner.train_run``; returns metrics.json."""
    return train_run(data, out, registry_name(config), config.to_dict(), modalities=modalities, fold=fold,
                     seed=seed, device=device, progress=progress, input_normalization=input_normalization)


def parser() -> argparse.ArgumentParser:
    p = cli.command_parser("pipelines.train", __doc__)
    cli.add_data(p, more="NEMu or MOSEI layout")
    cli.add_out(p, "the run folder (model.pt, run.json, metrics.json), what hhmpn-predict --run reads")
    p.add_argument("--profile", choices=("quick", "paper"), default="quick",
                   help="quick (the default, as in nemu-benchmark): a small configuration that trains in minutes on "
                        "a CPU; paper: the paper's d=256, T=3, batch 64, lambda 0.2, 50 epochs")
    p.add_argument("--epochs", type=int, help="override the profile's number of epochs")
    p.add_argument("--ablation", choices=ABLATIONS, help="remove one module, as in the paper's ablation study")
    cli.add_modalities(p)
    cli.add_fold(p, help_default="the published train/validation/test split")
    cli.add_seed(p, what="of initialisation, dropout and shuffling")
    p.add_argument("--input-normalization", choices=INPUT_NORMALIZATIONS, default=DEFAULT_INPUT_NORMALIZATION,
                   help="standardize: each modality per dimension with the training split's mean and std "
                        "(the benchmark protocol); raw: the stored features unchanged")
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
    modalities = args.modalities  # a list (pipelines.cli.comma_list) or None: all of them
    try:
        metrics = train(args.data, args.out, config_from_args(args), modalities=modalities, fold=args.fold,
                        seed=args.seed, device=args.device, progress=not args.no_progress,
                        input_normalization=args.input_normalization)
    except (OSError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hhmpn.train: error: {message}", file=sys.stderr)
        return 2
    print(f"best epoch {metrics['best_epoch']} (validation micro-F1 {metrics['valid']['micro_f1']:.4f})")
    print("test: " + format_metrics(metrics["test"]))
    print(f"wrote {args.out / METRICS_FILE} and {args.out / CHECKPOINT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
