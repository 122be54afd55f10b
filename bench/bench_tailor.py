"""Benchmark: TAILOR training speed on CPU, ours against the official implementation, in one run; and the loss
of both on the same batch with the same weights.

1. Writes the seeded synthetic aligned CMU-MOSEI ``train_valid_test.pt`` of ``bench.official.write_pt`` (60
   left-padded steps of text 300 / visual 35 / audio 74, 10-60 real steps per sample) to a temporary folder under
   /tmp and builds it with our ``python -m pipelines.build_mosei``.
2. Trains OUR TAILOR (``baselines.tailor``, profile ``paper``: d 256, 6/4/4 unimodal, 3 cross, 1 decoder layers,
   batch 64, lr 5e-5, AdamW + warm-up, clipping at 1.0) with ``mmer.engine.fit`` for ``--epochs`` epochs over the
   ``--samples`` training samples. Timed: the training loop only (data loading, forward, backward, clipping,
   optimizer and schedule step); the per-epoch validation that ``fit`` runs is excluded.
3. Extracts the official implementation (kniter1/TAILOR) from the git directory given with ``--official-git``
   (e.g. the mirror ``/work/.mirror/kniter1+TAILOR/repo``) into the same temporary folder and runs, in a child
   process, its own ``train.train_epoch`` with ``train.sh``'s configuration (``--epochs 20 --batch_size 64 --lr
   5e-5 --visual/audio_num_hidden_layers 4 --bert_num_hidden_layers 6 --aligned``; BertAdam, warm-up 0.1) over its
   ``AlignedMoseiDataset`` of the SAME ``.pt`` (``shuffle=True, drop_last=True`` as shipped). No file of the copy
   is changed; the run-time patches are printed.
4. Loss check: the child also writes its freshly initialised state dict and its training loss (``training=True``,
   eval mode: no dropout) on one fixed batch of full-length samples (60 real steps in every modality, so the
   official all-ones masks are the true masks); we load those weights into ours (names mapped, the
   discriminator's classes reordered from the official text/visual/audio to our text/audio/vision) and compute
   our loss on the same batch. Where the architectures agree (aligned, no padding) the two must match.
5. Prints samples/s for both (wall-clock, and per CPU-second) and the ratio ours/official.

Ours processes only each sample's real steps (10-60 of them); the official code processes all 60 padded steps of
every sample (its masks are all ones): part of the speed ratio is that difference, which is the model's (real
masks), not the engine's.

    python -m bench.bench_tailor --official-git PATH [--samples 64] [--epochs 1]
                                 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.official import (Blocked, TimedLoader, extract_official, load, measured, print_patches, run_driver,
                            synthetic_mosei)

STEPS = 60
OFFICIAL_ARGS = ["--do_train", "--num_thread_reader=0", "--epochs=20", "--batch_size=64", "--n_display=10",
                 "--lr", "5e-5", "--visual_num_hidden_layers", "4", "--bert_num_hidden_layers", "6",
                 "--audio_num_hidden_layers", "4", "--aligned"]  # train.sh, minus the launcher and paths
RUNTIME_PATCHES = [
    "stub modules 'boto3' and 'botocore.exceptions' (src/models/file_utils.py imports them for S3 downloads that "
    "the local config files never use; they are not installed, nothing is installed for this bench)",
    "torch.load(..., weights_only=False) for our own synthetic .pt (cmu_dataloader.py's plain torch.load refuses "
    "numpy arrays and argparse.Namespace since torch 2.6)",
    "harness instead of train.main(): builds the model with TAILOR.from_pretrained and the optimizer with "
    "train.prep_optimizer exactly as main() does, on device cpu (main() calls torch.cuda.set_device), then calls "
    "the official train.train_epoch per epoch; validation, test and checkpoint writing are skipped",
]

# Runs in a child process with cwd = the official folder. argv: config json.
_OFFICIAL_DRIVER = r'''
import json, logging, os, random, resource, sys, time, types, warnings
cfg = json.loads(sys.argv[1])
warnings.filterwarnings("ignore")
os.chdir(cfg["root"]); sys.path.insert(0, cfg["root"])
import numpy as np
import torch
if cfg["threads"]:
    torch.set_num_threads(cfg["threads"])
boto3 = types.ModuleType("boto3"); botocore = types.ModuleType("botocore")
exceptions = types.ModuleType("botocore.exceptions"); exceptions.ClientError = Exception
sys.modules.update({"boto3": boto3, "botocore": botocore, "botocore.exceptions": exceptions})
_load = torch.load
torch.load = lambda *a, **k: _load(*a, **{**k, "weights_only": False})

import train
from src.models.models import TAILOR
from torch.utils.data import DataLoader
from src.dataloaders.cmu_dataloader import AlignedMoseiDataset
train.logger = logging.getLogger("official")

sys.argv = ["train.py"] + cfg["args"] + ["--data_path", cfg["pt"], "--output_dir", cfg["out"], "--seed", str(cfg["seed"])]
args = train.get_args()
random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
device = torch.device("cpu")
model = TAILOR.from_pretrained(args.bert_model, args.visual_model, args.audio_model, args.cross_model,
                               args.decoder_model, task_config=args).to(device)
result = {"threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in model.parameters())}
dataset = AlignedMoseiDataset(args.data_path, "train")
label_input, label_mask = dataset._get_label_input()
loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=0, shuffle=True, drop_last=True)

# loss on the fixed batch with the initial weights, eval mode (no dropout), training=True (the loss branch)
torch.save(model.state_dict(), cfg["state"])
fixed = torch.load(cfg["batch"], weights_only=True)  # a dict of tensors the bench wrote
model.eval()
with torch.no_grad():
    loss = model(fixed["text"], fixed["mask"], fixed["vision"], fixed["mask"], fixed["audio"], fixed["mask"],
                 label_input, label_mask, groundTruth_labels=fixed["labels"], training=True)[0]
result["fixed_batch_loss"] = float(loss)

steps = len(loader) * args.epochs
optimizer, scheduler, model = train.prep_optimizer(args, model, steps, device, 1, 0)
epochs = []
for epoch in range(cfg["epochs"]):
    wall, cpu = time.perf_counter(), time.process_time()
    loss, *_ = train.train_epoch(epoch, args, model, loader, device, 1, optimizer, scheduler, 0,
                                 label_input=label_input, label_mask=label_mask)
    epochs.append({"samples": len(loader) * args.batch_size, "wall": time.perf_counter() - wall,
                   "cpu": time.process_time() - cpu, "loss": loss})
result["epochs"] = epochs
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
'''


def _encoder_layer_map(official: str, ours: str) -> dict[str, str]:
    return {f"{official}.attention.self.query": f"{ours}.attention.query",
            f"{official}.attention.self.key": f"{ours}.attention.key",
            f"{official}.attention.self.value": f"{ours}.attention.value",
            f"{official}.attention.output.dense": f"{ours}.attention.dense",
            f"{official}.attention.output.LayerNorm": f"{ours}.attention.norm",
            f"{official}.intermediate.dense": f"{ours}.ffn.intermediate",
            f"{official}.output.dense": f"{ours}.ffn.dense",
            f"{official}.output.LayerNorm": f"{ours}.ffn.norm"}


def official_to_ours(state: dict, layers: dict[str, int], cross_layers: int, decoder_layers: int) -> dict:
    """The official state dict under our names (poolers dropped); discriminator classes text/visual/audio ->
    text/audio/vision."""
    prefixes = {"text_norm.text_norm2d": "input_norm.text", "visual_norm.visual_norm2d": "input_norm.vision",
                "audio_norm.audio_norm2d": "input_norm.audio",
                "common_feature_extractor.0": "common.0", "private_feature_extractor.0.0": "private.text.0",
                "private_feature_extractor.1.0": "private.vision.0", "private_feature_extractor.2.0": "private.audio.0",
                "modal_discriminator.0": "discriminator.0", "modal_discriminator.3": "discriminator.3",
                "common_classfier.0": "common_classifier.0", "cross_classifier.dense": "classifier.0",
                "decoder.embeddings.word_embeddings": "decoder.embeddings", "decoder.embeddings.LayerNorm": "decoder.norm"}
    for official, ours in (("bert", "text"), ("visual", "vision"), ("audio", "audio")):
        prefixes[f"{official}.embeddings.word_embeddings"] = f"encoders.{ours}.project"
        prefixes[f"{official}.embeddings.position_embeddings"] = f"encoders.{ours}.positions"
        prefixes[f"{official}.embeddings.LayerNorm"] = f"encoders.{ours}.norm"
        for i in range(layers[ours]):
            prefixes |= _encoder_layer_map(f"{official}.encoder.layer.{i}", f"encoders.{ours}.layers.{i}")
    for official, ours in (("va_cross", "fusion.0"), ("vat_cross", "fusion.1"), ("pc_cross", "private_common")):
        prefixes[f"{official}.embeddings.position_embeddings"] = f"{ours}.positions"
        prefixes[f"{official}.embeddings.token_type_embeddings"] = f"{ours}.types"
        prefixes[f"{official}.embeddings.LayerNorm"] = f"{ours}.norm"
        for i in range(cross_layers):
            prefixes |= _encoder_layer_map(f"{official}.encoder.layer.{i}", f"{ours}.layers.{i}")
    for i in range(decoder_layers):
        layer = f"decoder.decoder.layer.{i}"
        for official, ours in (("slf_attn", "self_attention"), ("enc_attn", "cross_attention")):
            prefixes |= {f"{layer}.{official}.att.query": f"decoder.{ours}.{i}.query",
                         f"{layer}.{official}.att.key": f"decoder.{ours}.{i}.key",
                         f"{layer}.{official}.att.value": f"decoder.{ours}.{i}.value",
                         f"{layer}.{official}.output.dense": f"decoder.{ours}.{i}.dense",
                         f"{layer}.{official}.output.LayerNorm": f"decoder.{ours}.{i}.norm"}
        prefixes |= {f"{layer}.intermediate.dense": f"decoder.ffn.{i}.intermediate",
                     f"{layer}.output.dense": f"decoder.ffn.{i}.dense", f"{layer}.output.LayerNorm": f"decoder.ffn.{i}.norm"}
    mapped = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in prefixes:
            mapped[f"{prefixes[prefix]}.{leaf}"] = value
        elif ".pooler." not in key:
            raise Blocked(f"official parameter {key} has no counterpart in ours")
    order = [0, 2, 1]  # official classes (text, visual, audio) -> ours (text, audio, vision)
    for leaf in ("weight", "bias"):
        mapped[f"discriminator.3.{leaf}"] = mapped[f"discriminator.3.{leaf}"][order]
    return mapped


def fixed_batch(path: Path, n: int, seed: int) -> dict:
    """``n`` full-length samples (60 real steps in every modality), saved for the child; our batch of the same."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {"text": torch.randn(n, STEPS, 300, generator=generator),
               "audio": torch.randn(n, STEPS, 74, generator=generator),
               "vision": torch.randn(n, STEPS, 35, generator=generator),
               "mask": torch.ones(n, STEPS, dtype=torch.long),
               "labels": (torch.rand(n, 6, generator=generator) < 0.3).float()}
    torch.save(tensors, path)
    masks = {m: torch.ones(n, STEPS, dtype=torch.bool) for m in ("text", "audio", "vision")}
    return {"features": {m: tensors[m] for m in masks}, "masks": masks, "labels": tensors["labels"],
            "ids": [str(i) for i in range(n)]}


# --------------------------------------------------------------------------------------------- runs
def run_ours(built: Path, epochs: int, seed: int) -> dict:
    import torch

    from baselines.tailor import TAILOR
    from mmer import registry
    from mmer.engine import count_parameters, fit, make_loaders, seed_everything
    from mmer.registry import model_kwargs
    from nemu import MMERDataset

    config = registry.get("TAILOR").config("paper")
    datasets = {split: MMERDataset(built, split) for split in ("train", "valid")}
    train = datasets["train"]
    seed_everything(seed)
    model = TAILOR(train.modality_dims, len(train.label_names), **model_kwargs(config))
    loaders = make_loaders(datasets, config["batch_size"], seed)
    timed = TimedLoader(loaders["train"])
    result = fit(model, timed, loaders["valid"], epochs=epochs, lr=config["lr"], clip=config["clip"], device="cpu",
                 seed=seed, progress=False, threshold=config["threshold"], label_names=train.label_names)
    return {"parameters": count_parameters(model), "threads": torch.get_num_threads(), "epochs": timed.epochs,
            "losses": [record["train_loss"] for record in result.history], "config": config,
            "modalities": list(train.modality_dims)}


def our_loss_with_official_weights(state_path: Path, batch: dict) -> float:
    import torch

    from baselines.tailor import TAILOR
    from mmer import registry
    from mmer.registry import model_kwargs

    config = registry.get("TAILOR").config("paper")
    model = TAILOR({"text": 300, "audio": 74, "vision": 35}, 6, **model_kwargs(config))
    state = official_to_ours(torch.load(state_path, weights_only=True),
                             {"text": config["primary_layers"], "audio": config["layers"], "vision": config["layers"]},
                             config["cross_layers"], config["decoder_layers"])
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        return float(model.loss(model(batch), batch))


def run_official(root: Path, pt: Path, work: Path, epochs: int, seed: int, threads: int | None,
                 timeout: float | None) -> dict:
    config = {"root": str(root), "pt": str(pt), "out": str(work / "official-out"), "args": OFFICIAL_ARGS,
              "epochs": epochs, "seed": seed, "threads": threads, "state": str(work / "official-state.pt"),
              "batch": str(work / "fixed-batch.pt")}
    return run_driver(root, _OFFICIAL_DRIVER, config, threads, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_tailor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64,
                        help="training samples in the synthetic .pt (64 = one optimizer step of batch 64 for each)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs timed for each implementation")
    parser.add_argument("--eval-samples", type=int, default=64, help="samples in the synthetic valid and test splits")
    parser.add_argument("--loss-samples", type=int, default=8, help="full-length samples of the loss-check batch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official-git", type=Path, default=None,
                        help="git directory (a clone or bare repository) of kniter1/TAILOR; required unless "
                             "--skip-official")
    parser.add_argument("--official-timeout", type=float, default=None, help="seconds before the official half "
                        "is reported as blocked (default: none)")
    parser.add_argument("--skip-official", action="store_true", help="time ours only")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.samples < 64 or args.eval_samples < 8:
        parser.error("--samples must be at least 64 (the official loader drops incomplete batches of 64) and "
                     "--eval-samples at least 8")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.official_git is None and not args.skip_official:
        parser.error("--official-git PATH is required (a clone of github.com/kniter1/TAILOR), or --skip-official")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tbench-", dir=args.workdir))
    report: dict = {"samples": args.samples, "epochs": args.epochs, "cpu_count": os.cpu_count()}
    try:
        pt, built = synthetic_mosei(work, args.samples, args.eval_samples, args.seed)
        batch = fixed_batch(work / "fixed-batch.pt", args.loss_samples, args.seed)

        print(f"[ours] training {args.epochs} epoch(s) x {args.samples} samples (load avg {load()}) ...", flush=True)
        ours = run_ours(built, args.epochs, args.seed)
        cfg = ours.pop("config")
        ours.update(measured(ours["epochs"]))
        n, wall, per_s, per_cpu_s = ours["samples"], ours["wall"], ours["samples_per_s"], ours["samples_per_cpu_s"]
        report["ours"] = ours
        ours_line = (f"ours     TAILOR (baselines.tailor, profile 'paper': d={cfg['d']} batch {cfg['batch_size']} "
                     f"lr {cfg['lr']:g}; {ours['parameters']:,} parameters): {n} training samples in {wall:.1f} s -> "
                     f"{per_s:.3f} samples/s ({per_cpu_s:.3f} samples/CPU-s), torch threads {ours['threads']}")
        print(ours_line, flush=True)

        official_line, ratio_line, loss_line = "official skipped (--skip-official)", None, None
        if not args.skip_official:
            try:
                root, commit = extract_official(args.official_git, work / "official")
                print_patches("kniter1/TAILOR", commit, [], RUNTIME_PATCHES)
                print(f"[official] training {args.epochs} epoch(s) x {args.samples} samples with train.sh's "
                      f"arguments: {' '.join(OFFICIAL_ARGS)} (load avg {load()}) ...", flush=True)
                official = run_official(root, pt, work, args.epochs, args.seed, args.threads, args.official_timeout)
                official.update(measured(official["epochs"]), commit=commit)
                n_o, wall_o = official["samples"], official["wall"]
                per_s_o, per_cpu_s_o = official["samples_per_s"], official["samples_per_cpu_s"]
                report["official"] = official
                official_line = (f"official TAILOR (kniter1/TAILOR@{commit}, train.sh; {official['parameters']:,} "
                                 f"parameters): {n_o} training samples in {wall_o:.1f} s -> {per_s_o:.3f} samples/s "
                                 f"({per_cpu_s_o:.3f} samples/CPU-s), torch threads {official['threads']}, "
                                 f"peak RSS {official['peak_rss_mb'] / 1024:.1f} GiB")
                report["ratio_wall"], report["ratio_cpu"] = per_s / per_s_o, per_cpu_s / per_cpu_s_o
                ratio_line = (f"ratio ours/official: {report['ratio_wall']:.1f}x samples/s "
                              f"({report['ratio_cpu']:.1f}x samples/CPU-s), same run, same .pt, same samples")
                ours_loss = our_loss_with_official_weights(work / "official-state.pt", batch)
                report["fixed_batch_loss"] = {"official": official["fixed_batch_loss"], "ours": ours_loss}
                loss_line = (f"loss on one batch of {args.loss_samples} full-length samples, official initial "
                             f"weights, eval mode: official {official['fixed_batch_loss']:.6f}, ours {ours_loss:.6f} "
                             f"(|diff| {abs(official['fixed_batch_loss'] - ours_loss):.2e})")
            except Blocked as exc:
                report["official_blocked"] = str(exc)
                official_line = f"official TAILOR: BLOCKED: {exc}"
        print()
        for line in (ours_line, official_line, ratio_line, loss_line):
            if line:
                print(line)
        print(f"(this machine: {os.cpu_count()} CPUs; load average at the end {load()}; timing excludes "
              "validation; ours reads only real steps, the official code all 60 padded steps)")
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
