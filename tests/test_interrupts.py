"""Ctrl-C and SIGTERM during real work: a build and a benchmark, each a real process group as a terminal starts it.

Each command is interrupted once it has started work (its progress bar is on stderr, forced with NEMU_PROGRESS=1),
the signal sent to the whole process group as a terminal's Ctrl-C is (the benchmark's worker processes get it
too). The command must end with exit status 130 (SIGINT) or 143 (SIGTERM), print no traceback (its own or a
worker's), end its stderr with the one line naming the command, and leave no temporary file behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.rawkit import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
MARKER_TIMEOUT = 120  # seconds to wait for the progress bar (start-up imports torch on a loaded machine)
END_TIMEOUT = 60  # seconds the command may take to stop after the signal


class Started:
    """A command started in its own session (process group), its stderr collected by a thread."""

    def __init__(self, args: list[str], cwd: Path):
        env = dict(os.environ, PYTHONPATH=str(ROOT), NEMU_PROGRESS="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.process.stderr.read1(4096), b""):
            self.chunks.append(chunk)

    @property
    def stderr(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")

    def wait_for(self, marker: str) -> None:
        deadline = time.monotonic() + MARKER_TIMEOUT
        while marker not in self.stderr:
            if self.process.poll() is not None:
                pytest.fail(f"ended (exit {self.process.returncode}) before {marker!r}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"no {marker!r} within {MARKER_TIMEOUT} s:\n{self.stderr}")
            time.sleep(0.1)

    def interrupt(self, signum: int) -> tuple[int, str]:
        os.killpg(self.process.pid, signum)  # as the terminal does: the whole group
        try:
            code = self.process.wait(timeout=END_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"still running {END_TIMEOUT} s after {signal.Signals(signum).name}:\n{self.stderr}")
        self.reader.join(timeout=10)
        return code, self.stderr

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def last_line(stderr: str) -> str:
    """The last line a terminal shows: progress bars redraw with carriage returns."""
    return [part for part in re.split(r"[\r\n]+", stderr) if part.strip()][-1].strip()


def check_interrupted(code: int, stderr: str, signum: int, prog: str, out: Path):
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert last_line(stderr) == f"{prog}: interrupted; run the same command again to resume", stderr
    assert stderr.count(f"{prog}: interrupted") == 1, stderr
    leftovers = [p for p in out.rglob("*") if re.search(r"\.tmp\b|\.tmp-", p.name)]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("interrupt-raw")
    tiny_raw(base / "raw", 60)
    return base / "raw"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_build_interrupted_ends_with_one_line(raw, tmp_path, signum):
    out = tmp_path / "out"
    command = Started(["-m", "pipelines.build_nemu", "--raw", str(raw), "--out", str(out), "--workers", "2",
                       "--image-encoder", "efficientnet-lite0", "--shard-rows", "5"], cwd=tmp_path)
    command.wait_for("%|")  # the build's bar: records are being read and extracted
    code, stderr = command.interrupt(signum)
    check_interrupted(code, stderr, signum, "nemu-build", out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_benchmark_interrupted_ends_with_one_line(built, tmp_path, signum):
    results = tmp_path / "results"
    command = Started(["-m", "baselines.run_all", "--data", str(built[0] / "out"), "--folds", "5",
                       "--seeds", "0,1,2", "--workers", "2", "--out", str(results)], cwd=tmp_path)
    command.wait_for("benchmark grid")  # the grid's bar: the cells' workers are starting
    time.sleep(3)  # the workers inside their cells (importing torch, training)
    code, stderr = command.interrupt(signum)
    check_interrupted(code, stderr, signum, "nemu-benchmark", results)


def test_a_spawned_child_whose_parent_left_mid_hand_over_ends_quietly():
    """An interrupt in the middle of a worker's start (the parent's pipe closes before the child has read its
    process object) used to print the stock spawn_main's EOFError traceback after the command's one line; the
    entry point the commands give their spawned children (pipelines.spawn_guard) ends such a child quietly."""
    from multiprocessing import spawn

    from pipelines import cli

    def child(guarded: bool) -> subprocess.CompletedProcess:
        read, write = os.pipe()
        os.close(write)  # the parent is gone before it wrote anything
        try:
            line = spawn.get_command_line(pipe_handle=read)
            if guarded:
                line = [cli._guarded_spawn(arg) for arg in line]
            return subprocess.run(line, pass_fds=(read,), capture_output=True, timeout=60, cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
        finally:
            os.close(read)

    assert b"EOFError" in child(guarded=False).stderr  # the defect, as the stock entry point shows it
    quiet = child(guarded=True)
    assert quiet.returncode == 1 and quiet.stderr == b"", quiet.stderr
    forkserver_line = ["-c", "from multiprocessing.forkserver import main; main(1)"]
    assert [cli._guarded_spawn(arg) for arg in forkserver_line] == forkserver_line  # only spawn_main's line
