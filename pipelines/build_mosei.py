"""nemu-build-mosei --raw SRC --out OUT: CMU-MOSEI (three source forms) into the toolkit's Parquet layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nemu.progress import show_progress
from pipelines import cli
from nemu.mosei import FOLD_RULES, FORMS, MoseiError, MoseiOptions, build_mosei


def parser() -> argparse.ArgumentParser:
    p = cli.command_parser(
        "pipelines.build_mosei",
        "Build CMU-MOSEI into the layout NEMu uses: OUT/{train,valid,test}/*.parquet, OUT/manifest.json and "
        "OUT/README.md, the dataset card (labels happy, sad, anger, surprise, disgust, fear; modalities text 300, "
        "audio 74, vision 35; time steps are nodes). Decisions (padding, folds, ids, Table 1) are in "
        "nemu/mosei.py's docstring and in the manifest's settings.")
    cli.add_raw(p, metavar="SRC",
                help="the MOSEI source: a folder of CMU-MultimodalSDK .csd files (GloVe vectors, COVAREP, FACET 4.2, "
                     "All Labels), the aligned train_valid_test.pt, or the unaligned mosei_senti_data_noalign.pkl")
    cli.add_out(p, "the built dataset (created; rebuilt in place)")
    p.add_argument("--form", choices=FORMS, default="auto",
                   help="sdk: .csd folder; pt: aligned train_valid_test.pt; pkl: unaligned pkl with labels from "
                        "--labels-pt; auto: .csd files in SRC -> sdk, else by the file's suffix (a folder with one "
                        ".pkl -> pkl, one .pt -> pt)")
    p.add_argument("--labels-pt", type=Path, default=None, metavar="FILE",
                   help="pkl form: the aligned train_valid_test.pt whose 'tgt' labels and dict['tgt'] vocabulary are "
                        "paired by position with the pkl's samples (as TAILOR does); default: the only .pt beside "
                        "the pkl when SRC is a folder")
    p.add_argument("--folds-file", type=Path, default=None, metavar="FILE",
                   help='sdk form: JSON {"train": [video ids], "valid": [...], "test": [...]} for the published '
                        "split; default: the SDK's standard folds shipped in nemu/resources/mosei_standard_folds.json")
    p.add_argument("--folds", choices=FOLD_RULES, default="grouped",
                   help="the 10-fold CV column 'fold': grouped keeps every segment of a video in one fold (videos "
                        "stratified by their labels), so no speaker is in train and test of a rotation; official "
                        "is the row-level stratification of earlier releases (a video's segments may be in "
                        "different folds; evaluate on the published split, the split folders, which every rule "
                        "keeps). Recorded in the manifest's 'folds' and on the card")
    cli.add_seed(p, what="of the stratified 10-fold CV column 'fold'; the split folders keep the source's split")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow full unpickling (can run arbitrary code) for a .pt/.pkl that does not load safely; "
                        "without it such files are refused. Only for files from a source you trust")
    p.add_argument("--neg-inf-to-zero", action="store_true",
                   help="replace -inf features (COVAREP's log of silence) by 0, as MulT and TAILOR do; without it "
                        "they are an error. NaN and +inf are always errors")
    p.add_argument("--drop-incomplete", action="store_true",
                   help="sdk form: drop segments with no node in some modality (like the SDK's hard_unify); "
                        "without it they are kept with that modality empty and counted")
    p.add_argument("--shard-rows", type=cli.positive_int, default=1000, metavar="N", help="rows per Parquet shard")
    p.add_argument("--row-group-rows", type=cli.positive_int, default=100, metavar="N",
                   help="rows per Parquet row group (streaming unit)")
    cli.add_progress(p)
    return p


@cli.command("pipelines.build_mosei")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = cli.out_folder_problem("--out", args.out)
    if problem:
        return cli.error(cli.prog_of("pipelines.build_mosei"), problem)
    options = MoseiOptions(
        src=args.raw, out_dir=args.out, form=args.form, labels_pt=args.labels_pt, folds_file=args.folds_file, folds=args.folds,
        seed=args.seed, trust_pickle=args.trust_pickle, neg_inf_to_zero=args.neg_inf_to_zero,
        drop_incomplete=args.drop_incomplete, rows_per_shard=args.shard_rows, row_group_rows=args.row_group_rows,
        progress=show_progress(not args.no_progress))
    try:
        summary = build_mosei(options)
    except (MoseiError, FileNotFoundError, ValueError, OSError) as exc:
        return cli.error(cli.prog_of("pipelines.build_mosei"), exc)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
