"""The output folder is always one whole dataset, dead workers never hang the build, and faults of the
environment end with one line and exit code 2 (issue 14). Faults are injected for real where the machine
allows it: SIGKILL of a build process at chosen points (NEMU_TEST_KILL_AT), SIGKILL of an extraction worker
(NEMU_TEST_KILL_WORKER), a full and a read-only tmpfs; a writer error where it does not."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import nemu
import nemu.atomic
import nemu.shards
from nemu.build import BuildError, build
from nemu.publish import BUILDS_DIR, DatasetPublisher
from nemu.shards import DatasetMismatch
from pipelines import build_nemu
from tests.conftest import options
from tests.rawkit import song, tiny_raw, write_records

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def raw_and_cache(tmp_path_factory):
    """12 tiny songs and a feature cache holding all of them, so each build here only assembles shards."""
    base = tmp_path_factory.mktemp("integrity")
    records = tiny_raw(base / "raw", 12)
    build(options(base / "raw", base / "warm", cache_dir=base / "cache"))
    return base / "raw", base / "cache", records


def _options(raw_and_cache, out: Path, **kw):
    raw, cache, _ = raw_and_cache
    kw.setdefault("rows_per_shard", 4)
    kw.setdefault("row_group_rows", 2)
    return options(raw, out, cache_dir=cache, **kw)


def _command(raw: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.build_nemu", "--raw", str(raw), "--out", str(out), "--workers", "1",
            "--image-encoder", "efficientnet-lite0", "--no-progress", "--cache-dir", str(cache),
            "--shard-rows", "4", "--row-group-rows", "2", *extra]


def _run(command: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=os.environ | (env or {}))


def _snapshot(out: Path) -> dict[str, bytes | str]:
    """Everything a reader of OUT sees (links followed), the build's bookkeeping and the cache left out."""
    seen = {}
    for folder, dirs, files in os.walk(out, followlinks=True):
        rel = Path(folder).relative_to(out)
        if rel.parts and rel.parts[0] in (BUILDS_DIR, ".cache"):
            dirs.clear()
            continue
        for name in files:
            seen[(rel / name).as_posix()] = (Path(folder) / name).read_bytes()
    return seen


def _assert_whole(out: Path, seed: int | None = None, killed: bool = False) -> dict:
    """OUT shows one complete build: every reader agrees with its manifest; no temporary or staged files
    (after a kill, only hidden ones under .builds/, which the next build removes)."""
    manifest = nemu.read_manifest(out)
    nemu.verify(out)
    for split in SPLITS:
        listed = manifest["shards"][split]
        assert sorted(p.name for p in (out / split).glob("*.parquet")) == sorted(Path(e["path"]).name for e in listed)
        assert ds.dataset(out / split, format="parquet").count_rows() == sum(e["rows"] for e in listed)
        assert len(nemu.load(out, split)) == sum(e["rows"] for e in listed)
    if seed is not None:
        assert manifest["settings"]["seed"] == seed
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name or ".link-" in p.name]
    assert not [p for p in leftovers if BUILDS_DIR not in p.relative_to(out).parts] if killed else not leftovers
    if killed:
        return manifest
    staged = [p.name for p in (out / BUILDS_DIR).iterdir() if p.name.startswith(("staging-", "adopting-"))]
    assert not staged
    return manifest


# ---------------------------------------------------------------------------------------------------------
# A kill at any moment leaves the old dataset or the new one


@pytest.mark.parametrize("point, survivor", [
    ("shard-written:1", "old"),  # during shard writing
    ("shard-written:3", "old"),
    ("staged", "old"),  # everything staged, nothing published
    ("before-swap", "old"),  # links ready, .builds/current not yet replaced
    ("swapped", "new"),  # published, the old generation not yet retired
])
def test_sigkill_at_any_point_leaves_the_old_or_the_new_dataset(tmp_path, raw_and_cache, point, survivor):
    raw, cache, _ = raw_and_cache
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0))
    before = _snapshot(out)
    killed = _run(_command(raw, out, cache, "--seed", "1"), env={nemu.shards.KILL_AT_ENV: point})
    assert killed.returncode == -9, killed.stderr[-2000:]
    manifest = _assert_whole(out, seed=0 if survivor == "old" else 1, killed=True)
    if survivor == "old":
        assert _snapshot(out) == before
    # the next build finishes what the killed one left and leaves one generation behind
    build(_options(raw_and_cache, out, seed=1))
    _assert_whole(out, seed=1)
    generations = [p.name for p in (out / BUILDS_DIR).iterdir() if p.name.startswith("gen-")]
    assert len(generations) == 1 and os.readlink(out / BUILDS_DIR / "current") == generations[0]
    assert manifest["shards"]["train"]


def test_sigkill_as_soon_as_a_new_shard_appears_leaves_a_whole_dataset(tmp_path, raw_and_cache):
    """No hook: the build process is killed the moment any new Parquet file shows up anywhere under OUT."""
    raw, cache, _ = raw_and_cache
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0))
    before = _snapshot(out)
    old_files = {p.stat().st_ino for p in out.rglob("*.parquet")}
    process = subprocess.Popen(_command(raw, out, cache, "--seed", "1"), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        try:
            if any(p.stat().st_ino not in old_files for p in out.rglob("*.parquet")):
                process.kill()
                break
        except FileNotFoundError:  # a file renamed while listed
            pass
    process.wait()
    manifest = _assert_whole(out, killed=True)
    if manifest["settings"]["seed"] == 0:
        assert _snapshot(out) == before
    build(_options(raw_and_cache, out, seed=1))
    _assert_whole(out, seed=1)


def test_readers_during_rebuilds_always_see_one_build(tmp_path, raw_and_cache):
    """nemu.load while another process rebuilds OUT again and again (seeds 1 then 0: other folds, other shard
    counts) always returns exactly one build's rows: the fold of every id is that of seed 0 or that of seed 1."""
    raw, cache, _ = raw_and_cache
    folds = {}
    for seed in (0, 1):
        build(_options(raw_and_cache, tmp_path / f"seed{seed}", seed=seed))
        frame = nemu.load(tmp_path / f"seed{seed}", None)
        folds[seed] = dict(zip(frame["id"], frame["fold"]))
    assert folds[0] != folds[1]
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0))
    rebuilds = ";".join(" ".join(_command(raw, out, cache, "--seed", str(i % 2), "--shard-rows", str(3 + i % 3)))
                        for i in range(1, 3))
    process = subprocess.Popen(["bash", "-c", rebuilds.replace(";", " && ")], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reads = 0
    while process.poll() is None:
        frame = nemu.load(out, None)
        assert dict(zip(frame["id"], frame["fold"])) in (folds[0], folds[1])
        reads += 1
    assert process.returncode == 0, process.stderr.read()[-2000:]
    assert reads > 10
    _assert_whole(out, seed=0)


def test_a_real_folder_from_an_older_build_is_taken_over_without_a_gap(tmp_path, raw_and_cache):
    """Real split folders and manifest (an older version's build, or a copy with links followed) become links;
    killed half-way through, the folder still shows the old dataset, and nothing the build did not write is lost."""
    raw, cache, _ = raw_and_cache
    built = tmp_path / "built"
    build(_options(raw_and_cache, built, seed=0))
    out = tmp_path / "out"
    shutil.copytree(built, out, ignore=shutil.ignore_patterns(BUILDS_DIR))  # links followed: real entries
    assert not (out / "train").is_symlink()
    (out / "train" / "_mine.txt").write_text("a user's file")
    before = _snapshot(out)
    killed = _run(_command(raw, out, cache, "--seed", "1"), env={nemu.shards.KILL_AT_ENV: "adopting:5"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _snapshot(out) == before
    nemu.verify(out)
    build(_options(raw_and_cache, out, seed=1))
    _assert_whole(out, seed=1)
    assert all((out / s).is_symlink() for s in SPLITS)
    assert (out / "train" / "_mine.txt").read_text() == "a user's file"


def test_sigterm_unwinds_the_build_leaving_the_old_dataset_and_nothing_staged(tmp_path, raw_and_cache):
    raw, _, _ = raw_and_cache
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0))
    before = _snapshot(out)
    command = _command(raw, out, tmp_path / "fresh-cache", "--seed", "1")  # extraction takes a while
    command[command.index("--workers") + 1] = "2"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / BUILDS_DIR).glob("staging-*")):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    process.terminate()
    process.communicate(timeout=120)
    assert process.returncode == 128 + 15
    assert _snapshot(out) == before
    assert not list((out / BUILDS_DIR).glob("staging-*"))
    _assert_whole(out, seed=0)


# ---------------------------------------------------------------------------------------------------------
# One build at a time


def test_a_second_build_fails_at_once_naming_the_first(tmp_path, raw_and_cache, capsys):
    raw, _, _ = raw_and_cache
    out = tmp_path / "out"
    first = subprocess.Popen(_command(raw, out, tmp_path / "fresh-cache", "--seed", "1"), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / BUILDS_DIR / "lock"
    deadline = time.time() + 300
    while time.time() < deadline and not (lock.is_file() and f'"pid": {first.pid}' in lock.read_text()):
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    started = time.time()
    code = build_nemu.main(_command(raw, out, tmp_path / "fresh-cache")[3:])
    waited = time.time() - started
    error = capsys.readouterr().err.strip()
    assert code == 2 and waited < 10
    assert len(error.splitlines()) == 1 and f"pid {first.pid} on host" in error and "started 20" in error
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    _assert_whole(out, seed=1)


def test_the_lock_names_its_holder_and_is_released(tmp_path, raw_and_cache):
    out = tmp_path / "out"
    with DatasetPublisher(out):
        with pytest.raises(BuildError, match=rf"pid {os.getpid()} on host .*, started \d{{4}}-"):
            build(_options(raw_and_cache, out))
    build(_options(raw_and_cache, out))  # released when the holder leaves
    _assert_whole(out)


# ---------------------------------------------------------------------------------------------------------
# Workers that die


def test_a_killed_worker_is_retried_once_then_its_record_quarantined(tmp_path, raw_and_cache):
    raw, _, _ = raw_and_cache
    out, flag = tmp_path / "out", tmp_path / "killed-once"
    # s003's worker is killed every time it gets s003; s005's only the first time
    env = {"NEMU_TEST_KILL_WORKER": f"s003,s005@{flag}"}
    command = _command(raw, out, tmp_path / "cache")  # an empty cache: the build, not a worker, answers hits
    command[command.index("--workers") + 1] = "2"
    started = time.time()
    done = _run(command, env=env, timeout=600)  # on a build that waits for dead workers this times out
    assert done.returncode == 0, done.stderr[-2000:]
    assert flag.exists() and time.time() - started < 600
    report = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert report == [{"id": "s003", "line": 4, "field": "record", "reason": "worker died: signal 9 (SIGKILL)"}]
    kept = set(nemu.load(out, None)["id"])
    assert "s005" in kept and "s003" not in kept and len(kept) == 11
    assert "input 12 = kept 11 + quarantined 1" in done.stdout


def test_workers_see_the_environment_of_when_they_start_not_of_when_the_template_started(tmp_path, raw_and_cache,
                                                                                       monkeypatch):
    """Workers are forks of a long-lived template; like spawned ones, they get the build's environment of now."""
    raw, _, _ = raw_and_cache
    build(options(raw, tmp_path / "before", workers=2, cache_dir=tmp_path / "cache-before"))  # template up
    monkeypatch.setenv("NEMU_TEST_KILL_WORKER", "s004")  # set after the template started
    summary = build(options(raw, tmp_path / "out", workers=2, cache_dir=tmp_path / "cache"))
    report = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["id"], q["reason"]) for q in report] == [("s004", "worker died: signal 9 (SIGKILL)")]
    assert summary.kept == 11


# ---------------------------------------------------------------------------------------------------------
# Environment faults: one line, exit code 2, the previous dataset intact, no temporary file


def _no_temporary_files(out: Path) -> None:
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".link-" in p.name]
    assert not [p for p in (out / BUILDS_DIR).iterdir() if p.name.startswith(("staging-", "gen-"))
                and p.name != os.readlink(out / BUILDS_DIR / "current")]


def test_full_disk_while_writing_a_shard_keeps_the_old_dataset(tmp_path, raw_and_cache, monkeypatch, capsys):
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0))
    before = _snapshot(out)
    real_write = nemu.atomic._write_all

    def disk_full(handle, data):
        if "train-" in Path(handle.name).name:
            real_write(handle, data[: len(data) // 2])  # part of it reached the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(handle, data)

    monkeypatch.setattr(nemu.atomic, "_write_all", disk_full)
    with pytest.raises(BuildError) as error:
        build(_options(raw_and_cache, out, seed=1))
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "No space left on device" in message and "train-00000" in message
    assert _snapshot(out) == before
    _no_temporary_files(out)
    _assert_whole(out, seed=0)
    raw, cache, _ = raw_and_cache
    code = build_nemu.main(_command(raw, out, cache, "--seed", "1")[3:])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0] and "train-00000" in lines[0]
    assert _snapshot(out) == before


def _mount_tmpfs(folder: Path, size: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs of a given size (skip where this machine may not mount one); unmounted afterwards."""
    mounted = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        if not _mount_tmpfs(folder, size):
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the injected writer error "
                        "test covers the same path")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def test_a_really_full_disk_ends_with_one_line_and_exit_code_2(tmp_path, raw_and_cache, small_filesystem):
    raw, cache, _ = raw_and_cache
    probe = tmp_path / "probe"
    build(_options(raw_and_cache, probe, seed=0))
    size = _size_of(probe / BUILDS_DIR)
    out = small_filesystem(size + size // 2 + 64 * 1024) / "out"  # room for one dataset, not for two
    build(_options(raw_and_cache, out, seed=0))
    before = _snapshot(out)
    done = _run(_command(raw, out, cache, "--seed", "1"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "No space left on device" in lines[0] and str(out) in lines[0]
    assert _snapshot(out) == before
    _no_temporary_files(out)
    _assert_whole(out, seed=0)


def test_a_read_only_output_folder_ends_with_one_line_and_exit_code_2(tmp_path, raw_and_cache, small_filesystem):
    raw, cache, _ = raw_and_cache
    folder = small_filesystem(64 * 1024 * 1024)
    out = folder / "out"
    build(_options(raw_and_cache, out, seed=0))
    before = _snapshot(out)
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
    if remounted.returncode:
        pytest.skip(f"cannot remount read-only: {remounted.stderr!r}")
    for target in (out, out / "new-dataset"):  # an existing dataset, and a folder that cannot be created
        done = _run(_command(raw, target, cache, "--seed", "1"))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert "Read-only file system" in lines[0] and str(target) in lines[0]
    assert _snapshot(out) == before
    _assert_whole(out, seed=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes; the read-only tmpfs test covers it")
def test_permission_denied_ends_with_one_line_and_exit_code_2(tmp_path, raw_and_cache):
    raw, cache, _ = raw_and_cache
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0))
    before = _snapshot(out)
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o555)
    try:
        done = _run(_command(raw, out, cache, "--seed", "1"))
    finally:
        for folder in [out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink())]:
            folder.chmod(0o755)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Permission denied" in lines[0] and str(out) in lines[0]
    assert _snapshot(out) == before


# ---------------------------------------------------------------------------------------------------------
# Files the build did not write; --strict


def test_files_the_build_did_not_write_are_never_deleted(tmp_path, raw_and_cache):
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0, rows_per_shard=3))
    old_shards = {e["path"] for entries in nemu.read_manifest(out)["shards"].values() for e in entries}
    foreign = {
        "notes.txt": b"my notes",
        "train/mine.parquet": None,  # a Parquet file of the user's, in a split folder
        "train/README.txt": b"what I added",
        "analysis/figure.png": b"\x89PNG...",
    }
    table = pa.table({"x": [1, 2, 3]})
    for relative, content in foreign.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            pq.write_table(table, out / relative)
        else:
            (out / relative).write_bytes(content)
    kept = {relative: (out / relative).read_bytes() for relative in foreign}
    build(_options(raw_and_cache, out, seed=1, rows_per_shard=5))  # other shard names than before
    assert {relative: (out / relative).read_bytes() for relative in foreign} == kept
    new_shards = {e["path"] for entries in nemu.read_manifest(out)["shards"].values() for e in entries}
    assert not any((out / p).exists() for p in old_shards - new_shards)  # the build's own old shards are gone
    assert len(nemu.load(out, None)) == 12
    nemu.verify(out)


def test_a_users_file_at_a_build_output_name_is_refused_not_overwritten(tmp_path, raw_and_cache):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("# my own notes\n")
    with pytest.raises(BuildError, match=r"README.md is in the way"):
        build(_options(raw_and_cache, out))
    assert (out / "README.md").read_text() == "# my own notes\n"
    assert not (out / "manifest.json").exists() and not (out / "train").exists()
    assert sorted(p.name for p in out.iterdir()) == [BUILDS_DIR, "README.md"]
    assert sorted(p.name for p in (out / BUILDS_DIR).iterdir()) == ["lock"]


def test_a_failed_strict_build_leaves_the_previous_dataset_untouched(tmp_path, raw_and_cache):
    raw, cache, records = raw_and_cache
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0))
    before = _snapshot(out)
    assert (out / "quarantine.jsonl").read_text() == ""
    bad_raw = tmp_path / "raw"
    shutil.copytree(raw, bad_raw)
    broken = song(40, bad_raw)
    (bad_raw / broken["audio"]).unlink()
    write_records(bad_raw, [*records, broken])
    with pytest.raises(BuildError, match="--strict: 1 record") as error:
        build(options(bad_raw, out, cache_dir=cache, strict=True, rows_per_shard=4, row_group_rows=2))
    assert _snapshot(out) == before  # old manifest, old shards and the old (empty) quarantine report
    report = out / BUILDS_DIR / "rejected" / "quarantine.jsonl"
    assert str(report) in str(error.value)
    assert [json.loads(line)["id"] for line in report.read_text().splitlines()] == ["s040"]
    _assert_whole(out, seed=0)
    build(_options(raw_and_cache, out, seed=0))
    assert not report.exists()  # a later successful build clears the stale report


# ---------------------------------------------------------------------------------------------------------
# Loaders refuse a folder whose shards are not its manifest's


@pytest.fixture
def copy_of_a_build(tmp_path, raw_and_cache):
    out = tmp_path / "out"
    build(_options(raw_and_cache, out, seed=0))
    return out


def _first_shard(out: Path) -> tuple[Path, dict]:
    entry = nemu.read_manifest(out)["shards"]["train"][0]
    return out / entry["path"], entry


def test_loaders_refuse_a_shard_from_another_build(copy_of_a_build, tmp_path, raw_and_cache):
    out = copy_of_a_build
    other = tmp_path / "other"
    build(_options(raw_and_cache, other, seed=1, rows_per_shard=3))
    path, entry = _first_shard(out)
    shutil.copyfile(_first_shard(other)[0], path)  # the old manifest beside a new shard
    for load in (lambda: nemu.load(out, "train"), lambda: nemu.MMERDataset(out, "train"), lambda: nemu.verify(out)):
        with pytest.raises(DatasetMismatch, match=rf"{path.name}: .*(bytes|rows)"):
            load()
    assert len(nemu.load(out, "test")) > 0  # other splits still load


def test_loaders_refuse_a_missing_or_truncated_shard(copy_of_a_build):
    out = copy_of_a_build
    path, entry = _first_shard(out)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(DatasetMismatch, match=rf"{path.name}: {len(data) - 100} bytes, the manifest lists {len(data)}"):
        nemu.load(out, "train")
    path.unlink()
    with pytest.raises(DatasetMismatch, match=rf"{path.name}: listed in the manifest but missing"):
        nemu.load(out, None)


def test_verify_finds_a_damaged_shard_of_the_right_size_and_rows(copy_of_a_build):
    out = copy_of_a_build
    path, entry = _first_shard(out)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the column data: footer, size and rows unchanged
    path.write_bytes(bytes(data))
    assert pq.ParquetFile(path).metadata.num_rows == entry["rows"]
    with pytest.raises(DatasetMismatch, match=rf"{path.name}: sha256 differs"):
        nemu.verify(out)


def test_manifest_entries_record_bytes_and_rows(copy_of_a_build):
    for entries in nemu.read_manifest(copy_of_a_build)["shards"].values():
        for entry in entries:
            path = copy_of_a_build / entry["path"]
            assert entry["bytes"] == path.stat().st_size
            assert entry["rows"] == pq.ParquetFile(path).metadata.num_rows
