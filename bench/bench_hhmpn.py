"""Benchmark: HHMPN training speed on CPU, ours against the official implementation, in one run.

1. Writes a seeded synthetic aligned CMU-MOSEI ``train_valid_test.pt`` (the format HHMPN, TAILOR and
   CARAT load: 60 aligned steps of text 300 / visual 35 / audio 74, left-padded to 60, each sample
   10-60 real steps; label-id lists ``[BOS, ids..., EOS]``) to a temporary folder under /tmp and builds
   it with our ``python -m pipelines.build_mosei``.
2. Trains OUR HHMPN (``hhmpn.model.HHMPN``, ``profile("paper")``: d=256, T=3, batch 64, lambda=0.2,
   lr 1e-4, Adam, clipping at 10) with ``mmer.engine.fit`` for ``--epochs`` epochs over the
   ``--samples`` training samples. Timed: the training loop only (data loading, forward, backward,
   clipping, optimizer step); the per-epoch validation that ``fit`` runs is excluded.
3. Extracts the official implementation (MANLP-suda/HHMPN) from the git directory given with
   ``--official-git`` (a clone or bare repository; without it, ``git clone`` of the GitHub URL when the
   network allows) into the same temporary folder, patches that copy so it runs on CPU with this
   torch (the patch list is printed), and runs its own ``train.train_epoch`` on the SAME ``.pt`` with
   its run script's configuration (``HHMPN/begin.sh``: d_model 512, d_inner_hid 512, 3+3 layers,
   8 heads, dropout 0.2, lr 1e-5, graph encoder/decoder, prior label mask, batch 8 with 8-step
   gradient accumulation = 64 samples per optimizer step), for the same number of epochs over the same
   samples. The paper's d=256 is probed too: the official encoder (``lamp/multran.py``) hard-codes
   512-wide outputs, so ``-d_model 256`` fails on the first forward pass; the failure is printed.
4. Prints one line per implementation (samples/s wall-clock, and samples per CPU-second, which is
   steadier on a shared machine) and the ratio ours/official.

Nothing of the official code is written into the repository; the temporary folder is deleted at the end
(``--keep`` keeps it). The official half runs in a child process with this virtualenv's python.

    python -m bench.bench_hhmpn [--official-git PATH] [--samples 64] [--epochs 1] [--threads K]

For training speed against this machine's matrix-multiply limit, see ``bench/bench_train_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.official import (Blocked, TimedLoader, apply_patches, extract_official, load, measured,
                            print_patches, run_driver, synthetic_mosei)

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_URL = "https://github.com/MANLP-suda/HHMPN"

# The official run script's uncommented line (HHMPN/begin.sh), minus CUDA_VISIBLE_DEVICES/nohup/logging.
OFFICIAL_ARGS = ["-dataset", "mosei", "-batch_size", "8", "-d_model", "512", "-d_inner_hid", "512",
                 "-n_layers_enc", "3", "-n_layers_dec", "3", "-n_head", "8", "-epoch", "50", "-dropout", "0.2",
                 "-dec_dropout", "0.2", "-lr", "0.00001", "-encoder", "graph", "-decoder", "graph",
                 "-label_mask", "prior", "-accum_count", "8"]

# Source patches applied to the temporary copy: (file, old, new, why). Each old string must occur exactly once.
SOURCE_PATCHES = [
    ("lamp/position_embedding.py", "positions.view(-1)", "positions.reshape(-1)",
     "current torch's Tensor.clone() keeps the strides of the transposed input, so the positions tensor is "
     "not contiguous and .view(-1) raises"),
    ("lamp/multihead_attention.py", "q *= self.scaling", "q = q * self.scaling",
     "in-place scaling of a view returned by chunk()/split() is an autograd error in current torch"),
]
# Patches made at run time inside the child process (no file is changed for these).
RUNTIME_PATCHES = [
    "torch.Tensor.cuda -> returns the tensor unchanged (Encoders.py, Decoders.py and train.py call "
    ".cuda() unconditionally); -no_cuda is passed so the official DataLoader keeps batches on the CPU",
    "a stub module 'six' with six.moves.xrange = range (utils/evals.py imports it; six is not installed, "
    "nothing is installed for this bench)",
    "torch.load(..., weights_only=False) for our own synthetic .pt (main.py's plain torch.load refuses numpy "
    "arrays and argparse.Namespace since torch 2.6)",
    "harness instead of main.py: builds LAMP exactly as main.main() does, then calls the official "
    "train.train_epoch per epoch; run_model's per-epoch validation/test/metrics/checkpoint writing is skipped",
]

# Runs in a child process with cwd = the official HHMPN folder. argv: config json.
_OFFICIAL_DRIVER = r'''
import argparse, gc, json, os, random, resource, sys, time, types, warnings
cfg = json.loads(sys.argv[1])
warnings.filterwarnings("ignore")  # main.py does the same
os.chdir(cfg["root"]); sys.path.insert(0, cfg["root"])
import numpy as np
import torch
if cfg["threads"]:
    torch.set_num_threads(cfg["threads"])
six = types.ModuleType("six"); six.moves = types.ModuleType("six.moves"); six.moves.xrange = range
sys.modules["six"] = six; sys.modules["six.moves"] = six.moves
torch.Tensor.cuda = lambda self, *args, **kwargs: self

from config_args import config_args, get_args
import utils.utils as utils
from utils.data_loader import process_data
from lamp.Models import LAMP
from train import train_epoch

def seed(s):
    random.seed(s); np.random.seed(s); torch.manual_seed(s)

def options(extra):
    sys.argv = ["main.py"] + cfg["args"] + ["-no_cuda", "-results_dir", cfg["results"]] + extra
    opt = config_args(get_args(argparse.ArgumentParser()))
    opt.data = cfg["pt"]
    return opt

def build(opt, data):
    train_data, valid_data, test_data, label_adj_matrix, opt = process_data(data, opt)
    model = LAMP(  # the call in main.py, argument for argument
        opt.tgt_vocab_size, opt.max_token_text_seq_len_e, opt.max_token_visual_seq_len_e,
        opt.max_token_audio_seq_len_e, opt.max_token_seq_len_d, opt.text_dim, opt.visual_dim, opt.audio_dim,
        proj_share_weight=opt.proj_share_weight, embs_share_weight=opt.embs_share_weight, d_k=opt.d_k,
        d_v=opt.d_v, d_model=opt.d_model, d_word_vec=opt.d_word_vec, d_inner_hid=opt.d_inner_hid,
        n_layers_enc=opt.n_layers_enc, n_layers_dec=opt.n_layers_dec, n_head=opt.n_head, n_head2=opt.n_head2,
        dropout=opt.dropout, dec_dropout=opt.dec_dropout, dec_dropout2=opt.dec_dropout2, encoder=opt.encoder,
        decoder=opt.decoder, enc_transform=opt.enc_transform, onehot=opt.onehot,
        no_enc_pos_embedding=opt.no_enc_pos_embedding, no_dec_self_att=opt.no_dec_self_att, loss=opt.loss,
        label_adj_matrix=label_adj_matrix, attn_type=opt.attn_type, label_mask=opt.label_mask,
        matching_mlp=opt.matching_mlp, graph_conv=opt.graph_conv, int_preds=opt.int_preds)
    return train_data, model, opt

result = {"threads": torch.get_num_threads()}
data = torch.load(cfg["pt"], weights_only=False)  # our own synthetic file

if cfg["probe_d"]:
    # The paper's d = 256: one forward pass on one batch of the official loader.
    seed(cfg["seed"])
    try:
        train_data, model, opt = build(options(["-d_model", str(cfg["probe_d"])]), data)
        src, adj, tgt = next(iter(train_data))
        model.train()
        model(src, adj, None, None)
        result["probe"] = "ran"
    except Exception as exc:
        result["probe"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    model = train_data = None
    gc.collect()

seed(cfg["seed"])
train_data, model, opt = build(options([]), data)
result["parameters"] = int(utils.count_parameters(model))
optimizer = torch.optim.Adam(model.get_trainable_parameters(), betas=(0.9, 0.98), lr=opt.lr)  # as main.py
crit = utils.get_criterion(opt)
n = len(train_data._src_text_insts)
epochs = []
for epoch in range(1, cfg["epochs"] + 1):
    wall, cpu = time.perf_counter(), time.process_time()
    _, _, loss = train_epoch(model, train_data, crit, optimizer, None, epoch, data["dict"], opt)
    epochs.append({"samples": n, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                   "loss": loss / n})
result["epochs"] = epochs
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
'''


def run_ours(built: Path, epochs: int, seed: int) -> dict:
    import torch

    from hhmpn.config import profile
    from mmer.engine import count_parameters, fit, make_loaders, seed_everything
    from hhmpn.model import HHMPN
    from nemu import MMERDataset

    cfg = profile("paper")
    datasets = {split: MMERDataset(built, split) for split in ("train", "valid")}
    train = datasets["train"]
    seed_everything(seed)
    model = HHMPN(train.modality_dims, len(train.label_names), **cfg.model_kwargs())
    loaders = make_loaders(datasets, cfg.batch_size, seed)
    timed = TimedLoader(loaders["train"])
    result = fit(model, timed, loaders["valid"], epochs=epochs, lr=cfg.lr, clip=cfg.clip, device="cpu", seed=seed,
                 progress=False, threshold=cfg.threshold, label_names=train.label_names)
    return {"parameters": count_parameters(model), "threads": torch.get_num_threads(), "epochs": timed.epochs,
            "losses": [record["train_loss"] for record in result.history], "config": cfg}


# --------------------------------------------------------------------------------------------- official
def run_official(root: Path, pt: Path, work: Path, epochs: int, seed: int, threads: int | None,
                 probe_d: int | None, timeout: float | None) -> dict:
    config = {"root": str(root), "pt": str(pt), "results": str(work / "official-results"), "args": OFFICIAL_ARGS,
              "epochs": epochs, "seed": seed, "threads": threads, "probe_d": probe_d}
    return run_driver(root, _OFFICIAL_DRIVER, config, threads, timeout, extra_env={"TQDM_DISABLE": "1"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_hhmpn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64,
                        help="training samples in the synthetic .pt; both implementations train on all of them "
                             "every epoch (64 = one optimizer step of batch 64 for each)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs timed for each implementation")
    parser.add_argument("--eval-samples", type=int, default=64, help="samples in the synthetic valid and test splits")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both implementations (default: torch's default on this machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official-git", type=Path, default=None,
                        help="git directory (a clone's .git or a bare repository) of MANLP-suda/HHMPN; "
                             f"default: clone {OFFICIAL_URL} into the temporary folder (needs the network)")
    parser.add_argument("--official-timeout", type=float, default=None,
                        help="seconds after which the official half is reported as blocked (default: none)")
    parser.add_argument("--skip-official", action="store_true", help="time ours only")
    parser.add_argument("--no-probe", action="store_true", help="skip the official -d_model 256 probe")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the temporary folder is made")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.samples < 8 or args.eval_samples < 8:
        parser.error("--samples and --eval-samples must be at least 8 (the official loader's batch size)")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hbench-", dir=args.workdir))
    report: dict = {"samples": args.samples, "epochs": args.epochs, "cpu_count": os.cpu_count()}
    try:
        # 1. data
        pt, built = synthetic_mosei(work, args.samples, args.eval_samples, args.seed)

        # 2. ours
        print(f"[ours] training {args.epochs} epoch(s) x {args.samples} samples (load avg {load()}) ...", flush=True)
        ours = run_ours(built, args.epochs, args.seed)
        cfg = ours.pop("config")
        ours.update(measured(ours["epochs"]), load_after=load())
        n, wall, per_s, per_cpu_s = ours["samples"], ours["wall"], ours["samples_per_s"], ours["samples_per_cpu_s"]
        report["ours"] = ours
        ours_line = (f"ours     HHMPN (hhmpn.model, profile 'paper': d={cfg.d} T={cfg.rounds} batch {cfg.batch_size} "
                     f"lambda={cfg.lam} lr {cfg.lr:g}; {ours['parameters']:,} parameters): {n} training samples in "
                     f"{wall:.1f} s -> {per_s:.3f} samples/s ({per_cpu_s:.3f} samples/CPU-s), "
                     f"torch threads {ours['threads']}")
        print(ours_line, flush=True)

        # 3. official
        official_line, ratio_line = None, None
        if args.skip_official:
            official_line = "official skipped (--skip-official)"
        else:
            try:
                root, commit = extract_official(args.official_git, work / "official", "HHMPN", clone_url=OFFICIAL_URL)
                apply_patches(root, SOURCE_PATCHES)
                print_patches("MANLP-suda/HHMPN", commit, SOURCE_PATCHES, RUNTIME_PATCHES)
                print(f"[official] training {args.epochs} epoch(s) x {args.samples} samples with begin.sh's "
                      f"arguments: {' '.join(OFFICIAL_ARGS)} (load avg {load()}) ...", flush=True)
                official = run_official(root, pt, work, args.epochs, args.seed, args.threads,
                                        None if args.no_probe else cfg.d, args.official_timeout)
                official.update(measured(official["epochs"]), commit=commit, load_after=load())
                n_o, wall_o = official["samples"], official["wall"]
                per_s_o, per_cpu_s_o = official["samples_per_s"], official["samples_per_cpu_s"]
                report["official"] = official
                if "probe" in official:
                    print(f"official with the paper's -d_model {cfg.d}: {official['probe']}")
                official_line = (f"official HHMPN (MANLP-suda/HHMPN@{commit}, begin.sh: d_model 512 3+3 layers 8 heads "
                                 f"batch 8 x accum 8 = 64 lr 1e-5; {official['parameters']:,} parameters): {n_o} "
                                 f"training samples in {wall_o:.1f} s -> {per_s_o:.3f} samples/s "
                                 f"({per_cpu_s_o:.3f} samples/CPU-s), torch threads {official['threads']}, "
                                 f"peak RSS {official['peak_rss_mb'] / 1024:.1f} GiB")
                report["ratio_wall"] = per_s / per_s_o
                report["ratio_cpu"] = per_cpu_s / per_cpu_s_o
                ratio_line = (f"ratio ours/official: {report['ratio_wall']:.1f}x samples/s "
                              f"({report['ratio_cpu']:.1f}x samples/CPU-s), same run, same .pt, same samples")
            except Blocked as exc:
                report["official_blocked"] = str(exc)
                official_line = f"official HHMPN: BLOCKED: {exc}"
                ratio_line = "ratio ours/official: n/a (official blocked)"
        report["load_end"] = load()

        print()
        print(ours_line)
        print(official_line)
        if ratio_line:
            print(ratio_line)
        print(f"(this machine: {os.cpu_count()} CPUs; 1-min/5-min/15-min load average at the end {report['load_end']}; "
              "timing excludes validation; samples/CPU-s counts all threads' CPU time)")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
