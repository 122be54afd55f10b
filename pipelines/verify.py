"""Check a built dataset folder against its manifest: ``nemu-verify --data OUT`` (or ``nemu-verify OUT``).

A thin command line over :func:`nemu.integrity.verify_dataset`; exit code 0 when the folder is the dataset its
manifest describes (warnings, such as files the manifest does not list, are printed but do not fail it), 1
when it is not, 2 for a usage error (no such folder, or a folder without a manifest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines import cli

PROG = "nemu-verify"

DESCRIPTION = """\
The full check of a built dataset folder (the OUT of nemu-build or nemu-build-mosei) against its manifest.json:
every shard it lists is there with the listed size, sha256 and row count; each shard's schema is the manifest's
(a column per modality whose nodes are the manifest's dim wide, label_vector as wide as the labels, the facts in
the shard's schema metadata equal to the manifest's); the data decodes, node features are finite and ids unique.
Files in the split folders that the manifest does not list are reported as warnings: the toolkit's loaders
ignore them, glob readers (pd.read_parquet("OUT/train")) would not.

The loaders (nemu.load, MMERDataset) run the cheap part of this check on every load: sizes, row counts,
schema and sha256 (check_integrity=False skips the sha256).

Exit code: 0 the folder is its manifest's dataset; 1 it is not (each problem printed, naming the file);
2 usage error (no such folder, or no manifest.json in it)."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser("pipelines.verify", DESCRIPTION,
                                usage="%(prog)s --data DATA [--no-checksums] [--quiet]  (or: %(prog)s DATA)")
    cli.add_data(parser, required=False, more="the folder to check (required; or give it as the only argument)")
    parser.add_argument("data_positional", nargs="?", type=Path, metavar="DATA", default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--no-checksums", action="store_true",
                        help="skip the sha256 of each shard (sizes, rows, schema and data are still checked)")
    parser.add_argument("--quiet", action="store_true", help="print problems only, no warnings or summary line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 problems found, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and args.data_positional is not None:
        parser.error("give the dataset folder once: --data DATA or DATA")
    data = args.data if args.data is not None else args.data_positional
    if data is None:
        parser.error("the following arguments are required: --data (or the folder as the only argument)")

    from nemu.integrity import verify_dataset  # after argument parsing, so --help stays instant
    from nemu.shards import DatasetNotFound

    try:
        report = verify_dataset(data, checksums=not args.no_checksums)
    except DatasetNotFound as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    for problem in report.problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    if not args.quiet:
        for warning in report.warnings:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if report.problems:
        print(f"{PROG}: {data}: {len(report.problems)} problem(s) in {report.shards} shard(s); the folder is not "
              f"the dataset its manifest describes (rebuild it)", file=sys.stderr)
        return 1
    if not args.quiet:
        checks = "sizes, " + ("sha256, " if not args.no_checksums else "") + "rows, schema and data"
        print(f"{PROG}: {data}: ok: {report.shards} shard(s), {report.rows} rows, {report.bytes} bytes; {checks} as "
              f"the manifest lists" + (f"; {len(report.warnings)} warning(s)" if report.warnings else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
