"""The benchmark's store, workers and training under faults (issue 24): each test names the fault it survives."""

from __future__ import annotations

import http.server
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from baselines import run_all
from baselines.results import RESULTS_FILE, OutLock, ResultsStore, StoreError
from mmer.engine import TrainingDiverged, fit
from mmer.metrics import NonFiniteResult, binarize
from nemu import atomic, ray_engine
from pipelines import benchmark

REPO = Path(__file__).resolve().parents[1]
GRID = ["--models", "BR", "--folds", "2", "--seeds", "0", "--no-table3", "--no-progress"]


def _copy_dataset(built, to: Path) -> Path:
    """A plain copy of the session's tiny build (links followed), safe to damage."""
    base, _, _ = built
    shutil.copytree(base / "out", to, symlinks=False, ignore=shutil.ignore_patterns(".cache"))
    return to


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    return errors[0]


# -- item 1: an --out that cannot be a folder (main: a FileExistsError / NotADirectoryError traceback) --------------

@pytest.mark.parametrize("under", [False, True])
def test_out_naming_a_file_or_a_path_under_one_is_a_one_line_error(built, tmp_path, capsys, under):
    base, _, _ = built
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    out = blocker / "sub" if under else blocker
    err = _one_line_error(capsys, benchmark.main(["--data", f"nemu={base / 'out'}", "--out", str(out), *GRID]))
    assert str(blocker) in err and "file" in err
    assert blocker.read_text() == "not a folder\n"


# -- item 2: results read as bytes (main: UnicodeDecodeError naming no file; invalid lines skipped silently) ---------

def test_torn_last_line_inside_a_multibyte_character_is_ignored_with_a_notice(tmp_path, capsys):
    store = ResultsStore(tmp_path, "quick")
    store.add({"key": "k1", "metrics": {"micro_f1": 0.5}, "note": "中文"})
    with store.path.open("ab") as handle:  # a kill in the middle of "情" (3 bytes in UTF-8)
        handle.write(json.dumps({"key": "k2", "note": "情"}, ensure_ascii=False).encode("utf-8")[:-4])
    assert [r["key"] for r in store.records()] == ["k1"]
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(store.path) in err and "torn" in err
    store.add({"key": "k3", "metrics": {"micro_f1": 0.25}})  # the next append replaces the torn tail
    assert [r["key"] for r in store.records()] == ["k1", "k3"]
    assert all(json.loads(line) for line in store.path.read_bytes().decode("utf-8").splitlines())


@pytest.mark.parametrize("bad", [b"\xff\xfe not text\n", b'{"key": "half"\n', b"[1, 2]\n", b'{"x": NaN}\n'])
def test_an_invalid_line_that_is_not_the_torn_last_one_is_an_error_naming_file_and_line(tmp_path, bad):
    store = ResultsStore(tmp_path, "quick")
    store.add({"key": "k1"})
    with store.path.open("ab") as handle:
        handle.write(bad)
    store.add({"key": "k3"})
    with pytest.raises(StoreError, match=rf"{store.path}: line 2 "):
        store.records()


# -- item 3: one run per --out (main: two runs compute and store every cell twice) ----------------------------------

def test_a_second_run_on_the_same_out_exits_at_once_naming_the_holder(built, tmp_path, capsys):
    base, _, _ = built
    out = tmp_path / "results"
    out.mkdir()
    # another process holding OUT/.lock as run_all does (flock, its pid in the file); plain Python, so it starts fast
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"handle = open({str(out / '.lock')!r}, 'a+')\n"
                               "fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                               "handle.write(f'pid {os.getpid()} on here: run_all'); handle.flush()\n"
                               "print('held', flush=True)\ntime.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _one_line_error(capsys, benchmark.main(["--data", f"nemu={base / 'out'}", "--out", str(out),
                                                      *GRID]))
        assert f"pid {holder.pid}" in err and str(out) in err
        assert not (out / RESULTS_FILE).exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder's lock is released by the OS
        holder.wait()
    with OutLock(out):
        pass


# -- item 4: unique temporary names (main: one fixed name per process, so a second writer renames it away) ---------

def test_two_writers_of_one_file_never_rename_each_others_temporary_away(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    real_replace = os.replace
    calls = []

    def replace(src, dst):  # a second writer of the same file finishes while the first is between write and rename
        calls.append(src)
        if len(calls) == 1:
            atomic.atomic_write_bytes(target, b"second")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic.atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first" and len(set(calls)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary left behind


# -- item 5: a dead worker costs only its own cell (main: every pending cell of the pool fails) ----------------------

def test_a_killed_worker_fails_only_its_own_cell_after_a_retry_alone(built, tmp_path, monkeypatch):
    """The kill comes from the worker's test hook (baselines.cells.cell_test_hook); with only that hook added to
    main, this fails there because the bystander cell is recorded as failed too (BrokenProcessPool)."""
    base, _, _ = built
    data = base / "out"
    cells = run_all.grid({"nemu": data}, ["BR"], [0, 1], [0], table3=False)
    doomed = cells[0].key  # its worker SIGKILLs itself every time; the others share the pool with it
    monkeypatch.setenv("NEMU_TEST_KILL_CELL", doomed)
    summary = run_all.run({"nemu": data}, ["BR"], [0, 1], [0], "quick", tmp_path / "out", table3=False,
                          progress=False, jobs=2)
    stored = [json.loads(line)["key"] for line in (tmp_path / "out" / RESULTS_FILE).read_text().splitlines()]
    failed = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert summary["failed"] == 1 and [f["key"] for f in failed] == [doomed]
    assert "died" in failed[0]["error"] and sorted(stored) == sorted(c.key for c in cells[1:])


# -- item 6: an unloadable dataset is refused once, up front (main: every cell fails, empty tables are written) ------

@pytest.mark.parametrize("damage", ["shard", "manifest"])
def test_a_dataset_that_cannot_be_loaded_is_refused_once_before_the_grid(built, tmp_path, capsys, damage):
    data = _copy_dataset(built, tmp_path / "data")
    if damage == "shard":
        manifest = json.loads((data / "manifest.json").read_text())
        (data / manifest["shards"]["valid"][0]["path"]).unlink()
    else:
        (data / "manifest.json").write_text('{"format_version": 1, "shards": ')
    out = tmp_path / "results"
    err = _one_line_error(capsys, benchmark.main(["--data", f"mine={data}", "--out", str(out), *GRID]))
    assert "dataset mine" in err
    assert not (out / RESULTS_FILE).exists() and not (out / "failures.jsonl").exists()
    assert not list(out.glob("table*"))


# -- item 7: no non-finite number written; divergence named (main: NaN stored, NaN weights trained with exit 0) -----

def test_a_record_with_a_non_finite_metric_is_refused_naming_it(tmp_path):
    store = ResultsStore(tmp_path, "quick")
    with pytest.raises(NonFiniteResult, match="metrics.micro_f1"):
        store.add({"key": "k", "metrics": {"accuracy": 0.5, "micro_f1": math.nan}})
    assert not store.path.exists() or store.path.read_bytes() == b""
    with pytest.raises(NonFiniteResult, match="not finite"):
        binarize([[0.2, math.nan]])  # NaN would silently read as "no label"


class _Diverging(nn.Module):
    """A model whose loss is NaN: training must stop at epoch 1, naming the loss (not train on to NaN weights)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, batch):
        return {"logits": self.w.expand(len(batch["labels"]), 2)}

    def loss(self, outputs, batch):
        return outputs["logits"].pow(2).mean() * math.nan


def test_a_diverging_training_stops_naming_the_epoch_and_the_quantity():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loader = [{"ids": ["a", "b"], "labels": labels}]
    with pytest.raises(TrainingDiverged, match=r"^epoch 1: training loss is nan"):
        fit(_Diverging(), loader, loader, epochs=3, lr=0.1, progress=False)
    assert issubclass(TrainingDiverged, ValueError)  # hhmpn-train prints it as its one-line error, exit 2


def test_hhmpn_train_with_a_non_finite_learning_rate_exits_non_zero_with_one_line(built, tmp_path, capsys):
    from pipelines import train

    base, _, _ = built
    try:  # refused by argparse (pipelines.cli.number: SystemExit 2) before any training
        code = train.main(["--data", str(base / "out"), "--out", str(tmp_path / "run"), "--epochs", "1",
                           "--lr", "inf", "--no-progress"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # argparse's usage lines, then the one error line
    assert code == 2 and "Traceback" not in err and last.startswith("hhmpn-train: error: argument --lr") and "inf" in last
    assert not (tmp_path / "run" / "model.pt").exists()


# -- item 8 (issue item 7): a Ray address is checked for Ray in seconds (main: only "something listens") -------------

def test_an_address_where_an_http_server_answers_is_refused_as_not_ray():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(ray_engine.RayUnavailable, match="is not a Ray cluster"):
            ray_engine.RaySession(f"127.0.0.1:{server.server_port}", 1).__enter__()
        assert time.monotonic() - started < 30  # seconds, not Ray's minutes-long reconnect loop
    finally:
        server.shutdown()
        server.server_close()


def test_an_address_that_accepts_but_never_answers_is_refused_after_the_handshake_timeout(monkeypatch):
    monkeypatch.setattr(ray_engine, "HANDSHAKE_SECONDS", 0.5, raising=False)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(ray_engine.RayUnavailable, match="does not answer as Ray"):
            ray_engine.RaySession(f"127.0.0.1:{silent.getsockname()[1]}", 1).__enter__()
