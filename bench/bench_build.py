"""Benchmark of NEMu construction, printing ratios measured in one run.

1. Feature-extraction time of the build vs the bare librosa / torchvision calls on the same files (the
   overhead of validation, tokenising, caching and bookkeeping).
2. A build with 2 workers vs 1 worker (fresh caches): the extraction stage (build start to last record
   extracted) and the whole build, wall-clock, with the load average beside them (the machine may be shared);
   then the split of the extraction into start-up (build start to the first record extracted: imports and
   warm-up) and the records after it, and the same ratio on a sample of --workers-scale times the songs, where
   the start-up weighs less.
3. The Ray engine on a local instance of 2 CPUs vs the local engine with 2 workers (fresh caches).
4. Peak RSS of a whole build at 1x and 10x the sample size (each build in its own process, 1 worker): the
   streaming build's memory does not grow with the number of songs.

    python -m bench.bench_build [--songs 240] [--encoder efficientnet-lite0] [--seed 0] [--parts ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PARTS = ("overhead", "workers", "ray", "rss")

_BUILD_IN_CHILD = """
import json, os, resource, sys, time
from pathlib import Path
from nemu.build import BuildOptions, build
start = time.perf_counter()
summary = build(BuildOptions(raw_dir=Path(sys.argv[1]), out_dir=Path(sys.argv[2]), workers=int(sys.argv[3]),
                             image_encoder=sys.argv[4], engine=sys.argv[5], progress=False))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "extraction_seconds": summary.extraction_seconds, "kept": summary.kept,
                  "first_record_seconds": summary.first_record_seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def build_in_child(raw: Path, out: Path, workers: int, encoder: str, engine: str = "local") -> dict:
    """A whole build in a fresh process (imports and start-up included), with the 1-minute load average
    just before it; one thread per worker, as a build is run."""
    load = os.getloadavg()[0]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _BUILD_IN_CHILD, str(raw), str(out), str(workers), encoder,
                             engine], cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"build in child failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]) | {"load": load}


def bare_extraction_seconds(raw: Path, encoder: str) -> float:
    """librosa load + MFCC and CNN forward on every file, nothing else (one thread, as the build's workers)."""
    import librosa
    import torch
    from PIL import Image

    from nemu.audio import AudioSettings
    from nemu.images import ImageEncoder, resolve_image_settings

    torch.set_num_threads(1)
    settings = AudioSettings()
    model = ImageEncoder(resolve_image_settings(encoder))
    records = [json.loads(line) for line in (raw / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    start = time.perf_counter()
    for record in records:
        y, _ = librosa.load(str(raw / record["audio"]), sr=settings.sample_rate, mono=True)
        librosa.feature.mfcc(y=y, sr=settings.sample_rate, n_mfcc=settings.n_mfcc, hop_length=settings.hop_length)
        with torch.inference_mode():
            batch = torch.stack([model.transform(Image.open(raw / p).convert("RGB")) for p in record["images"]])
            model.model(batch)
    return time.perf_counter() - start


def build_extraction_seconds(raw: Path, out: Path, encoder: str) -> float:
    """The build's own per-record extraction (validation, text, audio, images, cache write), one process."""
    from nemu.audio import AudioSettings
    from nemu.extraction import ExtractionSettings, extract_record, image_encoder, limit_threads
    from nemu.images import resolve_image_settings
    from nemu.records import read_records

    settings = ExtractionSettings(raw, AudioSettings(), resolve_image_settings(encoder), 64, cache_dir=out / ".cache")
    restore = limit_threads()
    image_encoder(settings.image)  # loaded outside the timing, as the bare run does
    extract_record(read_records(raw).records[0], settings)  # warm jieba's dictionary
    start = time.perf_counter()
    records = read_records(raw).records
    for record in records:
        extract_record(record, settings)
    seconds = time.perf_counter() - start
    restore()
    return seconds


def parser() -> argparse.ArgumentParser:
    from pipelines import cli

    p = cli.command_parser("bench.bench_build", __doc__)
    p.add_argument("--songs", type=cli.positive_int, default=240, metavar="N",
                   help="sample size (1x); 10x is built for the RSS figure")
    p.add_argument("--encoder", default="efficientnet-lite0", help="image encoder to time")
    p.add_argument("--workers-scale", type=cli.positive_int, default=4, metavar="K",
                   help="the workers measurement is repeated on a sample of K times --songs (1: not repeated)")
    p.add_argument("--parts", type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
                   default=list(PARTS), metavar="LIST",
                   help=f"comma-separated measurements to run, of {','.join(PARTS)} (default: all; ray needs the "
                        f"ray extra)")
    cli.add_seed(p, what="of the sample")
    return p


def _speed(name_a: str, a: dict, name_b: str, b: dict, songs: int) -> str:
    return (f"{songs} songs, extraction: {name_a} {a['extraction_seconds']:.1f} s (load {a['load']:.1f}), "
            f"{name_b} {b['extraction_seconds']:.1f} s (load {b['load']:.1f}) -> {name_b} is "
            f"{a['extraction_seconds'] / b['extraction_seconds']:.2f}x as fast; whole build {a['seconds']:.1f} s vs "
            f"{b['seconds']:.1f} s -> {a['seconds'] / b['seconds']:.2f}x")


def _start_up(one: dict, two: dict) -> str:
    """Start-up (build start to the first record extracted) and the records after it, for 1 and 2 workers. With
    2 workers the text-and-audio process already works during the start-up, so the records after it are not
    the same work for both: the ratio of the rests is what the workers and that process reach together."""
    after_one = one["extraction_seconds"] - one["first_record_seconds"]
    after_two = two["extraction_seconds"] - two["first_record_seconds"]
    return (f"1 worker {one['first_record_seconds']:.1f} s to the first record + {after_one:.1f} s for the rest, "
            f"2 workers {two['first_record_seconds']:.1f} s + {after_two:.1f} s -> the first record "
            f"{one['first_record_seconds'] / two['first_record_seconds']:.2f}x as early, the rest "
            f"{after_one / after_two:.2f}x as fast")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser().error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    from nemu.sample import make_sample

    print(f"{os.cpu_count()} CPU(s); 1-minute load average at the start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        make_sample(raw, songs=args.songs, seed=args.seed, progress=False)
        if "overhead" in args.parts:
            bare = bare_extraction_seconds(raw, args.encoder)
            ours = build_extraction_seconds(raw, tmp / "extract", args.encoder)
            print(f"extraction, {args.songs} songs: build {ours:.1f} s vs bare librosa/torchvision {bare:.1f} s "
                  f"-> ratio {ours / bare:.2f}")
        one = None
        if "workers" in args.parts or "rss" in args.parts:
            one = build_in_child(raw, tmp / "w1", 1, args.encoder)
        if "workers" in args.parts or "ray" in args.parts:
            two = build_in_child(raw, tmp / "w2", 2, args.encoder)
        if "workers" in args.parts:
            print("workers: " + _speed("1 worker", one, "2 workers", two, args.songs))
            print("workers, start-up: " + _start_up(one, two))
            if args.workers_scale > 1:
                songs = args.workers_scale * args.songs
                raw_k = tmp / "raw-scale"
                make_sample(raw_k, songs=songs, seed=args.seed, progress=False)
                one_k = build_in_child(raw_k, tmp / "w1-scale", 1, args.encoder)
                two_k = build_in_child(raw_k, tmp / "w2-scale", 2, args.encoder)
                print(f"workers, {args.workers_scale}x sample: " + _speed("1 worker", one_k, "2 workers", two_k, songs))
                print(f"workers, {args.workers_scale}x sample, start-up: " + _start_up(one_k, two_k))
        if "ray" in args.parts:
            on_ray = build_in_child(raw, tmp / "ray", 2, args.encoder, engine="ray")
            versus_one = f"; Ray vs 1 local worker {one['extraction_seconds'] / on_ray['extraction_seconds']:.2f}x" \
                if one else ""
            print("ray: " + _speed("local engine, 2 workers", two, "Ray, local instance of 2 CPUs", on_ray,
                                   args.songs) + versus_one)
        if "rss" in args.parts:
            raw10 = tmp / "raw10"
            make_sample(raw10, songs=10 * args.songs, seed=args.seed, progress=False)
            ten = build_in_child(raw10, tmp / "x10", 1, args.encoder)
            print(f"peak RSS, 1 worker: {args.songs} songs {one['peak_rss_mb']:.0f} MB, {10 * args.songs} songs "
                  f"{ten['peak_rss_mb']:.0f} MB -> ratio {ten['peak_rss_mb'] / one['peak_rss_mb']:.2f} "
                  f"(10x build took {ten['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
