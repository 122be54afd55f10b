"""Benchmark of NEMu construction, printing ratios measured in one run.

1. Feature-extraction time of the build vs the bare librosa / torchvision calls on the same files (the
   overhead of validation, tokenising, caching and bookkeeping).
2. A build with 2 workers vs 1 worker (fresh caches), wall-clock.
3. Peak RSS of a whole build at 1x and 10x the sample size (each build in its own process).

    python -m bench.bench_build [--songs 240] [--encoder efficientnet-lite0] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_BUILD_IN_CHILD = """
import json, resource, sys, time
from pathlib import Path
from nemu.build import BuildOptions, build
start = time.perf_counter()
summary = build(BuildOptions(raw_dir=Path(sys.argv[1]), out_dir=Path(sys.argv[2]), workers=int(sys.argv[3]),
                             image_encoder=sys.argv[4], progress=False))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "kept": summary.kept,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def build_in_child(raw: Path, out: Path, workers: int, encoder: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _BUILD_IN_CHILD, str(raw), str(out), str(workers), encoder],
                            cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    from nemu.build import _init_worker, extract_record
    from nemu.images import ImageEncoder, resolve_image_settings
    from nemu.records import read_records

    image = resolve_image_settings(encoder)
    _init_worker(str(raw), str(out / ".cache"), AudioSettings(), image, 64)
    from nemu.build import _WORKER

    _WORKER["encoder"] = ImageEncoder(image)  # loaded outside the timing, as the bare run does
    extract_record(read_records(raw).records[0])  # warm jieba's dictionary
    start = time.perf_counter()
    records = read_records(raw).records
    for record in records:
        extract_record(record)
    return time.perf_counter() - start


def parser() -> argparse.ArgumentParser:
    from nemu import cli

    p = cli.command_parser("bench.bench_build", __doc__)
    p.add_argument("--songs", type=cli.positive_int, default=240, metavar="N",
                   help="sample size (1x); 10x is built for the RSS figure")
    p.add_argument("--encoder", default="efficientnet-lite0", help="image encoder to time")
    cli.add_seed(p, what="of the sample")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from nemu.sample import make_sample

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        make_sample(raw, songs=args.songs, seed=args.seed)
        bare = bare_extraction_seconds(raw, args.encoder)
        ours = build_extraction_seconds(raw, tmp / "extract", args.encoder)
        print(f"extraction, {args.songs} songs: build {ours:.1f} s vs bare librosa/torchvision {bare:.1f} s "
              f"-> ratio {ours / bare:.2f}")

        one = build_in_child(raw, tmp / "w1", 1, args.encoder)
        two = build_in_child(raw, tmp / "w2", 2, args.encoder)
        print(f"whole build, {args.songs} songs: 1 worker {one['seconds']:.1f} s, 2 workers {two['seconds']:.1f} s "
              f"-> speed-up {one['seconds'] / two['seconds']:.2f}x")

        raw10 = tmp / "raw10"
        make_sample(raw10, songs=10 * args.songs, seed=args.seed)
        ten = build_in_child(raw10, tmp / "x10", 1, args.encoder)
        print(f"peak RSS, 1 worker: {args.songs} songs {one['peak_rss_mb']:.0f} MB, {10 * args.songs} songs "
              f"{ten['peak_rss_mb']:.0f} MB -> ratio {ten['peak_rss_mb'] / one['peak_rss_mb']:.2f} "
              f"(10x build took {ten['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
