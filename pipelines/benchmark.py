"""nemu-benchmark (``python -m baselines.run_all``): the benchmark grid, then Tables 1-4 and Figures 3-4.

With no arguments: the quick profile on the embedded sample (built into data/nemu first if missing),
5 CV rotations, every registered model, HHMPN on every modality subset (Table 3), results in results/,
cells run in parallel on every CPU core (one thread each). Every finished cell (model x dataset x fold x
seed, plus HHMPN on each modality subset) is appended to RESULTS/results.jsonl at once; a killed run
started again skips the finished cells. A stored cell is reused only when the dataset's fingerprint and
the model's resolved settings are the same as now: after a rebuild or a changed setting the cell is
rerun, and run_all says what changed. The tables use only the cells of this grid, this build and these
settings.

With --suite probes: every model (or --models) on every probe sample of nemu.sample (--probes), each written
and built under OUT/probes/ (a build is reused while its request fingerprint matches), on the same grid, store and
seeds; writes OUT/probe_table.{md,csv,tex} (rows models, columns probes, each cell test miF1 mean ± std over
rotations, each header the probe's ceiling and constant baseline) and OUT/probe_figure.{png,pdf}.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mmer.metrics import EMPTY_UNION_CHOICES, EMPTY_UNION_SCORE
from mmer.tuning import BENCHMARK_FOLDS as PROFILE_FOLDS
from mmer.tuning import BENCHMARK_SEEDS, DEFAULT_THRESHOLD_RULE, THRESHOLD_RULES
from nemu.normalization import DEFAULT_INPUT_NORMALIZATION, INPUT_NORMALIZATIONS
from nemu.splits import N_FOLDS
from nemu.progress import show_progress
from pipelines import cli

PROG = cli.prog_of("pipelines.benchmark")
SUITES = ("probes",)
#: baselines.probes.PROBE_SONGS, stated here so --help needs no harness import (tests/test_probe_suite.py checks both)
PROBE_SONGS = 160
#: baselines.probes.SUITE_THRESHOLD_RULE (why: there), likewise stated here for --help
SUITE_THRESHOLD_RULE = "validation"
# torch, the model modules and the harness (baselines.run_all, baselines.cells) are imported only when work starts,
# so --help and --list answer at once (mmer.registry.catalogue)


def _dataset_arg(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    name, path = text.split("=", 1)
    return name, Path(path)


def parser() -> argparse.ArgumentParser:
    p = cli.command_parser("pipelines.benchmark", __doc__)
    cli.add_data(p, required=False, dest="datasets", type=cli.dataset_list,
                 more="several comma-separated, e.g. data/nemu,data/mosei, each named by its manifest (nemu, "
                      "mosei) or as NAME=PATH; default: the embedded sample at data/nemu, built first if missing")
    p.add_argument("--datasets", nargs="+", type=_dataset_arg, metavar="NAME=PATH", dest="deprecated_datasets",
                   action=cli.DeprecatedAlias, new="--data", target="datasets",
                   help="deprecated spelling of --data: space-separated NAME=PATH")
    cli.add_models(p, help_default="every registered model; names are matched ignoring case and "
                                "punctuation (mlgcn = ML-GCN, hhmpn-no-f2f = 'HHMPN w/o F2F')")
    p.add_argument("--folds", type=cli.number(int, low=1, high=N_FOLDS, what=f"an integer in 1..{N_FOLDS}"),
                   metavar="N", help=f"number of CV rotations, 0..N-1 (default: "
                                             f"{PROFILE_FOLDS['quick']} quick, {PROFILE_FOLDS['paper']} paper)")
    p.add_argument("--table3-folds", type=cli.number(int, low=1, high=N_FOLDS, what=f"an integer in 1..{N_FOLDS}"),
                   metavar="N",
                   help="CV rotations for HHMPN's modality subsets of Table 3 (default: the same as --folds)")
    cli.add_seeds(p, default=list(BENCHMARK_SEEDS))
    seeds = p._option_string_actions["--seeds"]  # the shared help, plus this command's default and its use
    seeds.help += ": each Table 2 cell is the mean of its seeds within a rotation; every seed's record is stored"
    p.add_argument("--table3-seeds", type=cli.comma_list(cli.nonnegative_int), metavar="S,S",
                   help="seeds for HHMPN's modality subsets of Table 3 (default: the first of --seeds only, so "
                        "that make demo fits in 15 minutes on 2 cores; Table 2 averages every seed of --seeds)")
    p.add_argument("--profile", choices=tuple(PROFILE_FOLDS), default="quick",
                   help="quick: small configurations for CPU; paper: the papers' configurations")
    cli.add_out(p, "results (store, tables, figures)", required=False, default=Path("results"))
    p.add_argument("--no-table3", action="store_true", help="skip HHMPN on modality subsets (Table 3)")
    p.add_argument("--input-normalization", choices=INPUT_NORMALIZATIONS, default=DEFAULT_INPUT_NORMALIZATION,
                   help="standardize: node features standardised per modality and dimension on each rotation's "
                        "training split (the protocol); raw: the stored features (default: %(default)s)")
    p.add_argument("--threshold", choices=THRESHOLD_RULES,
                   help="decision threshold of every model: 0.5 (the paper's), or validation: one threshold per cell "
                        "chosen on its validation split (0.05..0.95, best micro-F1, ties nearest 0.5) and applied to "
                        f"test; recorded in every result (default: {DEFAULT_THRESHOLD_RULE}; with --suite probes "
                        f"{SUITE_THRESHOLD_RULE}, the rule the probes' ceilings follow)")
    p.add_argument("--empty-union", type=float, choices=EMPTY_UNION_CHOICES, default=EMPTY_UNION_SCORE,
                   metavar="{0,1}",
                   help="Acc (Jaccard) of a song whose gold and predicted label sets are both empty: 0, the official "
                        "HHMPN code's convention, or 1, a perfect match as in subset accuracy; recorded in every "
                        "result (default: %(default)g)")
    p.add_argument("--figure-song", metavar="ID",
                   help="song of Figure 3 (default: the test song of the first HHMPN run with the most comment "
                        "sentences, up to 16, among those with two or more labels; ties: smallest id)")
    p.add_argument("--device", metavar="DEVICE", help="torch device for neural models (default: cuda if available, else cpu)")
    p.add_argument("--workers", type=cli.positive_int, default=cli.available_cores(), metavar="N",
                   help="cells run at once, each in its own process (default: the CPU cores available, "
                        "%(default)s here)")
    p.add_argument("--jobs", type=cli.positive_int, metavar="N", dest="deprecated_jobs", action=cli.DeprecatedAlias,
                   new="--workers", target="workers", help="deprecated spelling of --workers")
    p.add_argument("--threads", type=cli.positive_int, default=1, metavar="N",
                   help="torch CPU threads per cell (default 1: the small models run faster without thread "
                        "hand-offs, and --workers uses the cores)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: cells in --workers processes here; ray: cells as Ray tasks (--threads CPUs each, "
                        "a GPU for neural cells where the cluster has them) on --ray-address, RAY_ADDRESS or a "
                        "local Ray instance of --workers x --threads CPUs (needs the ray extra; see README, 'Running "
                        "on a cluster'); the results store is written here either way (default: local)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (HOST:PORT of 'ray start --head', or auto); "
                        "datasets and --out must be on a file system every node sees at the same path")
    p.add_argument("--suite", choices=SUITES,
                   help="probes: instead of Tables 1-4, every model on every probe sample of nemu.sample (made and "
                        "built under OUT/probes/), one table (OUT/probe_table.md, .csv, .tex: test miF1 per model "
                        "and probe, each probe's ceiling and constant baseline in its header) and a figure "
                        "(OUT/probe_figure.png, .pdf); --data, --figure-song and the Table 3 flags do not apply")
    p.add_argument("--probes", type=cli.comma_list(), metavar="A,B",
                   help="with --suite probes: the probes to run, comma-separated (default: every probe of "
                        "nemu.sample.PROBES)")
    p.add_argument("--probe-songs", type=cli.number(int, low=20, what="an integer of at least 20"), metavar="N",
                   help=f"with --suite probes: songs generated per probe sample (default: {PROBE_SONGS}, so that BR, "
                        f"HHMPN, its four ablations and MulT on every probe fit in 45 minutes on 2 cores)")
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    cli.add_progress(p)
    return p


@cli.command("pipelines.benchmark", resumes=True, stop_children=True)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        from mmer.registry import catalogue

        for spec in catalogue():
            print(f"{spec['name']:16s} {spec['group']:15s} {spec['kind']:9s} {spec['citation']}")
        return 0
    problem = cli.out_folder_problem("--out", args.out)  # before anything is imported or computed
    if problem:
        return cli.error(PROG, problem)
    if args.suite is None:
        unused = [flag for flag, given in (("--probes", args.probes), ("--probe-songs", args.probe_songs))
                  if given]
    else:
        unused = [flag for flag, given in (("--data", args.datasets), ("--figure-song", args.figure_song),
                                           ("--table3-folds", args.table3_folds), ("--table3-seeds", args.table3_seeds))
                  if given]
    if unused:
        where = "without --suite" if args.suite is None else f"with --suite {args.suite}"
        return cli.error(PROG, f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply {where}")
    from mmer.registry import UnknownModelError, models, resolve_names

    registry = models()
    try:
        model_names = resolve_names(",".join(args.models)) if args.models else list(registry)
    except UnknownModelError as exc:
        return cli.error(PROG, exc)
    for given in args.models or ():
        if re.search(r"\bw[-_]o\b", given.lower()):  # the old run-folder spelling hhmpn-w-o-f2f
            cli.warn_deprecated(PROG, f"--models {given}",
                                f"--models {re.sub(r'(?i)w[-_]o', 'no', given)} (the one spelling of the ablations)")
    if args.threshold is None:
        args.threshold = SUITE_THRESHOLD_RULE if args.suite == "probes" else DEFAULT_THRESHOLD_RULE
    n_folds = args.folds if args.folds is not None else PROFILE_FOLDS[args.profile]
    n_table3 = args.table3_folds if args.table3_folds is not None else n_folds
    from baselines import run_all
    from baselines.cells import limit_threads
    from nemu.ray_engine import RayUnavailable

    limit_threads(args.threads)
    if args.suite == "probes":
        return _probe_suite(args, model_names, n_folds)
    datasets = dict(args.datasets) if args.datasets else {"nemu": run_all.ensure_sample()}
    try:
        summary = run_all.run(datasets, model_names, list(range(n_folds)), args.seeds, args.profile, args.out,
                              table3=not args.no_table3, table3_folds=list(range(n_table3)),
                              table3_seeds=args.table3_seeds or args.seeds[:1], device=args.device,
                              progress=show_progress(not args.no_progress), jobs=args.workers, threads=args.threads,
                              input_normalization=args.input_normalization, figure_song=args.figure_song,
                              engine=args.engine, ray_address=args.ray_address, threshold=args.threshold,
                              empty_union=args.empty_union)
    except (FileNotFoundError, ValueError, RayUnavailable) as exc:
        return cli.error(PROG, exc)
    print(f"{summary['cells']} cells: {summary['ran']} run, {summary['skipped']} already done, "
          f"{summary['failed']} failed")
    for path in summary["tables"] + summary["figures"]:
        print(f"wrote {path}")
    table2 = args.out / "table2.md"
    if table2 in summary["tables"]:
        print("\n" + table2.read_text(encoding="utf-8"))
    if args.figure_song and not summary["figures"]:
        print(f"{PROG}: note: no figure written for --figure-song {args.figure_song}: no finished HHMPN run on "
              f"all modalities of a dataset with comments", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _probe_suite(args: argparse.Namespace, model_names: list[str], n_folds: int) -> int:
    from baselines.probes import TABLE_NAME, run_suite
    from nemu.extraction import BuildError
    from nemu.ray_engine import RayUnavailable

    try:
        summary = run_suite(model_names, list(range(n_folds)), args.seeds, args.profile, args.out,
                            probes=args.probes, songs=args.probe_songs or PROBE_SONGS,
                            progress=show_progress(not args.no_progress),
                            jobs=args.workers, threads=args.threads, device=args.device,
                            input_normalization=args.input_normalization, engine=args.engine,
                            ray_address=args.ray_address, threshold=args.threshold, empty_union=args.empty_union)
    except (OSError, BuildError, ValueError, RayUnavailable) as exc:
        return cli.error(PROG, exc)
    print(f"{summary['cells']} cells: {summary['ran']} run, {summary['skipped']} already done, "
          f"{summary['failed']} failed")
    for path in summary["tables"] + summary["figures"]:
        print(f"wrote {path}")
    table = args.out / f"{TABLE_NAME}.md"
    if table in summary["tables"]:
        print("\n" + table.read_text(encoding="utf-8"))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
