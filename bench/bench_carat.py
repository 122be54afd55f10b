"""Benchmark: CARAT training speed on CPU, ours against the official implementation, in one run.

1. Writes the seeded synthetic aligned CMU-MOSEI ``train_valid_test.pt`` of ``bench.official.write_pt`` (60
   left-padded steps of text 300 / visual 35 / audio 74, 10-60 real steps each) and builds it with
   ``python -m pipelines.build_mosei``.
2. Trains OUR CARAT (``baselines.carat``, profile ``paper``: the official train.sh) with ``mmer.engine.fit`` over the
   ``--samples`` training samples for ``--epochs`` epochs; the training loop is timed, validation is not.
3. Extracts chengzju/CARAT from ``--official-git`` (a clone's .git or a bare repository) into a temporary folder,
   patches that copy (the patches are printed) and, in a child process, trains the official ``CARAT`` with
   train.sh's arguments and its own ``BertAdam`` on the SAME ``.pt`` through its own ``AlignedMoseiDataset``
   (batch 64, shuffled, ``drop_last`` as its train loader), the loop of its ``main.train_epoch``.
4. Same loss on the same batch and weights: the child copies the official model's initial weights and buffers
   into ours (the reconstruction layers' input blocks permuted from the official text, visual, audio to our data
   order text, audio, vision), and both compute the training loss of one batch of 64 full-length samples (the
   official masks are all ones, so only a batch without padding is the same input to both), dropout off and the
   shuffles the identity (numpy's permutation patched there, ``CARAT.shuffle_indices`` here).
5. Prints samples/s for both (wall-clock and per CPU-second) and the ratio ours/official.

    python -m bench.bench_carat --official-git PATH [--samples 128] [--threads K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.official import (Blocked, TimedLoader, apply_patches, extract_official, load, measured, print_patches,
                            run_driver, synthetic_mosei)

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_URL = "https://github.com/chengzju/CARAT"
# train.sh's arguments (minus torch.distributed.launch and --gpu_id).
OFFICIAL_ARGS = ["--do_train", "--epochs=20", "--lr", "5e-5", "--seed", "1", "--visual_num_hidden_layers", "4",
                 "--text_num_hidden_layers", "6", "--audio_num_hidden_layers", "4", "--binary_threshold", "0.25",
                 "--recon_mse_weight", "1.0", "--aug_mse_weight", "1.0", "--beta_mse_weight", "0.0",
                 "--lsr_clf_weight", "0.01", "--recon_clf_weight", "0.0", "--aug_clf_weight", "0.1",
                 "--shuffle_aug_clf_weight", "0.1", "--total_aug_clf_weight", "1.0", "--cl_weight", "1.0", "--aligned"]
# (file, old, new, why); each old string must occur exactly once.
SOURCE_PATCHES = [
    ("models/models.py", "import math\n", "import math\nimport numpy as np\n",
     "models.py calls np.random.permutation without importing numpy (NameError at the first training step)"),
    ("models/models.py", "shuffle_total_aug.view(", "shuffle_total_aug.reshape(",
     "advanced indexing with permuted index tensors returns a non-contiguous tensor in current torch; .view raises"),
]
RUNTIME_PATCHES = [
    "stub modules boto3 / botocore.exceptions / requests where absent (models/file_utils.py imports them for "
    "pretrained-weight downloads that are never made; nothing is installed for this bench)",
    "harness instead of main.py (whose set_seed_logger calls torch.cuda.set_device): the model is built as "
    "main.main() builds it (CARAT.from_pretrained with main.get_args() of train.sh's arguments), the optimiser by "
    "main.prep_optimizer, and each step is main.train_epoch's body",
    "torch.load(..., weights_only=False) for our own synthetic .pt (the official loader's plain torch.load refuses "
    "argparse.Namespace since torch 2.6)",
    "loss check only: numpy.random.permutation -> numpy.arange (identity shuffles), dropout modules in eval mode",
]

_OFFICIAL_DRIVER = r'''
import json, os, resource, sys, time, warnings
cfg = json.loads(sys.argv[1])
warnings.filterwarnings("ignore")
os.chdir(cfg["root"]); sys.path.insert(0, cfg["root"])
import numpy as np
import torch
if cfg["threads"]:
    torch.set_num_threads(cfg["threads"])
import types
for name in ("boto3", "botocore", "botocore.exceptions", "requests"):
    try:
        __import__(name)
    except ImportError:  # models/file_utils.py imports them for downloads the bench never makes
        module = sys.modules[name] = types.ModuleType(name)
        module.ClientError = Exception
_load = torch.load
torch.load = lambda *a, **k: _load(*a, **{**k, "weights_only": False})
sys.argv = ["main.py"] + cfg["args"] + ["--data_path", cfg["pt"]]
import main
from models.models import CARAT as Official
from dataloaders.cmu_dataloader import AlignedMoseiDataset
from torch.utils.data import DataLoader

args = main.get_args()
args.n_gpu = 1
torch.manual_seed(cfg["seed"]); np.random.seed(cfg["seed"])
model = Official.from_pretrained(args.text_model, args.visual_model, args.audio_model, task_config=args)
initial = {k: v.clone() for k, v in model.state_dict().items()}
result = {"threads": torch.get_num_threads(),
          "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
train = AlignedMoseiDataset(cfg["pt"], "train", args)
label_input, label_mask = train._get_label_input()
loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
steps = len(loader) * args.epochs
optimizer, _, model = main.prep_optimizer(args, model, steps)
model.train()
epochs = []
for epoch in range(cfg["epochs"]):
    wall, cpu, n, losses = time.perf_counter(), time.process_time(), 0, []
    for batch in loader:
        text, text_mask, video, video_mask, audio, audio_mask, labels = batch
        loss, *_ = model(text, text_mask, video, video_mask, audio, audio_mask, label_input, label_mask,
                         groundTruth_labels=labels, training=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(); optimizer.zero_grad()
        n += len(labels); losses.append(float(loss))
    epochs.append({"samples": n, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                   "losses": losses})
result["epochs"] = epochs
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# ---- the same loss on the same batch and weights
sys.path.insert(0, cfg["repo"])
from baselines.carat import CARAT, PAPER
from mmer.registry import model_kwargs
model = Official.from_pretrained(args.text_model, args.visual_model, args.audio_model, task_config=args)
model.load_state_dict(initial)
names = {"text": "text", "visual": "vision", "audio": "audio"}
ours = CARAT({"text": 300, "audio": 74, "vision": 35}, 6, **model_kwargs(PAPER))
sd, mine = model.state_dict(), {}
def lin(dst, src):
    mine[dst + ".weight"], mine[dst + ".bias"] = sd[src + ".weight"], sd[src + ".bias"]
for off, m in names.items():
    e = f"encoders.{m}"
    lin(f"{e}.input_norm", f"{off}_norm.norm2d")
    lin(f"{e}.embedding", f"{off}.embeddings.word_embeddings")
    table = ours.state_dict()[f"{e}.positions.weight"].clone()
    source = sd[f"{off}.embeddings.position_embeddings.weight"]
    table[:len(source)] = source[:len(table)]
    mine[f"{e}.positions.weight"] = table
    lin(f"{e}.embedding_norm", f"{off}.embeddings.LayerNorm")
    for i in range(len(ours.encoders[m].layers)):
        o, l = f"{off}.encoder.layer.{i}", f"{e}.layers.{i}"
        mine[f"{l}.qkv.weight"] = torch.cat([sd[f"{o}.attention.self.{x}.weight"] for x in ("query", "key", "value")])
        mine[f"{l}.qkv.bias"] = torch.cat([sd[f"{o}.attention.self.{x}.bias"] for x in ("query", "key", "value")])
        lin(f"{l}.attention_out", f"{o}.attention.output.dense")
        lin(f"{l}.attention_norm", f"{o}.attention.output.LayerNorm")
        lin(f"{l}.intermediate", f"{o}.intermediate.dense")
        lin(f"{l}.output", f"{o}.output.dense")
        lin(f"{l}.output_norm", f"{o}.output.LayerNorm")
    mine[f"label_attention.{m}"] = sd[f"{off}_attention.attention.weight"]
    mine[f"classifier.{m}"] = sd[f"{off}_clf_weight"]
    lin(f"encode.{m}.0", f"proj_{off}.linear.0"); lin(f"encode.{m}.2", f"proj_{off}.output")
    lin(f"decode.{m}.0", f"de_proj_{off}.linear.0"); lin(f"decode.{m}.2", f"de_proj_{off}.output")
    mine[f"positive_prototypes_{m}"] = sd[f"{off}_pos_protos"]
    mine[f"negative_prototypes_{m}"] = sd[f"{off}_neg_protos"]
    recon = {"audio": "tv2a", "visual": "ta2v", "text": "va2t"}[off]
    w = sd[f"{recon}.output.weight"]
    blocks = {"text": w[:, :256], "visual": w[:, 256:512], "audio": w[:, 512:]}
    mine[f"reconstruct.{m}.0.weight"] = torch.cat([blocks["text"], blocks["audio"], blocks["visual"]], dim=1)
    mine[f"reconstruct.{m}.0.bias"] = sd[f"{recon}.output.bias"]
lin("aggregate.0", "agg.linear.0"); lin("aggregate.2", "agg.output")
mine["queue"] = sd["queue"]
state = ours.state_dict()
missing = sorted(set(state) - set(mine) - {"queue_ids", "queue_pointer"})
state.update(mine)
ours.load_state_dict(state)
g = torch.Generator().manual_seed(cfg["seed"] + 1)
B, S = 64, 60
x = {"text": torch.randn(B, S, 300, generator=g), "audio": torch.randn(B, S, 74, generator=g),
     "vision": torch.randn(B, S, 35, generator=g)}
labels = (torch.rand(B, 6, generator=g) < 0.3).float()
ones = torch.ones(B, S, dtype=torch.long)
np.random.permutation = lambda n: np.arange(n)
for module in (model, ours):
    module.train()
    for sub in module.modules():
        if isinstance(sub, torch.nn.Dropout) or type(sub).__name__ == "EncoderLayer":
            sub.eval()
ours.shuffle_indices = lambda B, M, L, device: (torch.arange(B)[:, None, None].expand(B, M, L),
                                                torch.arange(M)[None, :, None].expand(B, M, L))
official_loss, *_ = model(x["text"], ones, x["vision"], ones, x["audio"], ones, label_input, label_mask,
                          groundTruth_labels=labels, training=True)
batch = {"features": x, "masks": {m: torch.ones(B, S, dtype=torch.bool) for m in x}, "labels": labels}
outputs = ours(batch)
result["check"] = {"official_loss": float(official_loss), "ours_loss": float(ours.loss(outputs, batch)),
                   "unmapped_ours": missing,
                   "terms": {k: float(v) for k, v in ours.loss_terms(outputs, batch).items()}}
print("RESULT " + json.dumps(result))
'''


def run_ours(built: Path, epochs: int, seed: int) -> dict:
    import torch

    from baselines.carat import PAPER
    from mmer.engine import count_parameters, fit, make_loaders, seed_everything
    from mmer.registry import get
    from mmer.runner import data_info
    from nemu import MMERDataset

    datasets = {split: MMERDataset(built, split) for split in ("train", "valid")}
    info = data_info("mosei", built, datasets)
    seed_everything(seed)
    model = get("CARAT").factory(dict(PAPER), info)
    loaders = make_loaders(datasets, PAPER["batch_size"], seed)
    timed = TimedLoader(loaders["train"])
    result = fit(model, timed, loaders["valid"], epochs=epochs, lr=PAPER["lr"], clip=PAPER["clip"], device="cpu",
                 seed=seed, progress=False, threshold=PAPER["threshold"], label_names=info.label_names)
    return {"parameters": count_parameters(model), "threads": torch.get_num_threads(), "epochs": timed.epochs,
            "losses": [record["train_loss"] for record in result.history]}


def run_official(root: Path, pt: Path, epochs: int, seed: int, threads: int | None, timeout: float | None) -> dict:
    config = {"root": str(root), "pt": str(pt), "args": OFFICIAL_ARGS, "epochs": epochs, "seed": seed,
              "threads": threads, "repo": str(REPO)}
    return run_driver(root, _OFFICIAL_DRIVER, config, threads, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_carat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128,
                        help="training samples (multiples of 64: the official loader drops the last partial batch)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official-git", type=Path, required=True,
                        help=f"git directory of {OFFICIAL_URL} (a clone's .git or a bare repository)")
    parser.add_argument("--official-timeout", type=float, default=None)
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.samples < 64 or args.samples % 64:
        parser.error("--samples must be a positive multiple of 64")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cbench-", dir=args.workdir))
    report: dict = {"samples": args.samples, "epochs": args.epochs, "cpu_count": os.cpu_count()}
    try:
        pt, built = synthetic_mosei(work, args.samples, args.eval_samples, args.seed)
        print(f"[ours] {args.epochs} epoch(s) x {args.samples} samples (load avg {load()}) ...", flush=True)
        ours = run_ours(built, args.epochs, args.seed)
        ours.update(measured(ours["epochs"]))
        n, wall, per_s, per_cpu_s = ours["samples"], ours["wall"], ours["samples_per_s"], ours["samples_per_cpu_s"]
        report["ours"] = ours
        ours_line = (f"ours     CARAT (baselines.carat, profile 'paper'; {ours['parameters']:,} parameters): {n} "
                     f"training samples in {wall:.1f} s -> {per_s:.3f} samples/s ({per_cpu_s:.3f} samples/CPU-s), "
                     f"torch threads {ours['threads']}")
        print(ours_line, flush=True)
        official_line = ratio_line = check_line = None
        if args.skip_official:
            official_line = "official skipped (--skip-official)"
        else:
            try:
                root, commit = extract_official(args.official_git, work / "official")
                apply_patches(root, SOURCE_PATCHES)
                print_patches("chengzju/CARAT", commit, SOURCE_PATCHES, RUNTIME_PATCHES)
                print(f"[official] {args.epochs} epoch(s) x {args.samples} samples, train.sh: "
                      f"{' '.join(OFFICIAL_ARGS)} (load avg {load()}) ...", flush=True)
                official = run_official(root, pt, args.epochs, args.seed, args.threads, args.official_timeout)
                official.update(measured(official["epochs"]), commit=commit)
                n_o, wall_o = official["samples"], official["wall"]
                per_s_o, per_cpu_s_o = official["samples_per_s"], official["samples_per_cpu_s"]
                report["official"] = official
                official_line = (f"official CARAT (chengzju/CARAT@{commit}, train.sh; {official['parameters']:,} "
                                 f"parameters): {n_o} training samples in {wall_o:.1f} s -> {per_s_o:.3f} samples/s "
                                 f"({per_cpu_s_o:.3f} samples/CPU-s), peak RSS {official['peak_rss_mb'] / 1024:.1f} GiB")
                report["ratio_wall"], report["ratio_cpu"] = per_s / per_s_o, per_cpu_s / per_cpu_s_o
                ratio_line = (f"ratio ours/official: {report['ratio_wall']:.1f}x samples/s "
                              f"({report['ratio_cpu']:.1f}x samples/CPU-s), same run, same .pt")
                c = official["check"]
                check_line = (f"same weights, same full-length batch of 64, dropout off, identity shuffles: loss "
                              f"official {c['official_loss']:.6f}, ours {c['ours_loss']:.6f} "
                              f"(difference {abs(c['official_loss'] - c['ours_loss']):.2e}; ours' own initial values "
                              f"kept for {c['unmapped_ours'] or 'nothing'})")
            except Blocked as exc:
                report["official_blocked"] = str(exc)
                official_line = f"official CARAT: BLOCKED: {exc}"
        print()
        for line in (ours_line, official_line, ratio_line, check_line):
            if line:
                print(line)
        print(f"(this machine: {os.cpu_count()} CPUs; load average at the end {load()}; validation not timed)")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
