"""run_all's cells as Ray tasks: ``python -m baselines.run_all --engine ray [--ray-address ADDR]``.

Each cell (model x dataset x fold x seed x modality subset) is one task asking for ``--threads`` CPUs and, for
neural models where the cluster has GPUs, one GPU. A task only computes: it returns the cell's record (or its
one-line error) to the driver, which alone appends to the results store, so resume, fingerprints and
provenance work exactly as with local worker processes. A task whose worker dies (the OOM killer, a node
lost) is retried once by Ray, then recorded as a failed cell. Datasets and ``--out`` (where neural cells
write their run folders) must be on a file system every node sees at the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from baselines.cells import limit_threads, run_one
from mmer.registry import models
from nemu.ray_engine import RaySession, import_ray


def _cell_task(threads: int, cell, root: Path, profile: str, device: str | None, out: Path,
               input_normalization: str, overrides: dict | None):
    """One cell in a Ray worker process: the local workers' own thread limit and cell runner."""
    limit_threads(threads)
    return run_one(cell, root, profile, device, out, input_normalization, overrides)


def run_cells(todo: list, datasets: dict[str, Path], *, profile: str, device: str | None, out: Path,
              input_normalization: str, threads: int, jobs: int, address: str | None,
              finish: Callable[[object, tuple[str, object]], None], overrides: dict | None = None) -> None:
    """Run ``todo`` as Ray tasks, calling ``finish(cell, outcome)`` in the driver as each one ends.

    Without ``address`` (and RAY_ADDRESS) a local Ray instance of ``jobs`` x ``threads`` CPUs is started."""
    registry = models()
    with RaySession(address, jobs * threads) as session:
        ray = import_ray()
        task = ray.remote(max_retries=1)(_cell_task)
        pending = {}
        for cell in todo:
            neural_gpu = session.gpus >= 1 and registry[cell.model].kind == "neural"
            options = {"num_cpus": threads, "num_gpus": 1 if neural_gpu else 0}
            ref = task.options(**options).remote(threads, cell, datasets[cell.dataset], profile,
                                                 device or ("cuda" if neural_gpu else None), out,
                                                 input_normalization, overrides)
            pending[ref] = cell
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as exc:  # the worker died twice (Ray retried once), or Ray itself failed
                outcome = ("error", f"Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            finish(cell, outcome)
