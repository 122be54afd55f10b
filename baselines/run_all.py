"""The benchmark harness: the grid of cells, run here or on Ray, then Tables 1-5 and Figures 3-5.

Every finished cell (model x dataset x fold x seed, plus HHMPN on each modality subset) is appended to
RESULTS/results.jsonl at once; a killed run started again skips the finished cells. A stored cell is reused only
when the dataset's fingerprint, the model's resolved settings (``mmer.runner.resolved_settings``) and the digest of
its code (``mmer.code``: the model's module, the cell runner and their project imports) are the same as now: after
a rebuild, a changed setting or an edited model the cell is rerun, and the harness says what changed (for code,
the files); the cells of an unchanged model are reused. The tables use
only the cells of this grid, this build and these settings. The command line is ``pipelines.benchmark``
(``nemu-benchmark``; ``python -m baselines.run_all`` is the same command).
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m baselines.run_all is nemu-benchmark: parse before the harness imports torch
    import sys

    from pipelines.benchmark import main

    sys.exit(main())

import itertools
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from baselines.cells import limit_threads, run_one, worker_start
from baselines.figures import write_figures
from baselines.ray_cells import run_cells
from baselines.results import NonFiniteResult, OutLock, ResultsStore, stale_reasons
from baselines.robustness import write_robustness
from baselines.tables import write_tables
from mmer.code import model_code
from mmer.registry import models, resolve
from mmer.metrics import EMPTY_UNION_SCORE
from mmer.runner import Cell, resolved_settings, run_settings, settings_digest
from mmer.tuning import DEFAULT_THRESHOLD_RULE
from nemu.build import BuildOptions, build
from nemu.loading import MMERDataset, shard_paths
from nemu.normalization import DEFAULT_INPUT_NORMALIZATION
from nemu.sample import make_sample
from nemu.shards import dataset_fingerprint, read_manifest
from nemu.splits import N_FOLDS

DEFAULT_DATA = Path("data/nemu")
DEFAULT_RAW = Path("data/raw")
#: CV rotations per profile: 5 in quick (enough for mean ± std and the paired tests), the paper's 10.
PROFILE_FOLDS = {"quick": 5, "paper": N_FOLDS}
TABLE3_MODEL = "HHMPN"
#: Seeds of every Table 2 cell by default: a cell is the mean of three runs, since one seed's spread is as large
#: as the gaps between models (issue 21). Table 3 runs the first of them only by default (``table3_seeds``).
DEFAULT_SEEDS = (0, 1, 2)


def ensure_sample(data: Path = DEFAULT_DATA, raw: Path = DEFAULT_RAW, songs: int = 240, seed: int = 0) -> Path:
    """Build the embedded sample into ``data`` unless a built dataset is already there."""
    if (data / "manifest.json").is_file():
        return data
    print(f"no dataset at {data}: writing the embedded sample ({songs} songs) to {raw} and building it")
    if not (raw / "records.jsonl").is_file():
        make_sample(raw, songs=songs, seed=seed, overwrite=True)
    print(build(BuildOptions(raw_dir=raw, out_dir=data, seed=seed, image_encoder="efficientnet-lite0")))
    return data


class OutFolderError(ValueError):
    """An --out that cannot be a results folder (a file, under a file, not writable)."""


class DatasetUnusable(ValueError):
    """A dataset of the grid that cannot be loaded; refused once, before any cell runs."""


def check_out(out: Path) -> Path:
    """``out`` as a results folder, created if need be; :class:`OutFolderError` (one line) when it cannot be one."""
    out = Path(out)
    for folder in [out, *out.parents]:
        if folder.exists() and not folder.is_dir():
            where = "is a file" if folder == out else f"is under {folder}, which is a file"
            raise OutFolderError(f"--out {out} {where}, not a folder; pass a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutFolderError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutFolderError(f"--out {out}: the folder is not writable")
    return out


def check_datasets(datasets: dict[str, Path]) -> None:
    """Every dataset of the grid loads: manifest, every split's shards (the loader's checks), the decoded
    table. Raises :class:`DatasetUnusable` naming the first that does not, so the grid is refused once."""
    for name, root in datasets.items():
        try:
            manifest = read_manifest(root)
            shard_paths(Path(root), manifest, None)
            MMERDataset(root, None)
        except Exception as exc:  # whatever stops it loading stops every one of its cells
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatasetUnusable(f"dataset {name} ({root}) cannot be loaded, so no cell was run: {reason}") from None


def grid(datasets: dict[str, Path], model_names: list[str], folds: list[int], seeds: list[int],
         table3: bool, *, table3_folds: list[int] | None = None, table3_seeds: list[int] | None = None,
         profile: str = "quick",
         input_normalization: str = DEFAULT_INPUT_NORMALIZATION, overrides: dict | None = None) -> list[Cell]:
    """Every cell to run: each model on each dataset, fold and seed; HHMPN on each modality subset of NEMu
    (over ``table3_folds``, default ``folds``, and ``table3_seeds``, default ``seeds``). Each cell carries its
    dataset's fingerprint, its model's settings digest and its code digest (``mmer.code``)."""
    registry = models()
    fingerprints = {name: dataset_fingerprint(read_manifest(root)) for name, root in datasets.items()}
    digests = {m: settings_digest(resolved_settings(registry[m], profile, overrides, input_normalization))
               for m in model_names if m in registry}
    codes = {m: model_code(registry[m].factory)["code_digest"] for m in model_names if m in registry}

    def cell(model: str, dataset: str, fold: int, seed: int, subset: tuple[str, ...] | None = None) -> Cell:
        return Cell(model, dataset, fold, seed, subset, fingerprints[dataset], digests.get(model, ""),
                    codes.get(model, ""))

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
                              for s in (table3_seeds or seeds)]
    return cells


def run(datasets: dict[str, Path], model_names: list[str], folds: list[int], seeds: list[int], profile: str,
        out: Path, *, table3: bool = True, table3_folds: list[int] | None = None,
        table3_seeds: list[int] | None = None, device: str | None = None,
        progress: bool = True, jobs: int = 1, threads: int = 1,
        input_normalization: str = DEFAULT_INPUT_NORMALIZATION, figure_song: str | None = None,
        engine: str = "local", ray_address: str | None = None, overrides: dict | None = None,
        threshold: str = DEFAULT_THRESHOLD_RULE, empty_union: float = EMPTY_UNION_SCORE, report=None) -> dict:
    """Run every cell of the grid not already stored under the same identity, then write tables and figures.

    ``engine`` "local" runs the cells here (``jobs`` processes); "ray" runs them as Ray tasks
    (baselines.ray_cells) on the cluster at ``ray_address`` (or RAY_ADDRESS), else on a local Ray instance
    of ``jobs`` x ``threads`` CPUs. Either way only this process writes the results store. ``overrides``
    replaces entries of every model's profile configuration (``mmer.runner.resolved_settings``). ``threshold``
    ("0.5" or "validation", ``mmer.tuning.THRESHOLD_RULES``) and ``empty_union`` (Acc of an empty gold + empty
    prediction row: 0 or 1) are the run-level settings of every cell; they travel to the cells with the overrides,
    so they enter each cell's settings digest and record. ``report(records) -> (tables, figures)``, given, writes
    what the grid's records make instead of Tables 1-4 and Figures 3-4 (the probe suite's table and figure,
    ``baselines.probes``), still under the folder's lock."""
    out = check_out(out)
    with OutLock(out):
        return _run(datasets, model_names, folds, seeds, profile, out, table3=table3, table3_folds=table3_folds,
                    table3_seeds=table3_seeds, device=device, progress=progress, jobs=jobs, threads=threads,
                    input_normalization=input_normalization, figure_song=figure_song, engine=engine,
                    ray_address=ray_address, overrides=overrides, threshold=threshold, empty_union=empty_union,
                    report=report)


def _run(datasets, model_names, folds, seeds, profile, out, *, table3, table3_folds, table3_seeds, device,
         progress, jobs, threads, input_normalization, figure_song, engine, ray_address, overrides, threshold,
         empty_union, report) -> dict:
    overrides = dict(overrides or {}) | run_settings(threshold, empty_union)
    model_names = [resolve(name) for name in model_names]
    check_datasets(datasets)
    store = ResultsStore(out, profile)
    cells = grid(datasets, model_names, folds, seeds, table3, table3_folds=table3_folds, table3_seeds=table3_seeds,
                 profile=profile,
                 input_normalization=input_normalization, overrides=overrides)
    registry = models()
    settings = {m: resolved_settings(registry[m], profile, overrides, input_normalization) for m in model_names}
    stored = store.records()
    code_files = {m: model_code(registry[m].factory)["code_files"] for m in model_names}
    notices = stale_reasons(stored, cells, settings, datasets, store.path, code_files)
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
            try:
                store.add(value, cell)
            except NonFiniteResult as exc:  # never stored as a result: recorded as the cell's failure
                status, value = "error", str(exc)
        if status != "ok":
            failures += 1
            store.add_failure(cell, value)
            tqdm.write(f"cell {cell.key} failed: {value} (recorded in {out / 'failures.jsonl'})")
        bar.update(1)
        bar.set_postfix_str(cell.key)

    limit_threads(threads)  # here too: spawned workers inherit the environment variables before any import
    if engine == "ray" and todo:
        run_cells(todo, datasets, profile=profile, device=device, out=out, input_normalization=input_normalization,
                  threads=threads, jobs=jobs, address=ray_address, finish=finish, overrides=overrides)
    elif jobs <= 1 or len(todo) <= 1:
        for cell in todo:
            finish(cell, run_one(cell, datasets[cell.dataset], profile, device, out, input_normalization, overrides))
    else:
        run_pool(todo, lambda c: (run_one, c, datasets[c.dataset], profile, device, out, input_normalization,
                                  overrides), jobs=jobs, threads=threads, finish=finish)
    bar.close()
    records = store.current(cells)
    if report is not None:  # the probe suite's own table and figure; Table 5 is of Table 2's cells only
        tables, figures = report(records)
        robustness = {"tables": [], "figures": [], "seconds": 0.0}
    else:
        manifests = {name: read_manifest(root) for name, root in datasets.items()}
        tables = write_tables(records, manifests, out)
        figures = (write_figures(records, datasets, out, song=figure_song)
                   if TABLE3_MODEL in model_names else [])
        # Table 5 (baselines.robustness): the Table 2 cells' run folders predicted with broken inputs, no retraining
        robustness = write_robustness(records, datasets, manifests, out, progress=progress)
    return {"cells": len(cells), "ran": len(todo), "skipped": len(cells) - len(todo), "failed": failures,
            "tables": tables + robustness["tables"], "figures": figures + robustness["figures"],
            "table5_seconds": robustness["seconds"], "notices": notices}


def _pool(workers: int, threads: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=worker_start,
                               initargs=(threads,))


def run_pool(todo: list[Cell], call, *, jobs: int, threads: int, finish) -> None:
    """Run ``todo`` in ``jobs`` worker processes, ``finish(cell, outcome)`` as each ends; ``call(cell)`` gives
    the function and arguments.

    At most ``jobs`` cells are handed out at a time, so a cell is submitted only when a worker is free and the
    cells in flight are the only ones a dead worker can touch. When a worker process dies (killed, out of
    memory) the pool is rebuilt for the cells not yet handed out, and each cell that was in flight is retried
    once alone, in a process of its own (all of them at once): a cell whose process dies again is recorded as failed; the others,
    killed only with the pool, finish normally. Cells that never started are never failed by another's death."""
    queue = list(todo)
    queue.reverse()  # pop() from the end keeps the grid's order
    pool = _pool(min(jobs, len(todo)), threads)
    pending: dict = {}
    try:
        while queue or pending:
            while queue and len(pending) < jobs:
                cell = queue.pop()
                function, *args = call(cell)
                pending[pool.submit(function, *args)] = cell
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = any(isinstance(f.exception(), BrokenProcessPool) for f in finished)
            if broken:  # every future of the dead pool ends: wait for them all, then sort them
                wait(pending)
                finished = set(pending)
            suspects = []
            for future in finished:
                cell = pending.pop(future)
                error = future.exception()
                if isinstance(error, BrokenProcessPool):
                    suspects.append(cell)
                elif error is not None:  # e.g. an argument that cannot be pickled
                    finish(cell, ("error", f"{type(error).__name__}: {error}"))
                else:
                    finish(cell, future.result())
            if broken:
                pool.shutdown(wait=True, cancel_futures=True)
                for cell, outcome in _alone(sorted(suspects, key=lambda c: c.key), call, threads):
                    finish(cell, outcome)
                if queue:
                    pool = _pool(min(jobs, len(queue)), threads)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _alone(cells: list[Cell], call, threads: int) -> list[tuple[Cell, tuple[str, object]]]:
    """Each of ``cells`` retried in a worker process of its own (all at once), after a worker died while they
    were in flight: a death now is the cell's own."""
    pools, outcomes = [], []
    try:
        futures = []
        for cell in cells:
            function, *args = call(cell)
            pools.append(_pool(1, threads))
            futures.append(pools[-1].submit(function, *args))
        for cell, future in zip(cells, futures):
            try:
                outcomes.append((cell, future.result()))
            except BrokenProcessPool:
                outcomes.append((cell, ("error", "its worker process died (killed, or out of memory), also when "
                                                 "retried alone")))
            except Exception as exc:
                outcomes.append((cell, ("error", f"{type(exc).__name__}: {exc}")))
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes
