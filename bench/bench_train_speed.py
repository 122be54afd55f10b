"""Benchmark: HHMPN training speed against this machine's matrix-multiply rate, measured in one run.

HHMPN at the paper's configuration (``hhmpn.config.profile("paper")``: d=256, T=3, batch 64, lambda 0.2,
lr 1e-4, Adam, clipping at 10) on CMU-MOSEI shapes: 60 aligned steps per sample of text 300, audio 74
and visual 35 dims, 6 labels; each sample has 10-60 real steps (the rest is padding, as in the aligned
MOSEI). The tensors are seeded synthetic ones, already collated: the timed loop is ``mmer.engine``'s
training epoch (move to device, forward, loss, backward, clipping, Adam step, loss bookkeeping), i.e.
what ``fit`` runs per batch; collation is timed separately (``nemu.loading.collate`` on the same shapes).

The limit: the floating-point work of one training step (forward + backward of a batch of 64) is
counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and attention; elementwise
work is not counted) and divided by the rate of ``torch.matmul`` on the model's own GEMM shapes
(the F2F projections (64*180 x 256) @ (256 x 256) and the F2F update (64*180 x 768) @ (768 x 256)),
measured in the same process, interleaved with the training chunks so both see the same machine
load (the CPU may be shared). Each round is matmul -> training chunk -> matmul; the fraction of the
limit reached is training samples/s x FLOP/sample / matmul FLOP/s, reported per round and as the
median over rounds, beside the load average.

    python -m bench.bench_train_speed [--threads 2] [--rounds 5] [--batches 2] [--precision fp32] [--compile]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path

STEPS = 60
DIMS = {"text": 300, "audio": 74, "visual": 35}
NUM_LABELS = 6


def mosei_batch(batch_size: int, seed: int) -> dict:
    """One collated batch of MOSEI shapes: (B, 60, dim) per modality, 10-60 real steps per sample."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, STEPS + 1, (batch_size,), generator=g)
    lengths[0] = STEPS  # the batch's longest sample fills all 60 steps, as the collated MOSEI batches do
    mask = torch.arange(STEPS)[None, :] < lengths[:, None]
    features = {name: torch.randn(batch_size, STEPS, dim, generator=g) * mask[..., None] for name, dim in DIMS.items()}
    labels = (torch.rand(batch_size, NUM_LABELS, generator=g) < 0.3).float()
    return {"features": features, "masks": {name: mask.clone() for name in DIMS}, "labels": labels,
            "ids": [f"{seed}-{i}" for i in range(batch_size)]}


def collate_seconds(batch_size: int, repeats: int = 5) -> float:
    """Seconds per batch of ``nemu.loading.collate`` on MOSEI-shaped items (median of ``repeats``)."""
    from nemu.loading import collate

    batch = mosei_batch(batch_size, seed=123)
    lengths = batch["masks"]["text"].sum(1)
    items = [{"id": str(i), "labels": batch["labels"][i],
              "features": {m: batch["features"][m][i, : int(lengths[i])].contiguous() for m in DIMS}}
             for i in range(batch_size)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        collate(items)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_flops(model, batch) -> int:
    """FLOPs of one training step's forward + backward (matrix products and attention) on ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        outputs = model(batch)
        model.loss(outputs, batch).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_shapes(batch_size: int, d: int, n_modalities: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the GEMMs that dominate HHMPN's F2F layers at this configuration."""
    rows = batch_size * STEPS * n_modalities
    return [(rows, d, d), (rows, n_modalities * d, d)]


def matmul_rate(shapes: list[tuple[int, int, int]], seconds: float, dtype) -> float:
    """Sustained FLOP/s of ``torch.matmul`` over ``shapes`` (round robin) for about ``seconds``."""
    import torch

    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)) for m, k, n in shapes]
    for a, b in pairs:  # warm-up
        a @ b
    flops, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for (a, b), (m, k, n) in zip(pairs, shapes):
            torch.matmul(a, b)
            flops += 2 * m * k * n
    return flops / (time.perf_counter() - start)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_train_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default, here the number of cores)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved matmul/training rounds (median reported)")
    parser.add_argument("--batches", type=int, default=2, help="training batches of 64 per round")
    parser.add_argument("--matmul-seconds", type=float, default=1.0, help="seconds of matmul timing before and "
                        "after each training chunk")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="the engine's precision option (the matmul limit is measured in the same dtype; "
                             "fp16 matmul on CPU is slow, use it on CUDA)")
    parser.add_argument("--compile", action="store_true", help="train the torch.compile'd model (engine option)")
    parser.add_argument("--gflop-per-sample", type=float, default=None,
                        help="rate the training against this much work per sample instead of the work counted on "
                             "this model (to rate an older implementation by the work the current one needs)")
    parser.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE", "inherit"), default="PASSIVE",
                        help="OMP_WAIT_POLICY for this process (set before torch loads OpenMP). PASSIVE: idle "
                             "OpenMP threads sleep instead of spinning, which on a shared, oversubscribed CPU was "
                             "measured 5x faster for 2-thread training (13.6 vs 2.7 samples/s at load 10); "
                             "inherit: leave the environment as it is")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batches < 1:
        parser.error("--rounds and --batches must be >= 1")

    if args.omp_wait_policy != "inherit":
        if "torch" in sys.modules:
            parser.error("--omp-wait-policy needs a fresh process (torch is already loaded); use inherit")
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import torch

    from mmer import engine
    from hhmpn.config import profile
    from mmer.engine import seed_everything
    from hhmpn.model import HHMPN

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = profile("paper")
    seed_everything(args.seed)
    model = HHMPN(DIMS, NUM_LABELS, **cfg.model_kwargs()).to(device)
    batches = [engine.move_batch(mosei_batch(cfg.batch_size, seed=args.seed + i), device) for i in range(args.batches)]
    counted_per_sample = training_flops(model, batches[0]) / cfg.batch_size
    flops_per_sample = counted_per_sample if args.gflop_per_sample is None else args.gflop_per_sample * 1e9
    shapes = matmul_shapes(cfg.batch_size, cfg.d, len(DIMS))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    optional = {}
    if "precision" in inspect.signature(engine.fit).parameters:
        optional = {"precision": args.precision, "compile": args.compile}
    elif args.precision != "fp32" or args.compile:
        parser.error("this mmer.engine has no precision/compile options")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    class Timed:
        """The training batches, timing one full pass (fit's per-batch work runs between the fetches)."""

        def __init__(self):
            self.seconds = 0.0

        def __len__(self):
            return len(batches)

        def __iter__(self):
            sync()
            start = time.perf_counter()
            yield from batches
            sync()
            self.seconds = time.perf_counter() - start

    def train_chunk() -> float:
        timed = Timed()
        engine.fit(model, timed, batches[:1], epochs=1, lr=cfg.lr, clip=cfg.clip, device=device, seed=args.seed,
                   progress=False, **optional)
        return len(batches) * cfg.batch_size / timed.seconds

    print(f"HHMPN paper profile (d={cfg.d}, T={cfg.rounds}, batch {cfg.batch_size}) on MOSEI shapes "
          f"({STEPS} steps; dims {DIMS}); precision {args.precision}, compile {args.compile}, device {device}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average {load()}", flush=True)
    print(f"counted work per training sample (forward + backward): {counted_per_sample / 1e9:.3f} GFLOP"
          + ("" if args.gflop_per_sample is None else f"; rated against --gflop-per-sample {args.gflop_per_sample}"),
          flush=True)
    collate_s = collate_seconds(cfg.batch_size)
    train_chunk()  # warm-up (allocator, oneDNN primitives, compilation)
    rounds = []
    for r in range(args.rounds):
        before = matmul_rate(shapes, args.matmul_seconds, dtype) if device.type == "cpu" else None
        samples_per_s = train_chunk()
        after = matmul_rate(shapes, args.matmul_seconds, dtype) if device.type == "cpu" else None
        if device.type != "cpu":
            before = after = _cuda_matmul_rate(shapes, args.matmul_seconds, dtype, device)
        limit = (before + after) / 2 / flops_per_sample
        rounds.append({"samples_per_s": samples_per_s, "matmul_gflops": (before + after) / 2e9,
                       "limit_samples_per_s": limit, "fraction": samples_per_s / limit, "load": load()})
        print(f"round {r + 1}: {samples_per_s:.2f} samples/s; matmul {before / 1e9:.1f}/{after / 1e9:.1f} GFLOP/s "
              f"before/after -> limit {limit:.2f} samples/s; fraction {samples_per_s / limit:.1%} "
              f"(load {load()})", flush=True)
    median = {key: statistics.median(r[key] for r in rounds)
              for key in ("samples_per_s", "matmul_gflops", "limit_samples_per_s", "fraction")}
    report = {"precision": args.precision, "compile": args.compile, "device": str(device),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "threads": torch.get_num_threads(), "gflop_per_sample": flops_per_sample / 1e9,
              "counted_gflop_per_sample": counted_per_sample / 1e9,
              "collate_seconds_per_batch": collate_s, "rounds": rounds, "median": median, "load_end": load()}
    step_s = cfg.batch_size / median["samples_per_s"]
    print(f"\nHHMPN training: {median['samples_per_s']:.2f} samples/s (median of {args.rounds} rounds) vs limit "
          f"{median['limit_samples_per_s']:.2f} samples/s ({median['matmul_gflops']:.1f} GFLOP/s matmul, "
          f"{flops_per_sample / 1e9:.3f} GFLOP/sample): {median['fraction']:.1%} of the limit")
    print(f"collate (nemu.loading.collate, 64 MOSEI items): {collate_s * 1e3:.1f} ms/batch = "
          f"{collate_s / step_s:.1%} of a training step; load average at the end {report['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


def _cuda_matmul_rate(shapes, seconds, dtype, device) -> float:
    import torch

    pairs = [(torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype))
             for m, k, n in shapes]
    flops = 0
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for (a, b), (m, k, n) in zip(pairs, shapes):
            a @ b
            flops += 2 * m * k * n
        torch.cuda.synchronize(device)
    return flops / (time.perf_counter() - start)


if __name__ == "__main__":
    sys.exit(main())
