"""Per-sample probabilities and label sets from a run folder of any model (HHMPN, a neural baseline or an estimator).

    hhmpn-predict --run RUN [--data OUT] [--split test] [--fold K] [--output FILE]
    hhmpn-predict --run RUN --raw RAW [--output FILE]                    # new songs, no tags needed
    hhmpn-predict --run RUN --lyrics FILE --audio FILE --image FILE... [--comments FILE]   # one song
    hhmpn-predict --run RUN --drop-modality lyrics[,audio] [--corrupt noise:0.5] [--corrupt shuffle:comments]

RUN is a run folder written by ``hhmpn.train`` or by a cell of ``baselines.run_all`` (neural or estimator)
(``OUT/runs/<dataset>/<model>/fold<k>-seed<s>-<modalities>/``; see ``mmer.runs``). The model is rebuilt
from the registry, the run's saved input-normalisation statistics are applied to the data, and the data
must have the run's labels and modality dimensions. A run folder that cannot be used (missing files,
unreadable run.json, a checkpoint that is not a weights-only state_dict or does not fit the model, other
labels or dims than the data) is refused with a one-line error and exit code 2.

Without --fold it predicts the run's OWN rotation (run.json's fold) and, without --split, its test split: the
songs the run never trained or selected on; it says on stderr which rotation, split and threshold it uses, and
warns when the songs asked for are the run's training or validation songs. --data must be the run's build
(fingerprint, as for --raw); without it the run's own dataset is found (relative to RUN first, so a run folder
moved together with its dataset works from any folder). Songs with no node in any of the run's modalities are
named on stderr and skipped.

The threshold: a song's ``predicted`` labels are those with p >= the run's own threshold, run.json's
config.threshold (0.5 unless the benchmark's validation threshold rule chose another), stated on stderr.

Writes JSON lines to standard output, or to --output FILE; never inside the run folder unless --output names a
file there: ``id``, ``probabilities`` {label: p}, ``predicted`` (labels with p >= threshold), and ``labels``
(the true set, when the data has it). A non-finite probability is refused, never written.

Inputs broken on purpose (``mmer.perturb``; Table 5 asks the same of every run of the benchmark):
``--drop-modality M,M`` removes M (all its nodes absent), ``--corrupt shuffle:M`` gives each song another predicted
song's M nodes, ``--corrupt noise:LEVEL[:M]`` adds Gaussian noise of std LEVEL to the standardised features;
``--perturb-seed`` fixes the draws. They apply after the run's normalisation and after the skip rule above: a
song whose every modality is dropped gets the run's empty-input prediction. Stderr says what was broken.

New songs (``--raw`` or one song's files) are featurised with exactly the settings of the dataset the run was
trained on, read from its manifest, by the build's own code, then normalised with the run's statistics
(``mmer.inference``; output on standard output unless ``--output``). From Python: ``mmer.inference.Predictor``.

From Python (load once, predict many)::

    from mmer.predict import load_run, predict_split
    run = load_run("RUN")
    records = predict_split(run, "OUT").records         # the run's own rotation, test split
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from pipelines import cli
from pipelines.cli import HELP, positive_int

NEW_SONG_FLAGS = ("raw", "lyrics", "audio", "image", "comments")
PROG = "hhmpn-predict"


def add_new_song_arguments(parser) -> None:
    """``--raw RAW`` or one song's ``--lyrics/--audio/--image/--comments`` files, and what featurising needs."""
    group = parser.add_argument_group(
        "new songs from raw files (instead of a split of --data)", textwrap.fill(
        "Features are made with exactly the settings of the dataset the run was trained on (its manifest: image "
        "encoder and weights, audio settings, comment splitting, word vectors), then the run's normalisation "
        "statistics, then the model. --data then names that dataset where it is now (default: the dataset "
        "RUN/run.json names); it must be the same build (fingerprint). Records that cannot be used are reported "
        "on stderr with line, id, field and reason; the others are predicted. Output default: standard output.",
        width=90))
    group.add_argument("--raw", type=Path, metavar="RAW",
                       help=HELP["raw"] + "; records may carry no tags; every usable song is predicted, in RAW's order")
    group.add_argument("--lyrics", type=Path, metavar="FILE", help="one song's lyrics: a UTF-8 text file, LRC or plain")
    group.add_argument("--audio", type=Path, metavar="FILE", help="one song's audio file: wav, flac, ogg or mp3")
    group.add_argument("--image", type=Path, nargs="+", action="extend", metavar="FILE",
                       help="one song's images: jpg or png files (several after one --image, or --image repeated)")
    group.add_argument("--comments", type=Path, metavar="FILE",
                       help="one song's comments: a UTF-8 text file, one comment per line")
    group.add_argument("--id", dest="song_id", metavar="ID",
                       help="one song's id in the output; default: its first file's name without the suffix")
    group.add_argument("--word-vectors", type=Path, metavar="FILE",
                       help="the word-vector file the dataset was built from with --word-vectors (needed then; "
                            "matched by sha256); default: DATA/word_vectors.bin, the vectors the build trained")
    group.add_argument("--image-weights", type=Path, metavar="FILE",
                       help="the image encoder's weights file (matched by sha256 with the dataset's), where the "
                            "build's own search (torchvision's cache, the efficientnet-lite0 package) does not find "
                            "them; default: that search")
    group.add_argument("--workers", type=positive_int, default=1, metavar="N",
                       help="feature-extraction processes; default: 1")


def wants_new_songs(args) -> bool:
    return any(getattr(args, flag, None) for flag in NEW_SONG_FLAGS)


def predict_new_songs(args, run_dir: Path, prog: str = PROG) -> int:
    """The new-song modes of the command line: predict, write JSON lines, report skipped records on stderr.

    Raises ValueError/OSError (one line) for anything that stops the whole prediction; main turns them into
    exit code 2."""
    files = [args.lyrics, args.audio, *(args.image or []), args.comments]
    if args.raw and any(files):
        raise ValueError("give --raw RAW or one song's --lyrics/--audio/--image/--comments files, not both")
    if getattr(args, "fold", None) is not None:
        raise ValueError("--fold selects a split of --data; new songs from raw files have none")
    from mmer.inference import Predictor  # torch: only when work starts (--help stays instant)
    from nemu.build import BuildError

    perturbations = cli.perturbations_of(args)
    predictor = Predictor.load(run_dir, data=args.data, word_vectors=args.word_vectors,
                               image_weights=args.image_weights, device=args.device, workers=args.workers,
                               batch_size=args.batch_size)
    try:
        if args.raw:
            result = predictor.predict_raw(args.raw, perturbations, args.perturb_seed)
        else:
            result = predictor.predict_files(lyrics=args.lyrics, audio=args.audio, images=args.image or [],
                                             comments=args.comments, song_id=args.song_id,
                                             perturbations=perturbations, seed=args.perturb_seed)
    except BuildError as exc:  # extraction workers that cannot start: the environment's fault, said in one line
        raise ValueError(str(exc).splitlines()[0]) from None
    for skipped in result.quarantined:
        print(f"{prog}: skipped line {skipped['line']}" + (f" id {skipped['id']!r}" if skipped["id"] is not None
                                                           else " (no id)")
              + f" field {skipped['field']}: {skipped['reason']}", file=sys.stderr)
    if not result.records and not result.quarantined:
        raise ValueError(f"{args.raw} holds no record to predict")
    if not result.records:
        raise ValueError(f"no song of {args.raw} could be predicted ({len(result.quarantined)} record(s) skipped, "
                         f"reasons above)" if args.raw else "the song could not be predicted (reason above)")
    print(f"{prog}: threshold {result.threshold:g} (run.json's config.threshold)", file=sys.stderr)
    say_perturbed(prog, perturbations, args.perturb_seed)
    where = emit(args.output, result.records)
    if result.text_nodes_without_word_vectors:
        print(f"{prog}: note: {result.text_nodes_without_word_vectors} text node(s) hold no word the dataset's "
              f"vectors know; their features are zeros, as in the build", file=sys.stderr)
    print(f"{prog}: predicted {len(result.records)} song(s), skipped {len(result.quarantined)}; {where}",
          file=sys.stderr)
    return 0


def say_perturbed(prog: str, perturbations: list, seed: int) -> None:
    if perturbations:
        from mmer.perturb import describe

        print(f"{prog}: inputs broken on purpose: {describe(perturbations, seed)}; these are not the run's scores "
              f"on its real inputs", file=sys.stderr)


def emit(output: Path | None, records: list[dict]) -> str:
    """Write the records to ``output`` (atomically) or standard output; says where, for the closing line."""
    from mmer.predict import prediction_lines, write_predictions
    if output:
        write_predictions(output, records)
        return f"wrote {output}"
    sys.stdout.write(prediction_lines(records))
    return "written to standard output"


def predict_dataset_split(args) -> int:
    """--data (or the run's own dataset): one split of the run's rotation, or of --fold's."""
    from mmer.predict import describe_rotation, predict_split  # torch: only when work starts
    perturbations = cli.perturbations_of(args)
    result = predict_split(args.run, args.data, args.split, args.fold, batch_size=args.batch_size,
                           device=args.device, perturbations=perturbations, perturb_seed=args.perturb_seed)
    own = "the run's own" if args.fold is None else "asked with --fold"
    print(f"{PROG}: {describe_rotation(result.fold)} ({own}), split {result.split}, threshold "
          f"{result.threshold:g} (run.json's config.threshold), data {result.data}", file=sys.stderr)
    if result.trained_on:
        print(f"{PROG}: warning: these are songs of the run's {' and '.join(result.trained_on)} split (it was "
              f"trained on {describe_rotation(result.run_fold)}): the scores do not measure unseen songs; "
              f"omit --fold/--split for the run's own test split", file=sys.stderr)
    say_perturbed(PROG, perturbations, args.perturb_seed)
    for song in result.skipped:
        print(f"{PROG}: skipped id {song!r}: no node in any of the run's modalities", file=sys.stderr)
    if not result.records:
        raise ValueError(f"no song of {result.split} could be predicted ({len(result.skipped)} skipped)")
    where = emit(args.output, result.records)
    print(f"{PROG}: predicted {len(result.records)} song(s), skipped {len(result.skipped)}; {where}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = cli.command_parser("pipelines.predict", __doc__)
    cli.add_run(p, aliases=("--checkpoint",))  # or a run_all cell's: RESULTS/runs/DATASET/MODEL/CELL
    cli.add_data(p, required=False,
                 more="the run's own build (fingerprint), whose --split is predicted; with --raw or a song's files: "
                      "the dataset the run was trained on, where it is now (default: the run's own dataset, found "
                      "relative to RUN first, then at run.json's absolute path)")
    cli.add_split(p)
    cli.add_fold(p, help_default="the run's own rotation (run.json's fold), so --split test is the songs it never "
                                 "saw; another K predicts rotation K's --split (a warning when these are the run's "
                                 "training or validation songs)")
    cli.add_output(p, "JSON lines, one per song, with labels predicted at the run's threshold (run.json's "
                      "config.threshold, said on stderr); standard output when omitted; nothing is written in RUN "
                      "unless FILE is there")
    p.add_argument("--device", metavar="DEVICE", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="inference batch size")
    add_new_song_arguments(p)
    cli.add_perturbations(p)
    return p


@cli.command("pipelines.predict")  # Ctrl-C/SIGTERM: one line, exit 130/143 (pipelines.cli)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except RuntimeError as exc:
            print(f"{PROG}: error: --device {args.device!r}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
    try:
        if wants_new_songs(args):  # --raw RAW or one song's files
            return predict_new_songs(args, args.run)
        return predict_dataset_split(args)
    except (OSError, ValueError) as exc:  # RunFolderError is a ValueError; every message is one line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
