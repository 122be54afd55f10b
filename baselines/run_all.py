"""python -m baselines.run_all: the benchmark grid, then Tables 1-4 and Figures 3-4.

With no arguments: the quick profile on the embedded sample (built into data/nemu first if missing),
5 CV rotations, every registered model, HHMPN on every modality subset (Table 3), results in results/,
cells run in parallel on every CPU core (one thread each). Every finished cell (model x dataset x fold x
seed, plus HHMPN on each modality subset) is appended to RESULTS/results.jsonl at once; a killed run
started again skips the finished cells. A stored cell is reused only when the dataset's fingerprint and
the model's resolved settings are the same as now: after a rebuild or a changed setting the cell is
rerun, and run_all says what changed. The tables use only the cells of this grid, this build and these
settings.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from baselines.registry import UnknownModelError, models, resolve, resolve_names
from baselines.results import Cell, ResultsStore, settings_digest, stale_reasons
from nemu import cli
from nemu.normalization import DEFAULT_INPUT_NORMALIZATION, INPUT_NORMALIZATIONS
from nemu.ray_engine import RayUnavailable
from nemu.shards import dataset_fingerprint, read_manifest
from nemu.splits import N_FOLDS

DEFAULT_DATA = Path("data/nemu")
DEFAULT_RAW = Path("data/raw")
#: CV rotations per profile: 5 in quick (enough for mean ± std and the paired tests), the paper's 10.
PROFILE_FOLDS = {"quick": 5, "paper": N_FOLDS}
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


def resolved_settings(spec, profile: str, input_normalization: str = DEFAULT_INPUT_NORMALIZATION) -> dict:
    """Everything a cell's result depends on besides its data and grid place: the profile's configuration and
    the input normalisation (``baselines.runner.run_cell`` records the same under ``settings``)."""
    return spec.config(profile) | {"input_normalization": input_normalization}


def grid(datasets: dict[str, Path], model_names: list[str], folds: list[int], seeds: list[int],
         table3: bool, *, table3_folds: list[int] | None = None, profile: str = "quick",
         input_normalization: str = DEFAULT_INPUT_NORMALIZATION) -> list[Cell]:
    """Every cell to run: each model on each dataset, fold and seed; HHMPN on each modality subset of NEMu
    (over ``table3_folds``, default ``folds``). Each cell carries its dataset's fingerprint and its model's
    settings digest."""
    registry = models()
    fingerprints = {name: dataset_fingerprint(read_manifest(root)) for name, root in datasets.items()}
    digests = {m: settings_digest(resolved_settings(registry[m], profile, input_normalization))
               for m in model_names if m in registry}

    def cell(model: str, dataset: str, fold: int, seed: int, subset: tuple[str, ...] | None = None) -> Cell:
        return Cell(model, dataset, fold, seed, subset, fingerprints[dataset], digests.get(model, ""))

    cells = [cell(m, d, f, s) for d in datasets for m in model_names for f in folds for s in seeds]
    if table3 and TABLE3_MODEL in model_names:
        for name, root in datasets.items():
            manifest = read_manifest(root)
            if manifest["dataset"] != "NEMu":
                continue
            names = [m["name"] for m in manifest["modalities"]]
            for size in range(len(names) - 1, 0, -1):
                for subset in itertools.combinations(names, size):
                    cells += [cell(TABLE3_MODEL, name, f, s, subset) for f in (table3_folds or folds)
                              for s in seeds]
    return cells


def default_jobs() -> int:
    """Worker processes: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _limit_threads(threads: int) -> None:
    """torch's, OpenMP's and every BLAS pool's threads, also in libraries loaded later and in child processes.

    BLAS/OpenMP pools matter: scikit-learn's small solver problems (LP's multinomial fits) run several times
    slower when their threads oversubscribe the cores (measured: RAkEL fit 14 s with 1 thread vs > 100 s; LP's
    cell 545 s instead of 11 s in two workers without the limit). threadpoolctl limits only the libraries
    already loaded, so the model modules (scikit-learn, SciPy) are imported first, and the environment
    variables cover whatever loads after."""
    import torch
    from threadpoolctl import threadpool_limits

    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    models()  # imports every model module, so their BLAS libraries are loaded before the limit
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def _worker_start(threads: int) -> None:
    """Each worker: its own thread limit, and it dies with run_all (a killed run leaves no orphans computing)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    _limit_threads(threads)


def _run_one(cell: Cell, root: Path, profile: str, device: str | None, out: Path, input_normalization: str):
    """One cell, in a worker: ("ok", record) or ("error", one-line message); never raises (pickling-safe)."""
    from baselines.runner import run_cell

    try:
        spec = models()[cell.model]
        return "ok", run_cell(cell, spec, root, profile, device=device, out_dir=out,
                              input_normalization=input_normalization)
    except Exception as exc:  # one broken cell must not lose the rest of the grid
        return "error", "".join(traceback.format_exception_only(exc)).strip()


def run(datasets: dict[str, Path], model_names: list[str], folds: list[int], seeds: list[int], profile: str,
        out: Path, *, table3: bool = True, table3_folds: list[int] | None = None, device: str | None = None,
        progress: bool = True, jobs: int = 1, threads: int = 1,
        input_normalization: str = DEFAULT_INPUT_NORMALIZATION, figure_song: str | None = None,
        engine: str = "local", ray_address: str | None = None) -> dict:
    """Run every cell of the grid not already stored under the same identity, then write tables and figures.

    ``engine`` "local" runs the cells here (``jobs`` processes); "ray" runs them as Ray tasks
    (baselines.ray_cells) on the cluster at ``ray_address`` (or RAY_ADDRESS), else on a local Ray instance
    of ``jobs`` x ``threads`` CPUs. Either way only this process writes the results store."""
    model_names = [resolve(name) for name in model_names]
    store = ResultsStore(out, profile)
    cells = grid(datasets, model_names, folds, seeds, table3, table3_folds=table3_folds, profile=profile,
                 input_normalization=input_normalization)
    registry = models()
    settings = {m: resolved_settings(registry[m], profile, input_normalization) for m in model_names}
    stored = store.records()
    notices = stale_reasons(stored, cells, settings, datasets, store.path)
    for notice in notices:
        tqdm.write(notice)
    done = {r["identity"] for r in stored if "identity" in r}
    todo = [c for c in cells if c.identity not in done]
    failures = 0
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="benchmark grid", unit="cell",
               disable=not progress)

    def finish(cell: Cell, outcome: tuple[str, object]) -> None:
        nonlocal failures
        status, value = outcome
        if status == "ok":
            store.add(value, cell)
        else:
            failures += 1
            store.add_failure(cell, value)
            tqdm.write(f"cell {cell.key} failed: {value} (recorded in {out / 'failures.jsonl'})")
        bar.update(1)
        bar.set_postfix_str(cell.key)

    _limit_threads(threads)  # here too: spawned workers inherit the environment variables before any import
    if engine == "ray" and todo:
        from baselines.ray_cells import run_cells

        run_cells(todo, datasets, profile=profile, device=device, out=out, input_normalization=input_normalization,
                  threads=threads, jobs=jobs, address=ray_address, finish=finish)
    elif jobs <= 1 or len(todo) <= 1:
        for cell in todo:
            finish(cell, _run_one(cell, datasets[cell.dataset], profile, device, out, input_normalization))
    else:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=get_context("spawn"),
                                 initializer=_worker_start, initargs=(threads,)) as pool:
            pending = {pool.submit(_run_one, c, datasets[c.dataset], profile, device, out, input_normalization): c
                       for c in todo}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    try:
                        outcome = future.result()
                    except Exception as exc:  # the worker process itself died (killed, out of memory)
                        outcome = ("error", f"worker process died: {type(exc).__name__}: {exc}")
                    finish(pending.pop(future), outcome)
    bar.close()
    from baselines.figures import write_figures
    from baselines.tables import write_tables

    records = store.current(cells)
    manifests = {name: read_manifest(root) for name, root in datasets.items()}
    tables = write_tables(records, manifests, out)
    figures = (write_figures(records, datasets, out, song=figure_song)
               if TABLE3_MODEL in model_names else [])
    return {"cells": len(cells), "ran": len(todo), "skipped": len(cells) - len(todo), "failed": failures,
            "tables": tables, "figures": figures, "notices": notices}


def _dataset_arg(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    name, path = text.split("=", 1)
    return name, Path(path)


def parser() -> argparse.ArgumentParser:
    p = cli.command_parser("baselines.run_all", __doc__)
    cli.add_data(p, required=False, dest="datasets", type=cli.dataset_list,
                 more="several comma-separated, e.g. data/nemu,data/mosei, each named by its manifest (nemu, "
                      "mosei) or as NAME=PATH; default: the embedded sample at data/nemu, built first if missing")
    p.add_argument("--datasets", nargs="+", type=_dataset_arg, metavar="NAME=PATH", dest="deprecated_datasets",
                   action=cli.DeprecatedAlias, new="--data", target="datasets",
                   help="deprecated spelling of --data: space-separated NAME=PATH")
    cli.add_models(p, help_default="every registered model; names are matched ignoring case and "
                                "punctuation (mlgcn = ML-GCN, hhmpn-no-f2f = 'HHMPN w/o F2F')")
    p.add_argument("--folds", type=int, help=f"number of CV rotations, 0..N-1 (default: "
                                             f"{PROFILE_FOLDS['quick']} quick, {PROFILE_FOLDS['paper']} paper)")
    p.add_argument("--table3-folds", type=int,
                   help="CV rotations for HHMPN's modality subsets of Table 3 (default: the same as --folds)")
    cli.add_seeds(p, default=[0])
    p.add_argument("--profile", choices=tuple(PROFILE_FOLDS), default="quick",
                   help="quick: small configurations for CPU; paper: the papers' configurations")
    cli.add_out(p, "results (store, tables, figures)", required=False, default=Path("results"))
    p.add_argument("--no-table3", action="store_true", help="skip HHMPN on modality subsets (Table 3)")
    p.add_argument("--input-normalization", choices=INPUT_NORMALIZATIONS, default=DEFAULT_INPUT_NORMALIZATION,
                   help="standardize: node features standardised per modality and dimension on each rotation's "
                        "training split (the protocol); raw: the stored features (default: %(default)s)")
    p.add_argument("--figure-song", metavar="ID",
                   help="song of Figure 3 (default: the test song of the first HHMPN run with the most comment "
                        "sentences, up to 16, among those with two or more labels; ties: smallest id)")
    p.add_argument("--device", help="torch device for neural models (default: cuda if available, else cpu)")
    p.add_argument("--jobs", type=int, default=default_jobs(),
                   help="cells run at once, each in its own process (default: the CPU cores available, "
                        "%(default)s here)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per cell (default 1: the small models run faster without thread "
                        "hand-offs, and --jobs uses the cores)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: cells in --jobs processes here; ray: cells as Ray tasks (--threads CPUs each, "
                        "a GPU for neural cells where the cluster has them) on --ray-address, RAY_ADDRESS or a "
                        "local Ray instance of --jobs x --threads CPUs (needs the ray extra; see README, 'Running "
                        "on a cluster'); the results store is written here either way (default: local)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (HOST:PORT of 'ray start --head', or auto); "
                        "datasets and --out must be on a file system every node sees at the same path")
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
    try:
        model_names = resolve_names(",".join(args.models)) if args.models else list(registry)
    except UnknownModelError as exc:
        print(f"run_all: error: {exc}", file=sys.stderr)
        return 2
    n_folds = args.folds if args.folds is not None else PROFILE_FOLDS[args.profile]
    n_table3 = args.table3_folds if args.table3_folds is not None else n_folds
    for flag, value in (("--folds", n_folds), ("--table3-folds", n_table3)):
        if not 1 <= value <= N_FOLDS:
            print(f"run_all: error: {flag} must be within 1..{N_FOLDS}, got {value}", file=sys.stderr)
            return 2
    if args.jobs < 1 or args.threads < 1:
        print("run_all: error: --jobs and --threads must be at least 1", file=sys.stderr)
        return 2
    _limit_threads(args.threads)
    datasets = dict(args.datasets) if args.datasets else {"nemu": ensure_sample()}
    try:
        summary = run(datasets, model_names, list(range(n_folds)), args.seeds, args.profile, args.out,
                      table3=not args.no_table3, table3_folds=list(range(n_table3)), device=args.device,
                      progress=not args.no_progress, jobs=args.jobs, threads=args.threads,
                      input_normalization=args.input_normalization, figure_song=args.figure_song,
                      engine=args.engine, ray_address=args.ray_address)
    except (FileNotFoundError, ValueError, RayUnavailable) as exc:
        print(f"run_all: error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['cells']} cells: {summary['ran']} run, {summary['skipped']} already done, "
          f"{summary['failed']} failed")
    for path in summary["tables"] + summary["figures"]:
        print(f"wrote {path}")
    table2 = args.out / "table2.md"
    if table2 in summary["tables"]:
        print("\n" + table2.read_text(encoding="utf-8"))
    if args.figure_song and not summary["figures"]:
        print(f"run_all: note: no figure written for --figure-song {args.figure_song}: no finished HHMPN run on "
              f"all modalities of a dataset with comments", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
