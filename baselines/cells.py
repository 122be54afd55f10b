"""One benchmark cell in a worker process (local pool or Ray task): its thread limit, and a runner that never
raises, so one broken cell cannot lose the rest of the grid."""

from __future__ import annotations

import os
import signal
import traceback
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from mmer.registry import models
from mmer.runner import Cell, run_cell
from nemu.workers import kill_self_if_named


def default_jobs() -> int:
    """Worker processes: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """torch's, OpenMP's and every BLAS pool's threads, also in libraries loaded later and in child processes.

    BLAS/OpenMP pools matter: scikit-learn's small solver problems (LP's multinomial fits) run many times
    slower when their threads oversubscribe the cores. threadpoolctl limits only the libraries
    already loaded, so the model modules (scikit-learn, SciPy) are imported first, and the environment
    variables cover whatever loads after."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    models()  # imports every model module, so their BLAS libraries are loaded before the limit
    torch.set_num_threads(threads)
    threadpool_limits(threads)


class _CellStopped(BaseException):
    """SIGTERM in a worker while it runs a cell: unwinds the cell (its temporary files removed), then the worker
    leaves (run_one)."""


_in_cell = False


def _stop_worker(signum, frame):
    if _in_cell:
        raise _CellStopped()
    os._exit(128 + signum)  # idle or starting: nothing of a cell to clean up


def worker_start(threads: int) -> None:
    """Each worker: its own thread limit, and it dies with run_all (a killed run leaves no orphans computing).
    Ctrl-C reaches the whole process group: workers ignore SIGINT (the benchmark stops them with SIGTERM,
    pipelines.cli.run_command), and on SIGTERM they unwind their cell and leave without a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    limit_threads(threads)


KILL_CELL_ENV = "NEMU_TEST_KILL_CELL"


def cell_test_hook(cell: Cell) -> None:
    """Test hook, inert when unset (tests/test_store_faults.py): NEMU_TEST_KILL_CELL=KEY makes the worker given
    the cell whose ``key`` is KEY SIGKILL itself, as the OOM killer would; KEY@FLAG does it only while the file
    FLAG does not exist (creating it), i.e. once. Several entries are separated by ";"."""
    kill_self_if_named(KILL_CELL_ENV, cell.key, separator=";")


def run_one(cell: Cell, root: Path, profile: str, device: str | None, out: Path, input_normalization: str,
            overrides: dict | None = None):
    """One cell, in a worker: ("ok", record) or ("error", one-line message); never raises (pickling-safe)."""
    cell_test_hook(cell)
    global _in_cell
    _in_cell = True
    try:
        spec = models()[cell.model]
        return "ok", run_cell(cell, spec, root, profile, device=device, out_dir=out, overrides=overrides,
                              input_normalization=input_normalization)
    except _CellStopped:  # SIGTERM in a worker: the cell has unwound; leave without a word
        os._exit(143)
    except Exception as exc:  # one broken cell must not lose the rest of the grid
        return "error", "".join(traceback.format_exception_only(exc)).strip()
    finally:
        _in_cell = False
