"""Benchmark: run_all's default grid (quick profile, every registered model, HHMPN's modality subsets for
Table 3) on the embedded sample, from an empty results folder.

Target (issue 11): the whole ``make demo`` (sample, build and this grid over 5 CV rotations) in about 15
minutes on 2 cores. Prints the CPU time per model summed over its cells (HHMPN's Table 3 subsets on their own
line), the wall time of the grid with ``--workers`` worker processes, and the ratio to the target; the load
average at the start and the end says how much else the machine was doing.

    python -m bench.bench_run_all [--data data/nemu] [--folds 5] [--workers N]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TARGET_SECONDS = 15 * 60


def main(argv: list[str] | None = None) -> int:
    from baselines.cells import default_jobs
    from baselines.run_all import PROFILE_FOLDS
    from pipelines import cli

    parser = cli.command_parser("bench.bench_run_all", __doc__)
    cli.add_data(parser, required=False, default=Path("data/nemu"),
                 more="the embedded sample is built there first when missing")
    parser.add_argument("--folds", type=int, default=PROFILE_FOLDS["quick"],
                        help="CV rotations (default: %(default)s, as run_all's quick profile)")
    parser.add_argument("--workers", "--jobs", dest="jobs", type=int, default=default_jobs(),
                        help="worker processes (default: the CPU cores available, %(default)s)")
    args = parser.parse_args(argv)

    from mmer.registry import models
    from baselines.results import ResultsStore
    from baselines.cells import limit_threads
    from baselines.run_all import ensure_sample, run

    limit_threads(1)
    data = ensure_sample(args.data)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = run({"nemu": data}, list(models()), list(range(args.folds)), [0], "quick", Path(tmp),
                      progress=True, jobs=args.jobs)
        total = time.perf_counter() - started
        records = ResultsStore(Path(tmp), "quick").records()
    per_model: dict[str, float] = defaultdict(float)
    full = max((len(r["modalities"]) for r in records), default=0)
    for record in records:
        name = record["model"] + (" (Table 3 subsets)" if len(record["modalities"]) < full else "")
        per_model[name] += record.get("run_seconds", 0.0)
    for name, seconds in per_model.items():
        print(f"{name:32s} {seconds:8.1f} s over {args.folds} fold(s)")
    print(f"{summary['cells']} cells, {summary['failed']} failed; grid incl. tables and figures {total:.0f} s wall "
          f"with {args.jobs} job(s) ({sum(per_model.values()):.0f} s in cells) -> {total / TARGET_SECONDS:.2f} of "
          f"the 15-minute demo target (sample and build not included); load average "
          f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
