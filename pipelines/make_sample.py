"""Write the embedded default NEMu raw dataset: ``nemu-sample --out RAW --songs N --seed S [--probe NAME]``.

A thin command-line wrapper around :func:`nemu.sample.make_sample`; see that module for what the
folder contains and how labels leave traces in each modality.
"""

from __future__ import annotations

import argparse
import json
import sys

from nemu.probes import DEFAULT_PROBE, PROBE_CHOICES
from nemu.progress import show_progress
from pipelines import cli

PROG = cli.prog_of("pipelines.make_sample")

DESCRIPTION = """\
Generate a small, deterministic NEMu raw folder from real material shipped with the project and its
dependencies (a pygame music loop, scikit-learn/scikit-image photos, Song ci lyrics, review-corpus
comments), with planted, partial label signal in lyrics, comments, audio and images. --probe chooses how each
label's evidence is planted (interaction, needle, cooccurrence, unreliable, null, linear, or the default
mixture of them); the generator's ceiling and the constant baseline go into provenance.json and the card.

Writes RAW/records.jsonl (one song per line: id, title, artist, tags, lyrics, comments, audio, images),
RAW/audio/*.{wav,ogg,mp3}, RAW/images/*.{jpg,png} and RAW/provenance.json (synthetic sample, seed, songs:
the build records it, so the dataset is captioned as the synthetic sample): the input of `nemu-build --raw RAW`.
Same --songs, --seed and --probe give byte-identical files; --probe linear is the sample before probes."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser("pipelines.make_sample", DESCRIPTION)
    cli.add_out(parser, "the raw folder to write (created if missing); must be empty unless --overwrite",
                positional_alias=True)
    parser.add_argument("--songs", type=cli.positive_int, default=240, metavar="N",
                        help="number of songs to generate (240: about 40 MB, well under a minute)")
    cli.add_seed(parser, what="non-negative; a different seed gives a different folder")
    parser.add_argument("--probe", choices=PROBE_CHOICES, default=DEFAULT_PROBE,
                        help="which mechanism each label's evidence follows "
                             f"(default: %(default)s; see nemu/probes.py)")
    parser.add_argument("--overwrite", action="store_true",
                        help="if the folder is not empty, replace its records.jsonl, provenance.json, audio/ "
                             "and images/ (other files in it are left untouched); without it a non-empty folder "
                             "is refused")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar; print only the JSON summary")
    return parser


@cli.command("pipelines.make_sample")
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 2 bad arguments or refused folder)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # --seed and --songs are checked by their types (pipelines.cli)
    problem = cli.out_folder_problem("--out", args.out)
    if problem:
        return cli.error(PROG, problem)
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        return cli.error(PROG, f"{args.out} already exists and is not empty; add --overwrite to replace its "
                               f"records.jsonl, provenance.json, audio/ and images/ (other files are kept)")

    from nemu.sample import make_sample  # after argument parsing, so --help stays instant

    try:
        summary = make_sample(args.out, songs=args.songs, seed=args.seed, probe=args.probe, overwrite=args.overwrite,
                              progress=show_progress(not args.quiet))
    except (FileExistsError, NotADirectoryError) as exc:
        return cli.error(PROG, str(exc).replace("pass overwrite=True (--overwrite)", "add --overwrite"))
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
