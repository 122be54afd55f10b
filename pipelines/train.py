"""Train HHMPN on a built dataset and report the test metrics of the best-validation checkpoint.

    hhmpn-train --data OUT --out RUN [--profile quick|paper] [--epochs N]
        [--ablation no-f2f|no-f2l|no-l2l|no-m2l] [--modalities lyrics,audio,...] [--fold K]

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

from hhmpn.config import PROFILES, VARIANTS, HHMPNConfig, profile
from nemu.normalization import DEFAULT_INPUT_NORMALIZATION, INPUT_NORMALIZATIONS
from nemu.progress import show_progress
from pipelines import cli

PROG = cli.prog_of("pipelines.train")

#: Each configuration field's command-line type (checked before any work) and metavar.
FIELD_FLAGS = {
    "d": (cli.positive_int, "N", "hidden size d"),
    "rounds": (cli.positive_int, "T", "message-passing rounds T"),
    "dropout": (cli.dropout_rate, "RATE", "dropout rate, in [0, 1)"),
    "lam": (cli.nonnegative_float, "WEIGHT", "lambda, the weight of the intermediate loss of eq. (20)"),
    "f2f_layers": (cli.nonnegative_int, "N", "F2F layers"),
    "batch_size": (cli.positive_int, "N", "training batch size"),
    "epochs": (cli.positive_int, "N", "number of epochs"),
    "lr": (cli.positive_float, "RATE", "Adam's learning rate"),
    "clip": (cli.positive_float, "NORM", "gradient clipping norm"),
    "threshold": (cli.number(float, low=0, high=1, low_open=True, high_open=True, what="a number in (0, 1)"),
                  "P", "decision threshold of validation selection and test metrics, in (0, 1)"),
}


def registry_name(config: HHMPNConfig) -> str:
    """The registry name of this configuration's model: ``HHMPN`` or its ablation's (``HHMPN w/o F2F``)."""
    return next(name for name, ablation in VARIANTS.items() if ablation == config.ablation)


def train(data: Path, out: Path, config: HHMPNConfig, *, modalities: list[str] | None = None,
          fold: int | None = None, seed: int = 0, device: str | None = None, progress: bool = True,
          input_normalization: str = DEFAULT_INPUT_NORMALIZATION) -> dict:
    """HHMPN (or its ablation) with ``config``, through ``mmer.runner.train_run``; returns metrics.json."""
    from mmer.runner import train_run  # torch: only when work starts

    return train_run(data, out, registry_name(config), config.to_dict(), modalities=modalities, fold=fold,
                     seed=seed, device=device, progress=progress, input_normalization=input_normalization)


def _profile_values(name: str) -> str:
    """"the profile's: quick 10, paper 50" for configuration field ``name``."""
    def shown(value) -> str:
        return "as --rounds" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    return "the profile's: " + ", ".join(f"{p} {shown(getattr(PROFILES[p], name))}" for p in ("quick", "paper"))


def parser() -> argparse.ArgumentParser:
    p = cli.command_parser("pipelines.train", __doc__)
    cli.add_data(p, more="NEMu or MOSEI layout")
    cli.add_out(p, "the run folder (model.pt, run.json, metrics.json), what hhmpn-predict --run reads")
    p.add_argument("--profile", choices=tuple(sorted(PROFILES, reverse=True)), default="quick",
                   help="quick (as in nemu-benchmark): a small configuration that trains in minutes on "
                        "a CPU; paper: the paper's d=256, T=3, batch 64, lambda 0.2, 50 epochs")
    kind, metavar, what = FIELD_FLAGS["epochs"]
    p.add_argument("--epochs", type=kind, metavar=metavar, help=f"{what} (default: {_profile_values('epochs')})")
    p.add_argument("--ablation", action=cli.AblationAction, metavar="{" + ",".join(cli.ABLATION_NAMES) + "}",
                   help="remove one module, as in the paper's ablation study (old spellings such as no_f2f are "
                        "accepted with a message); default: none, the full model")
    cli.add_modalities(p)
    cli.add_fold(p, help_default="the published train/validation/test split")
    cli.add_seed(p, what="of initialisation, dropout and shuffling")
    p.add_argument("--input-normalization", choices=INPUT_NORMALIZATIONS, default=DEFAULT_INPUT_NORMALIZATION,
                   help="standardize: each modality per dimension with the training split's mean and std "
                        "(the benchmark protocol); raw: the stored features unchanged")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=cli.positive_int, metavar="N",
                   help="torch CPU threads (small models often run faster with 1; default: torch's own choice, "
                        "the CPU cores available)")
    for f in fields(HHMPNConfig):
        if f.name in ("epochs", "ablation"):
            continue
        kind, metavar, what = FIELD_FLAGS[f.name]
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, metavar=metavar, dest=f"override_{f.name}",
                       help=f"{what} (default: {_profile_values(f.name)})")
    cli.add_progress(p)
    return p


def config_from_args(args: argparse.Namespace) -> HHMPNConfig:
    """The profile with the command line's changes; ValueError (one line) for a configuration that cannot train."""
    config = profile(args.profile)
    changes = {name[len("override_"):]: value for name, value in vars(args).items()
               if name.startswith("override_") and value is not None}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.ablation is not None:
        changes["ablation"] = args.ablation
    return config.replace(**changes)  # HHMPNConfig checks every field (hhmpn.config.FIELD_CHECKS)


def format_metrics(metrics: dict) -> str:
    return (f"Acc {metrics['accuracy']:.4f}  HL {metrics['hamming_loss']:.4f}  miF1 {metrics['micro_f1']:.4f}  "
            f"maF1 {metrics['macro_f1']:.4f}  (subset accuracy {metrics['subset_accuracy']:.4f})")


@cli.command("pipelines.train")
def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    # Every input is checked before anything is written: a refused run leaves the run folder as it was.
    try:
        config = config_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    problem = cli.out_folder_problem("--out", args.out)
    if problem:
        return cli.error(PROG, problem)
    if not args.data.is_dir():
        return cli.error(PROG, f"--data {args.data} does not exist" if not args.data.exists()
                         else f"--data {args.data} is not a folder")
    import torch  # after the checks: --help and refused commands stay instant

    from mmer.runner import METRICS_FILE
    from mmer.runs import CHECKPOINT_FILE

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError as exc:
            return cli.error(PROG, f"--device {args.device!r}: {exc}")
    modalities = args.modalities  # a list (pipelines.cli.comma_list) or None: all of them
    try:
        metrics = train(args.data, args.out, config, modalities=modalities, fold=args.fold,
                        seed=args.seed, device=args.device, progress=show_progress(not args.no_progress),
                        input_normalization=args.input_normalization)
    except (OSError, ValueError) as exc:
        return cli.error(PROG, exc)
    print(f"best epoch {metrics['best_epoch']} (validation micro-F1 {metrics['valid']['micro_f1']:.4f})")
    print("test: " + format_metrics(metrics["test"]))
    print(f"wrote {args.out / METRICS_FILE} and {args.out / CHECKPOINT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
