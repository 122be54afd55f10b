"""Write the embedded default NEMu raw dataset: ``python -m pipelines.make_sample RAW --songs N --seed S``.

A thin command-line wrapper around :func:`nemu.sample.make_sample`; see that module for what the
folder contains and how labels leave traces in each modality.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Generate a small, deterministic NEMu raw folder from real material shipped with the project and its
dependencies (a pygame music loop, scikit-learn/scikit-image photos, Song ci lyrics, review-corpus
comments), with planted, partial label signal in lyrics, comments, audio and images.

Writes RAW/records.jsonl (one song per line: id, title, artist, tags, lyrics, comments, audio, images),
RAW/audio/*.{wav,ogg,mp3} and RAW/images/*.{jpg,png}: the input of `python -m pipelines.build_nemu`.
Same --songs and --seed give byte-identical files."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.make_sample", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, metavar="RAW",
                        help="output folder (created if missing); must be empty unless --overwrite")
    parser.add_argument("--songs", type=int, default=240, metavar="N",
                        help="number of songs to generate (default: 240, about 40 MB and well under a minute)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="non-negative random seed; a different seed gives a different folder (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="if RAW is not empty, replace its records.jsonl, audio/ and images/ "
                             "(other files in RAW are left untouched); without it a non-empty RAW is refused")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar; print only the JSON summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 2 bad arguments or refused folder)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.songs < 1:
        parser.error("--songs must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")

    from nemu.sample import make_sample  # after argument parsing, so --help stays instant

    try:
        summary = make_sample(args.raw, songs=args.songs, seed=args.seed, overwrite=args.overwrite,
                              progress=not args.quiet)
    except (FileExistsError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
