"""Benchmark: training speed of every neural model against this machine's matrix-multiply rate, in one run.

What is timed: ``mmer.engine.train_epoch`` over ``--batches`` seeded synthetic, already collated batches (move
to the device, forward, loss, backward, clipping, the optimizer step, loss bookkeeping: what ``fit`` runs per
batch, without validation), for each registered neural model (``mmer.registry.models()``, kind "neural") at its
``paper`` configuration (batch size included), on the shapes of each dataset it runs on:

* ``mosei``: CMU-MOSEI aligned, 60 steps per sample of text 300, audio 74 and vision 35 dims (the names and dims
  of ``nemu.mosei``), the same 10-60 real steps in every modality of a sample (aligned), 6 labels;
* ``nemu``: NEMu's four modalities (lyrics 300, comments 300, audio 74, images 1280; 12 labels) with real nodes
  per sample drawn in lyrics 8-64 lines, comments 1-20, audio 30-240 one-second windows (the paper's 115 s
  average song), images 1-2 (cover and artist picture), padded to the batch's longest (the loader's collation).

Models whose ``applicable`` refuses a dataset, or that need a column it lacks (MLEE's ``dominant_emotion`` on
MOSEI), are skipped with the reason.

The limit. The work is counted with ``torch.utils.flop_counter.FlopCounterMode`` on one training step (forward
+ backward; matrix products, convolutions, attention; elementwise work is not counted). Two matmul yardsticks
run in the same process, on the same threads, interleaved with the training (round = yardsticks -> training ->
yardsticks), so both see the same machine load:

* ``own`` (the limit): every matrix product / convolution the model's training step issues, recorded by a
  ``TorchDispatchMode`` (operator, shapes, strides, dtype), replayed on random tensors of the same layout, each
  as often as the step issues it. Its rate is what this machine's BLAS gives for exactly this work, weighted
  by each product's FLOPs, so the fraction ``samples/s x FLOP/sample / own rate`` is the share of the step
  spent in its own matrix products; the rest is overhead (elementwise work, dispatch, the optimizer).
* ``square``: a fixed 2048 x 2048 x 2048 ``torch.matmul``, this machine's near-peak rate on these threads: the
  hardware ceiling, the same for every model (small products run far below it however little overhead).

Every model runs in its own child process (a fresh allocator and ``ru_maxrss``): peak memory is the child's
maximum resident set after the warm-up training step, before any yardstick tensor exists (it includes the
torch runtime; ``rss_base_mib`` is the same before the first training step). At least 5 rounds; the median
and the min-max over rounds are printed and written with ``--json``, beside what the figure depends on
(threads, OMP/KMP settings, torch version and its BLAS, the CPU, the load average before and after).

``--profile N`` prints the N operators with the most self CPU time in one extra training chunk under
``torch.profiler`` (and their share), per model. ``--code PATH`` benchmarks another checkout's models (its
``mmer``/``hhmpn``/``baselines``) with this bench, e.g. ``--code /work/main`` for today's main, interleaved
with this checkout when given with ``--compare``: the ratio of the two in the same run survives a loaded machine.

    python -m bench.bench_train_speed [--models HHMPN,MulT] [--datasets mosei,nemu] [--threads 2] [--rounds 5]
                                      [--json FILE] [--profile 15] [--code PATH [--compare]]
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
MARKER = "BENCH-RESULT "

MOSEI_STEPS = 60
#: dataset -> (modality -> (dim, fewest, most real nodes per sample), labels, aligned: one length for all)
DATASETS = {
    "mosei": ({"text": (300, 10, MOSEI_STEPS), "audio": (74, 10, MOSEI_STEPS), "vision": (35, 10, MOSEI_STEPS)}, 6,
              True),
    "nemu": ({"lyrics": (300, 8, 64), "comments": (300, 1, 20), "audio": (74, 30, 240), "images": (1280, 1, 2)}, 12,
             False),
}
TITLES = {"mosei": "CMU-MOSEI", "nemu": "NEMu"}
SQUARE = 2048


# ----------------------------------------------------------------------------------------------- inputs
def synthetic_batch(dataset: str, batch_size: int, seed: int) -> dict:
    """One collated batch of ``dataset``'s shapes (right padding, bool masks; the first sample is the longest)."""
    import torch

    shapes, num_labels, aligned = DATASETS[dataset]
    g = torch.Generator().manual_seed(seed)
    features, masks, shared = {}, {}, None
    for name, (dim, low, high) in shapes.items():
        lengths = shared if aligned and shared is not None else torch.randint(low, high + 1, (batch_size,), generator=g)
        lengths[0] = high
        shared = lengths
        mask = torch.arange(high)[None, :] < lengths[:, None]
        features[name] = torch.randn(batch_size, high, dim, generator=g) * mask[..., None]
        masks[name] = mask
    labels = (torch.rand(batch_size, num_labels, generator=g) < 0.25).float()
    batch = {"features": features, "masks": masks, "labels": labels, "ids": [f"{seed}-{i}" for i in range(batch_size)]}
    if dataset == "nemu":  # the dominant emotion MLEE trains on: one of the sample's labels, -1 without any
        first = torch.where(labels.any(dim=1), labels.argmax(dim=1), torch.full((batch_size,), -1))
        batch["extras"] = {"dominant_emotion": first}
    return batch


def data_info(dataset: str):
    import numpy as np

    from mmer.registry import DataInfo

    shapes, num_labels, _ = DATASETS[dataset]
    rng = np.random.default_rng(0)
    return DataInfo(TITLES[dataset], {name: dim for name, (dim, _, _) in shapes.items()},
                    [f"label{i}" for i in range(num_labels)], (rng.random((512, num_labels)) < 0.25).astype(int),
                    ("dominant_emotion",) if dataset == "nemu" else ())


# ----------------------------------------------------------------------------------------------- yardsticks
def record_products(step) -> list[tuple]:
    """The matrix products (every operator ``FlopCounterMode`` counts) that ``step()`` issues, as
    ``(operator, argument layout)`` pairs; tensors are kept as (shape, stride, dtype) only."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map
    from torch.utils.flop_counter import flop_registry

    calls = []

    def layout(x):
        return ("tensor", tuple(x.shape), tuple(x.stride()), x.dtype) if isinstance(x, torch.Tensor) else x

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket in flop_registry:
                calls.append((func, tree_map(layout, args), tree_map(layout, kwargs)))
            return func(*args, **kwargs)

    with Recorder():
        step()
    return calls


class Replay:
    """The recorded products on random tensors of the same layouts, grouped by signature (one set of inputs each)."""

    def __init__(self, calls: list[tuple]):
        import torch
        from torch.utils._pytree import tree_map
        from torch.utils.flop_counter import FlopCounterMode

        g = torch.Generator().manual_seed(0)

        def make(x):
            if isinstance(x, tuple) and len(x) == 4 and x[0] == "tensor":
                _, shape, stride, dtype = x
                size = 1 + sum((n - 1) * s for n, s in zip(shape, stride) if n > 0)
                storage = torch.randn(size, generator=g).to(dtype) if dtype.is_floating_point else \
                    torch.zeros(size, dtype=dtype)
                return storage.as_strided(shape, stride)
            return x

        counts: dict[str, list] = {}
        for func, args, kwargs in calls:
            key = repr((func, args, kwargs))
            if key in counts:
                counts[key][1] += 1
            else:
                counts[key] = [(func, args, kwargs), 1]
        self.work = []
        for (func, args, kwargs), count in counts.values():
            is_tensor = lambda x: isinstance(x, tuple) and len(x) == 4 and x[0] == "tensor"  # noqa: E731
            self.work.append((func, tree_map(make, args, is_leaf=is_tensor), tree_map(make, kwargs, is_leaf=is_tensor),
                              count))
        self.signatures, self.calls = len(self.work), sum(w[3] for w in self.work)
        with FlopCounterMode(display=False) as counter:
            self.once()
        self.flops = int(counter.get_total_flops())

    def once(self):
        for func, args, kwargs, count in self.work:
            for _ in range(count):
                func(*args, **kwargs)

    def rate(self, seconds: float) -> float:
        """Sustained FLOP/s over whole replays, for at least ``seconds`` (at least one replay)."""
        passes, start = 0, time.perf_counter()
        while True:
            self.once()
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return passes * self.flops / elapsed


def square_rate(seconds: float, dtype) -> float:
    import torch

    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(SQUARE, SQUARE, generator=g).to(dtype) for _ in range(2))
    a @ b
    passes, start = 0, time.perf_counter()
    while True:
        a @ b
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return passes * 2 * SQUARE**3 / elapsed


# ----------------------------------------------------------------------------------------------- one model
def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def spread(values: list[float]) -> dict:
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "q1": quartiles[0],
            "q3": quartiles[2]}


class ModelBench:
    """One model on one dataset's shapes in this process (the child's work): set up, then :meth:`round` on demand."""

    def __init__(self, name: str, dataset: str, *, threads: int, batches: int, yardstick_seconds: float, seed: int):
        import torch

        torch.set_num_threads(threads)
        from mmer import engine
        from mmer.registry import models

        self.result = {"model": name, "dataset": dataset}
        spec = models()[name]
        info = data_info(dataset)
        reason = spec.applicable(info)
        missing = [c for c in spec.extra_columns if c not in info.columns]
        if reason is None and missing:
            reason = f"needs the column(s) {', '.join(missing)}, which {info.dataset} does not have"
        if reason is not None:
            self.result["skipped"] = reason
            return
        config = spec.config("paper")
        self.batch_size = batch_size = int(config["batch_size"])
        engine.seed_everything(seed)
        model = self.model = spec.factory(config, info)
        device = torch.device("cpu")
        model.to(device)
        self.data = data = [synthetic_batch(dataset, batch_size, seed + i) for i in range(batches)]
        if hasattr(model, "configure_optimizer"):  # as engine.fit does
            optimizer, scheduler = model.configure_optimizer(config["lr"], 10**6)
        else:
            optimizer, scheduler = engine.make_optimizer(model, config["lr"], device), None
        clip = config.get("clip")
        rss_base = maxrss_mib()

        def train(chunk) -> float:
            start = time.perf_counter()
            engine.train_epoch(model, chunk, optimizer, device, clip=clip, scheduler=scheduler)
            return len(chunk) * batch_size / (time.perf_counter() - start)

        self.train = train
        train(data[:1])  # warm-up: allocator, oneDNN primitives, lazy state
        rss_peak = maxrss_mib()

        def step():
            model.train()
            outputs = model(data[0])
            model.loss(outputs, data[0]).backward()
            model.zero_grad(set_to_none=True)

        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        self.flops_per_sample = counter.get_total_flops() / batch_size
        self.replay = Replay(record_products(step))
        self.dtype = next(model.parameters()).dtype
        self.yardstick_seconds = yardstick_seconds
        self.result.update({"batch_size": batch_size, "parameters": sum(p.numel() for p in model.parameters()),
                            "gflop_per_sample": self.flops_per_sample / 1e9,
                            "products": {"calls": self.replay.calls, "signatures": self.replay.signatures,
                                         "gflop_per_step": self.replay.flops / 1e9},
                            "rss_base_mib": rss_base, "rss_peak_mib": rss_peak, "rounds": []})

    def round(self) -> dict:
        """Yardsticks, a training chunk, yardsticks: one round's figures."""
        seconds = self.yardstick_seconds
        own_before, square_before = self.replay.rate(seconds), square_rate(seconds / 2, self.dtype)
        samples_per_s = self.train(self.data)
        own_after, square_after = self.replay.rate(seconds), square_rate(seconds / 2, self.dtype)
        own, square = (own_before + own_after) / 2, (square_before + square_after) / 2
        work = samples_per_s * self.flops_per_sample
        figures = {"samples_per_s": samples_per_s, "own_gflops": own / 1e9, "square_gflops": square / 1e9,
                   "fraction_own": work / own, "fraction_square": work / square, "load": load()}
        self.result["rounds"].append(figures)
        return figures

    def finish(self, profile_rows: int) -> dict:
        rounds = self.result.get("rounds")
        if rounds:
            self.result["summary"] = {key: spread([r[key] for r in rounds]) for key in
                                      ("samples_per_s", "own_gflops", "square_gflops", "fraction_own", "fraction_square")}
        if profile_rows and "skipped" not in self.result:
            self.result["profile"] = profile_top(lambda: self.train(self.data), profile_rows)
        return self.result


def profile_top(work, rows: int) -> dict:
    """The ``rows`` operators with the most self CPU time during ``work()``, with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return {"total_ms": total / 1e3, "top": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3,
                                              "share": e.self_cpu_time_total / total, "calls": e.count}
                                             for e in events[:rows]]}


# ----------------------------------------------------------------------------------------------- the run
def environment(threads: int) -> dict:
    import torch

    info = {"torch": torch.__version__, "threads": threads, "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "blas": torch.backends.mkl.is_available() and "MKL" or "other",
            "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "KMP_AFFINITY", "OMP_NUM_THREADS",
                                                   "MKL_NUM_THREADS", "GOMP_SPINCOUNT")}}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["parallel"] = [line.strip() for line in torch.__config__.parallel_info().splitlines()
                        if "MKL" in line or "OpenMP" in line or "backend" in line][:4]
    return info


def child(args) -> int:
    """Set up, say "ready", then answer each "round" line on stdin with one round and "finish" with the result."""
    bench = ModelBench(args.child_model, args.child_dataset, threads=args.threads, batches=args.batches,
                       yardstick_seconds=args.yardstick_seconds, seed=args.seed)
    print(MARKER + json.dumps({"ready": "skipped" not in bench.result}), flush=True)
    for line in sys.stdin:
        if line.strip() == "round" and "skipped" not in bench.result:
            print(MARKER + json.dumps(bench.round()), flush=True)
        elif line.strip() == "finish":
            break
    print(MARKER + json.dumps(bench.finish(args.profile)), flush=True)
    return 0


class Child:
    """A child process benchmarking one model of the checkout ``code``, driven round by round."""

    def __init__(self, code: Path, name: str, dataset: str, args):
        env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(args.threads))
        if args.omp_wait_policy != "inherit":
            env["OMP_WAIT_POLICY"] = args.omp_wait_policy
        command = [sys.executable, str(HERE), "--child-model", name, "--child-dataset", dataset,
                   "--threads", str(args.threads), "--batches", str(args.batches),
                   "--yardstick-seconds", str(args.yardstick_seconds), "--seed", str(args.seed),
                   "--profile", str(args.profile)]
        self.code, self.name, self.dataset = code, name, dataset
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.ready = (self.answer() or {}).get("ready", False)

    def answer(self) -> dict | None:
        for line in self.process.stdout:
            if line.startswith(MARKER):
                return json.loads(line[len(MARKER):])
        return None

    def ask(self, what: str) -> dict | None:
        try:
            self.process.stdin.write(what + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return None
        return self.answer()

    def finish(self) -> dict:
        result = self.ask("finish")
        self.process.wait()
        if result is None:
            tail = self.process.stderr.read().strip().splitlines()[-3:]
            result = {"model": self.name, "dataset": self.dataset,
                      "failed": " | ".join(tail) or f"exit {self.process.returncode}"}
        result["code"] = str(self.code)
        return result


def summary_line(r: dict) -> str:
    where = f"{r['model']} on {TITLES[r['dataset']]}" + ("" if r.get("code") in (None, str(REPO)) else
                                                         f" [{r['code']}]")
    if "skipped" in r:
        return f"{where}: skipped ({r['skipped']})"
    if "failed" in r:
        return f"{where}: FAILED ({r['failed']})"
    s = r["summary"]
    f, q, v = s["fraction_own"], s["fraction_square"], s["samples_per_s"]
    return (f"{where}: {v['median']:.2f} samples/s [{v['min']:.2f}-{v['max']:.2f}]; {r['gflop_per_sample']:.4f} "
            f"GFLOP/sample; {f['median']:.1%} [{f['min']:.1%}-{f['max']:.1%}] of its own products' rate "
            f"({s['own_gflops']['median']:.1f} GFLOP/s), {q['median']:.1%} of the {SQUARE}^3 square "
            f"({s['square_gflops']['median']:.1f} GFLOP/s); peak RSS {r['rss_peak_mib']:.0f} MiB; "
            f"{len(r['rounds'])} rounds")


def markdown_table(report: dict) -> str:
    """The README's table: one row per model and dataset, medians with the [min-max] over rounds."""
    rows = ["| model | dataset | batch | GFLOP/sample | samples/s | of own products | of 2048^3 square | peak RSS |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        where = f"| {r['model']}" + ("" if r.get("code") in (None, str(REPO)) else f" [{r['code']}]") + \
            f" | {TITLES[r['dataset']]} |"
        if "summary" not in r:
            rows.append(f"{where} – | – | {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed'} | – | – | – |")
            continue
        s = r["summary"]

        def cell(key, fmt):
            return f"{fmt(s[key]['median'])} [{fmt(s[key]['min'])}–{fmt(s[key]['max'])}]"

        rows.append(f"{where} {r['batch_size']} | {r['gflop_per_sample']:.3f} | {cell('samples_per_s', '{:.1f}'.format)} | "
                    f"{cell('fraction_own', '{:.0%}'.format)} | {cell('fraction_square', '{:.0%}'.format)} | "
                    f"{r['rss_peak_mib'] / 1024:.2f} GiB |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from pipelines import cli

    parser = cli.command_parser("bench.bench_train_speed", __doc__)
    cli.add_models(parser, help_default="every neural model of the registry")
    parser.add_argument("--datasets", type=cli.comma_list(), metavar="D,D", default=list(DATASETS),
                        help=f"dataset shapes to train on, from {', '.join(DATASETS)}")
    parser.add_argument("--threads", type=cli.positive_int, default=2, metavar="N", help="torch intra-op threads")
    parser.add_argument("--rounds", type=cli.number(int, low=5, what="an integer >= 5"), default=5, metavar="N",
                        help="interleaved yardstick/training rounds per model (median, min-max and quartiles over "
                             "them)")
    parser.add_argument("--batches", type=cli.positive_int, default=2, metavar="N",
                        help="training batches (of the model's paper batch size) per round")
    parser.add_argument("--yardstick-seconds", type=cli.positive_float, default=1.0, metavar="S",
                        help="seconds of the own-products yardstick before and after each training chunk (the "
                             "square runs half as long)")
    parser.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE", "inherit"), default="PASSIVE",
                        help="OMP_WAIT_POLICY of the child processes. PASSIVE: idle OpenMP threads sleep instead "
                             "of spinning, which on a shared, oversubscribed CPU was measured 5x faster for 2-thread "
                             "training (13.6 vs 2.7 samples/s at load 10); inherit: this environment's")
    parser.add_argument("--profile", type=cli.nonnegative_int, default=0, metavar="N",
                        help="print the N operators with the most self CPU time per model (torch.profiler); 0: none")
    parser.add_argument("--code", type=Path, default=None, metavar="PATH",
                        help="the checkout whose models to benchmark (its root folder); without it, this one")
    parser.add_argument("--compare", action="store_true",
                        help="with --code: benchmark this checkout too, model by model, alternating, and print the "
                             "ratio of the medians (this / --code)")
    cli.add_seed(parser, what="of the synthetic batches and the weights")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write every result here")
    # the child process's own flags (one model, one dataset)
    parser.add_argument("--child-model", help=argparse_suppress())
    parser.add_argument("--child-dataset", help=argparse_suppress())
    args = parser.parse_args(argv)
    if args.child_model:
        return child(args)

    prog = parser.prog
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        return cli.error(prog, f"--datasets: unknown {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    if args.compare and args.code is None:
        return cli.error(prog, "--compare needs --code PATH (the checkout to compare with)")
    if args.code is not None and not (args.code / "mmer" / "registry.py").is_file():
        return cli.error(prog, f"--code {args.code}: not a checkout of this project (no mmer/registry.py)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.omp_wait_policy != "inherit":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    from mmer.registry import models

    neural = [name for name, spec in models().items() if spec.kind == "neural"]
    chosen = args.models or neural
    wrong = [name for name in chosen if name not in neural]
    if wrong:
        return cli.error(prog, f"--models: {wrong[0]!r} is not a neural model of the registry; choose from "
                               f"{', '.join(neural)}")
    codes = [args.code.resolve()] if args.code is not None else [REPO]
    if args.compare:
        codes = [REPO, args.code.resolve()]
    report = {"environment": environment(args.threads), "load_before": load(), "command": sys.argv, "results": []}
    env = report["environment"]
    print(f"torch {env['torch']}, {args.threads} threads of {env['cpus']} CPUs ({env.get('cpu', '?')}), OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; no GPU used; load average {report['load_before']}", flush=True)
    for dataset in args.datasets:
        for name in chosen:
            # One child per checkout, all set up first, then their rounds alternate: A B A B ... (same load).
            children = [Child(code, name, dataset, args) for code in codes]
            if all(c.ready for c in children):
                for _ in range(args.rounds):
                    for each in children:
                        each.ask("round")
            results = [each.finish() for each in children]
            for result in results:
                report["results"].append(result)
                print(summary_line(result), flush=True)
                for row in result.get("profile", {}).get("top", []):
                    print(f"    {row['share']:6.1%} {row['self_ms']:9.1f} ms {row['calls']:6d}x  {row['op']}")
            if args.compare and all("summary" in r for r in results):
                pairs = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(results[0]["rounds"],
                                                                                 results[1]["rounds"])]
                ratio = spread(pairs)
                report.setdefault("ratios", {})[f"{name} on {TITLES[dataset]}"] = ratio
                print(f"  -> this checkout / {codes[1]}: {ratio['median']:.2f}x samples/s [{ratio['min']:.2f}-"
                      f"{ratio['max']:.2f}] (median and range of the {len(pairs)} interleaved round pairs)")
    report["load_after"] = load()
    print(f"load average at the end {report['load_after']}\n")
    print(markdown_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return 0


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file by Child: the models come from PYTHONPATH, pipelines too
        sys.path[0] = os.environ.get("PYTHONPATH", str(REPO)).split(os.pathsep)[0]
    sys.exit(main())
