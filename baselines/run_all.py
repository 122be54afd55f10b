"""python -m baselines.run_all: the benchmark grid, then Tables 1-4 and Figures 3-4.

With no arguments: the quick profile on the embedded sample (built into data/nemu first if missing),
one fold, every registered model, results in results/. Every finished cell (model x dataset x fold x
seed, plus HHMPN on each modality subset for Table 3) is appended to RESULTS/results.jsonl at once;
a killed run started again skips the finished cells.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import traceback
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from baselines.figures import write_figures
from baselines.registry import models
from baselines.results import Cell, ResultsStore
from baselines.runner import run_cell
from baselines.tables import write_tables
from nemu.shards import read_manifest
from nemu.splits import N_FOLDS

DEFAULT_DATA = Path("data/nemu")
DEFAULT_RAW = Path("data/raw")
PROFILE_FOLDS = {"quick": 1, "paper": N_FOLDS}
TABLE3_MODEL = "HHMPN"


def ensure_sample(data: Path = DEFAULT_DATA, raw: Path = DEFAULT_RAW, songs: int = 240, seed: int = 0) -> Path:
    """Build the embedded sample into ``data`` unless a built dataset is already there."""
    if (data / "manifest.json").is_file():
        return data
    from nemu.build import BuildOptions, build
    from nemu.sample import make_sample

    print(f"no dataset at {data}: writing the embedded sample ({songs} songs) to {raw} and building it")
    if not (raw / "records.jsonl").is_file():
        make_sample(raw, songs=songs, seed=seed, overwrite=True)
    print(build(BuildOptions(raw_dir=raw, out_dir=data, seed=seed, image_encoder="efficientnet-lite0")))
    return data


def grid(datasets: dict[str, Path], model_names: list[str], folds: list[int], seeds: list[int],
         table3: bool) -> list[Cell]:
    """Every cell to run: each model on each dataset, fold and seed; HHMPN on each modality subset of NEMu."""
    cells = [Cell(m, d, f, s) for d in datasets for m in model_names for f in folds for s in seeds]
    if table3 and TABLE3_MODEL in model_names:
        for name, root in datasets.items():
            manifest = read_manifest(root)
            if manifest["dataset"] != "NEMu":
                continue
            names = [m["name"] for m in manifest["modalities"]]
            for size in range(1, len(names)):
                for subset in itertools.combinations(names, size):
                    cells += [Cell(TABLE3_MODEL, name, f, s, subset) for f in folds for s in seeds]
    return cells


def run(datasets: dict[str, Path], model_names: list[str], folds: list[int], seeds: list[int], profile: str,
        out: Path, *, table3: bool = True, device: str | None = None, progress: bool = True) -> dict:
    registry = models()
    unknown = [m for m in model_names if m not in registry]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(registry)}")
    store = ResultsStore(out, profile)
    checkpoints = out / "checkpoints"
    cells = grid(datasets, model_names, folds, seeds, table3)
    done = store.done()
    todo = [c for c in cells if c.key not in done]
    failures = 0
    bar = tqdm(todo, desc="benchmark grid", unit="cell", disable=not progress, initial=len(cells) - len(todo),
               total=len(cells))
    for cell in bar:
        bar.set_postfix_str(cell.key)
        try:
            store.add(run_cell(cell, registry[cell.model], datasets[cell.dataset], profile, device=device,
                               checkpoint_dir=checkpoints, out_dir=out))
        except Exception as exc:  # one broken cell must not lose the rest of the grid
            failures += 1
            store.add_failure(cell, "".join(traceback.format_exception_only(exc)).strip())
            tqdm.write(f"cell {cell.key} failed: {exc} (recorded in {out / 'failures.jsonl'})")
    records = [r for r in store.records() if r["key"] in {c.key for c in cells}]
    manifests = {name: read_manifest(root) for name, root in datasets.items()}
    tables = write_tables(records, manifests, out)
    figures = write_figures(records, datasets, checkpoints, out) if TABLE3_MODEL in model_names else []
    return {"cells": len(cells), "ran": len(todo), "skipped": len(cells) - len(todo), "failed": failures,
            "tables": tables, "figures": figures}


def _dataset_arg(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    name, path = text.split("=", 1)
    return name, Path(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m baselines.run_all", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", type=_dataset_arg, metavar="NAME=PATH",
                   help="built datasets, e.g. nemu=data/nemu mosei=data/mosei (default: the embedded sample "
                        "at data/nemu, built first if missing)")
    p.add_argument("--models", help="comma-separated model names (default: every registered model)")
    p.add_argument("--folds", type=int, help="number of CV rotations, 0..N-1 (default: 1 quick, 10 paper)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per cell (default: 0)")
    p.add_argument("--profile", choices=tuple(PROFILE_FOLDS), default="quick",
                   help="quick: small configurations for CPU; paper: the papers' configurations")
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder (store, tables, figures)")
    p.add_argument("--no-table3", action="store_true", help="skip HHMPN on modality subsets (Table 3)")
    p.add_argument("--device", help="torch device for neural models (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the small models run faster without thread hand-offs)")
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    registry = models()
    if args.list:
        for spec in registry.values():
            print(f"{spec.name:16s} {spec.group:15s} {spec.kind:9s} {spec.citation}")
        return 0
    torch.set_num_threads(args.threads)
    # BLAS/OpenMP pools too: scikit-learn's small solver problems (LP's multinomial fits) run several times
    # slower when their threads oversubscribe the cores (measured: RAkEL fit 14 s with 1 thread vs > 100 s).
    threadpool_limits(args.threads)
    datasets = dict(args.datasets) if args.datasets else {"nemu": ensure_sample()}
    model_names = [m.strip() for m in args.models.split(",")] if args.models else list(registry)
    n_folds = args.folds if args.folds is not None else PROFILE_FOLDS[args.profile]
    if not 1 <= n_folds <= N_FOLDS:
        print(f"run_all: error: --folds must be within 1..{N_FOLDS}", file=sys.stderr)
        return 2
    try:
        summary = run(datasets, model_names, list(range(n_folds)), args.seeds, args.profile, args.out,
                      table3=not args.no_table3, device=args.device, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"run_all: error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['cells']} cells: {summary['ran']} run, {summary['skipped']} already done, "
          f"{summary['failed']} failed")
    for path in summary["tables"] + summary["figures"]:
        print(f"wrote {path}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
