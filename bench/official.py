"""What the benches that time an official implementation beside ours share (bench_hhmpn, bench_tailor, bench_carat).

- :func:`write_pt` / :func:`synthetic_mosei`: the seeded synthetic aligned CMU-MOSEI ``train_valid_test.pt`` that
  all three official codes load (60 aligned steps of text 300 / visual 35 / audio 74, left-padded, each sample
  10-60 real steps; label-id lists ``[BOS, ids..., EOS]``), and its build with our ``pipelines.build_mosei``;
- :class:`TimedLoader`: times each full pass of our training loop (batches fetched + the work between them);
- :func:`extract_official`, :func:`apply_patches`, :func:`run_driver`: the official code of a git directory's
  HEAD in a temporary folder, patched there only (each patch's old string must occur once, else
  :class:`Blocked`), and run in a child process of this virtualenv's python that prints one ``RESULT {json}``;
- :func:`measured`, :func:`load`: samples/s and samples per CPU-second of the timed passes; the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS = 60
DIMS = {"src-text": 300, "src-visual": 35, "src-audio": 74}
LABELS = ("happy", "sad", "anger", "surprise", "disgust", "fear")


class Blocked(Exception):
    """The official half cannot run (no git directory, a patch that no longer applies, a crash, a timeout)."""


# --------------------------------------------------------------------------------------------- data
def write_pt(path: Path, sizes: dict[str, int], seed: int) -> None:
    """A synthetic aligned MOSEI .pt: N x 60 x dim float32 arrays, left-padded; every label occurs in train."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    vocab = {"<blank>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{name: 4 + i for i, name in enumerate(LABELS)}}
    data = {"settings": argparse.Namespace(max_text_seq_len=STEPS, max_visual_seq_len=STEPS,
                                           max_audio_seq_len=STEPS),
            "dict": {"src": None, "tgt": vocab}}
    for split, n in sizes.items():
        lengths = rng.integers(10, STEPS + 1, size=n)
        arrays = {}
        for key, dim in DIMS.items():
            array = np.zeros((n, STEPS, dim), np.float32)
            for i, length in enumerate(lengths):
                array[i, STEPS - length:] = rng.normal(size=(length, dim))
            arrays[key] = array
        tgt = []
        for i in range(n):
            k = int(rng.choice([0, 1, 1, 1, 2, 2, 3]))  # some samples without any emotion, as in MOSEI
            ids = set(int(x) for x in rng.choice(len(LABELS), size=k, replace=False))
            if split == "train" and i < len(LABELS):
                ids.add(i)  # the official prior label mask divides by every label's train count
            tgt.append([2, *sorted(4 + x for x in ids), 3])
        data[split] = {**arrays, "tgt": tgt}
    torch.save(data, path)


def synthetic_mosei(work: Path, samples: int, eval_samples: int, seed: int) -> tuple[Path, Path]:
    """:func:`write_pt` into ``work/mosei/`` and its build into ``work/built``: ``(the .pt, the built folder)``."""
    from pipelines import build_mosei

    pt = work / "mosei" / "train_valid_test.pt"
    pt.parent.mkdir(parents=True)
    write_pt(pt, {"train": samples, "valid": eval_samples, "test": eval_samples}, seed)
    built = work / "built"
    if build_mosei.main([str(pt), "--out", str(built), "--no-progress"]) != 0:
        raise SystemExit("build_mosei failed")
    return pt, built


# --------------------------------------------------------------------------------------------- ours
class TimedLoader:
    """Wraps the train loader: times each full pass (batches fetched + the training work between them)."""

    def __init__(self, loader):
        self.loader = loader
        self.epochs: list[dict] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        n = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in self.loader:
            n += len(batch["labels"])
            yield batch  # fit's forward/backward/clip/step for this batch run before the next fetch
        self.epochs.append({"samples": n, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})


# --------------------------------------------------------------------------------------------- official
def extract_official(git_dir: Path | None, dest: Path, subpath: str | None = None,
                     clone_url: str | None = None) -> tuple[Path, str]:
    """``subpath`` (default: everything) of ``git_dir``'s HEAD into ``dest``: ``(its folder there, short commit)``.

    ``git_dir`` is a clone (its ``.git`` is used) or a bare repository; None clones ``clone_url`` into ``dest``
    first (needs the network), or is :class:`Blocked` without one."""
    dest.mkdir(parents=True)
    if git_dir is not None and not git_dir.exists():
        raise Blocked(f"--official-git {git_dir} does not exist")
    if git_dir is not None and (git_dir / ".git").exists():
        git_dir = git_dir / ".git"  # a clone's work tree
    if git_dir is None:
        if clone_url is None:
            raise Blocked("no --official-git given")
        clone = dest / "clone.git"
        proc = subprocess.run(["git", "clone", "--bare", "--quiet", clone_url, str(clone)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
            raise Blocked(f"no --official-git given and `git clone {clone_url}` failed: {reason}")
        git_dir = clone
    commit = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "HEAD", *([subpath] if subpath else [])],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "x", "-C", str(dest)], input=archive, check=True)
    return (dest / subpath if subpath else dest), commit


def apply_patches(root: Path, patches: list[tuple[str, str, str, str]]) -> None:
    """Each ``(file, old, new, why)`` of ``patches`` in the temporary copy; ``old`` must occur exactly once."""
    for relative, old, new, _ in patches:
        path = root / relative
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise Blocked(f"cannot patch {relative}: expected {old!r} once, found it {text.count(old)} times "
                          "(the official code changed)")
        path.write_text(text.replace(old, new), encoding="utf-8")


def print_patches(name: str, commit: str, patches: list[tuple[str, str, str, str]], runtime: list[str]) -> None:
    print(f"[official] {name}@{commit}; patches (temporary copy only):")
    for relative, old, new, why in patches:
        print(f"  - {relative}: {old!r} -> {new!r} ({why})")
    for text in runtime:
        print(f"  - run time: {text}")


def run_driver(root: Path, driver: str, config: dict, threads: int | None, timeout: float | None,
               extra_env: dict[str, str] | None = None) -> dict:
    """``python -c driver json(config)`` in ``root`` with this virtualenv's python and no PYTHONPATH (the official
    code's own top-level modules only): the dict of its last ``RESULT {json}`` line."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **(extra_env or {}))
    env.pop("PYTHONPATH", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        proc = subprocess.run([sys.executable, "-c", driver, json.dumps(config)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Blocked(f"the official training did not finish within --official-timeout {timeout:.0f} s") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise Blocked(f"the official training exited with code {proc.returncode}:\n{tail}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------------------------- report
def measured(epochs: list[dict]) -> dict:
    """Over timed passes: samples, wall and CPU seconds, samples/s and samples per CPU-second (the report's keys)."""
    samples = sum(e["samples"] for e in epochs)
    wall = sum(e["wall"] for e in epochs)
    cpu = sum(e["cpu"] for e in epochs)
    return {"samples": samples, "wall": wall, "cpu": cpu, "samples_per_s": samples / wall,
            "samples_per_cpu_s": samples / cpu}


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())
