"""Benchmark: the quick profile of run_all over every registered model on the embedded sample, one fold.

Target (issue "benchmark harness"): within 15 minutes on the 2-core project machine. Prints the time
per model (HHMPN's modality subsets for Table 3 on their own line) and the ratio to the target,
measured in one run from an empty results folder.

    python -m bench.bench_run_all [--data data/nemu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TARGET_SECONDS = 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/nemu"),
                        help="built sample (built from data/raw first when missing)")
    args = parser.parse_args()

    import torch

    from baselines.registry import models
    from baselines.results import ResultsStore
    from baselines.run_all import ensure_sample, run

    torch.set_num_threads(1)
    data = ensure_sample(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = run({"nemu": data}, list(models()), [0], [0], "quick", Path(tmp), progress=True)
        total = time.perf_counter() - started
        records = ResultsStore(Path(tmp), "quick").records()
    per_model: dict[str, float] = defaultdict(float)
    for record in records:
        name = record["model"] + (" (Table 3 subsets)" if len(record["modalities"]) < 4 else "")
        per_model[name] += record.get("run_seconds", 0.0)
    for name, seconds in per_model.items():
        print(f"{name:32s} {seconds:8.1f} s")
    print(f"{summary['cells']} cells, {summary['failed']} failed; whole run incl. tables and figures {total:.0f} s "
          f"-> {total / TARGET_SECONDS:.2f} of the 15-minute target")


if __name__ == "__main__":
    main()
