"""Local extraction workers (``--workers N``): forks of one warm template for images, one text-and-audio
process beside them, the work split between them without changing a byte, and pipes that never deadlock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nemu.build
import nemu.extraction
import nemu.workers
from nemu.audio import AudioSettings
from nemu.build import build
from nemu.images import resolve_image_settings
from nemu.records import read_records
from nemu.shards import read_manifest
from tests.conftest import options, shard_bytes
from tests.rawkit import song, tiny_raw, write_audio, write_records

REPO = Path(__file__).resolve().parents[1]


def _probe(tmp_path: Path, script: str, *args: str, env: dict | None = None, timeout: int = 600):
    """Runs ``script`` in a fresh build process (its fork server not yet started); its last line, as JSON."""
    (tmp_path / "probe.py").write_text(script, encoding="utf-8")
    done = subprocess.run([sys.executable, str(tmp_path / "probe.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=os.environ | {"PYTHONPATH": str(REPO)} | (env or {}))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


_TEMPLATE_PROBE = """
import json, multiprocessing, os, sys
from pathlib import Path
import nemu.build
import nemu.workers
from tests.conftest import options


def children(name):  # pids of this process's children whose command line contains name (Linux /proc)
    found = []
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and name in command:
            found.append(int(entry.name))
    return found


def parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


if __name__ == "__main__":
    at_read, worker_parents = [], []
    read, start = nemu.build.read_records, nemu.workers._start_worker
    nemu.build.read_records = lambda *a, **k: at_read.append(children("forkserver")) or read(*a, **k)
    nemu.workers._start_worker = lambda settings: (w := start(settings), worker_parents.append(parent_of(w.process.pid)))[0]
    summary = nemu.build.build(options(Path(sys.argv[1]), Path(sys.argv[2]), workers=2))
    print(json.dumps({"at_read": at_read, "worker_parents": worker_parents, "extracted": summary.extracted,
                      "children_after": len(multiprocessing.active_children())}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_local_workers_are_forked_from_one_warm_template_started_before_the_records_are_read(tmp_path):
    """--workers N (a fresh build process): the fork server that workers are forked from is already running
    (warming up) while the build reads and validates the records; every worker is its child, not the
    build's; the workers are gone after the build."""
    tiny_raw(tmp_path / "raw", 10)
    seen = _probe(tmp_path, _TEMPLATE_PROBE, str(tmp_path / "raw"), str(tmp_path / "out"))
    assert seen["extracted"] == 10 and seen["children_after"] == 0
    assert len(seen["at_read"]) == 1 and len(seen["at_read"][0]) == 1, seen  # one template, up before the read
    assert seen["worker_parents"] and set(seen["worker_parents"]) == set(seen["at_read"][0]), seen


def test_a_rebuild_from_the_cache_starts_no_worker(tmp_path, monkeypatch):
    """Cache hits are answered by the build process itself: a rebuild never waits for a worker's start-up,
    and starts no text-and-audio process either."""
    tiny_raw(tmp_path / "raw", 10)
    started = []
    for name in ("_start_worker", "_start_text_and_audio"):
        monkeypatch.setattr(nemu.workers, name, lambda settings, name=name, start=getattr(nemu.workers, name):
                            started.append(name) or start(settings))
    first = build(options(tmp_path / "raw", tmp_path / "first", workers=2, cache_dir=tmp_path / "cache"))
    assert first.extracted == 10 and set(started) == {"_start_worker", "_start_text_and_audio"}
    started.clear()
    again = build(options(tmp_path / "raw", tmp_path / "again", workers=2, cache_dir=tmp_path / "cache"))
    assert again.from_cache == 10 and again.extracted == 0 and not started
    assert read_manifest(tmp_path / "first")["shards"] == read_manifest(tmp_path / "again")["shards"]


def test_the_worker_template_leaves_its_forks_warm_for_images_single_threaded_and_without_librosa():
    """What each forked worker inherits from nemu.worker_template (checked in a fresh interpreter): the image
    libraries, one thread; not librosa or jieba's dictionary, which the text-and-audio process holds (the
    template's warm-up is what the first record waits for)."""
    images = ["torch", "timm", "torchvision", "PIL.PngImagePlugin"]
    not_loaded = ["librosa", "scipy.signal", "soxr", "jieba"]
    probe = ("import json, sys, torch, nemu.worker_template, nemu.text; "
             f"print(json.dumps([[m for m in {images + not_loaded!r} if m in sys.modules], torch.get_num_threads(), "
             "nemu.text._TOKENIZER is not None and nemu.text._TOKENIZER.initialized]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [images, 1, False]


# ---------------------------------------------------------------------------------------------------------
# The text-and-audio process: a record's text and audio there, its images in a worker, the same bytes


class _ExtractionState:
    """This process set up as an extraction worker (no cache), restored afterwards."""

    def __init__(self, raw: Path):
        self.settings = nemu.extraction.ExtractionSettings(raw, AudioSettings(),
                                                           resolve_image_settings("efficientnet-lite0"), 64,
                                                           nemu.extraction.RecordLimits())

    def __enter__(self):
        self.restore = nemu.extraction.limit_threads()
        return self

    def __exit__(self, *exc):
        self.restore()


def _same_result(a, b) -> None:
    assert a[0] == b[0] and a[1] == b[1]
    if a[0] != "ok":
        assert a[2] == b[2]
        return
    assert a[2].keys() == b[2].keys()
    for key, value in a[2].items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b[2][key].dtype and value.tobytes() == b[2][key].tobytes(), key
        else:
            assert value == b[2][key], key


def test_a_record_finished_from_its_text_and_audio_part_is_the_record_extracted_whole(tmp_path):
    records = [song(i, tmp_path, audio_ext=("wav", "ogg", "flac")[i % 3]) for i in range(3)]
    records.append(song(3, tmp_path) | {"audio": None})
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    records.append(song(4, tmp_path) | {"audio": "audio/broken.wav"})
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    records.append(song(5, tmp_path) | {"images": ["images/broken.png"]})
    write_records(tmp_path, records)
    with _ExtractionState(tmp_path) as state:
        settings = state.settings
        for record in read_records(tmp_path).records:
            whole = nemu.extraction.extract_record(record, settings)
            part = nemu.extraction.extract_text_and_audio(record, settings)
            if record.id == "s004":  # the audio decides: the part is already the record's final result
                assert whole[0] == "quarantined" and whole[2].field == "audio"
                _same_result(part, whole)
                continue
            assert part[0] == "part" and part[1] == (whole[2]["media_digests"]["audio"] if whole[0] == "ok" else
                                                      part[1])
            _same_result(nemu.extraction.extract_record(record, settings, part[1:]), whole)
            # a part extracted from another version of the audio file is not used
            stale = {**part[2], "audio": np.full_like(part[2]["audio"], 7.0)}
            _same_result(nemu.extraction.extract_record(record, settings, ("0" * 64, stale)), whole)
        assert whole[0] == "quarantined" and whole[2].field == "images[0]"  # s005: the images decide


_SPLIT_PROBE = """
import json, os, sys, time
from pathlib import Path
import nemu.build
import nemu.workers
from tests.conftest import options

if __name__ == "__main__":
    log = Path(os.environ["NEMU_TEST_TASK_LOG"])
    start = nemu.workers._start_worker

    def held_back(settings):
        # The workers start once the text-and-audio process has begun a record, so what the test sees does
        # not depend on which of it and the template is ready first.
        deadline = time.time() + 120
        while time.time() < deadline and "text-and-audio" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.02)
        return start(settings)

    nemu.workers._start_worker = held_back
    summary = nemu.build.build(options(Path(sys.argv[1]), Path(sys.argv[2]), workers=2, cache_dir=Path(sys.argv[3])))
    print(json.dumps({"kept": summary.kept, "extracted": summary.extracted}))
"""


def _task_log(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ", 1)) for line in path.read_text(encoding="utf-8").splitlines()]


def test_workers_add_the_images_to_the_text_and_audio_part_and_the_shards_are_those_of_one_worker(tmp_path):
    tiny_raw(tmp_path / "raw", 12)
    log = tmp_path / "tasks.log"
    seen = _probe(tmp_path, _SPLIT_PROBE, str(tmp_path / "raw"), str(tmp_path / "two"), str(tmp_path / "cache2"),
                  env={nemu.workers.TASK_LOG_ENV: str(log)})
    assert seen == {"kept": 12, "extracted": 12}
    tasks = _task_log(log)
    by_text_and_audio = {rid for task, rid in tasks if task == "text-and-audio"}
    finished = [(task, rid) for task, rid in tasks if task != "text-and-audio"]
    assert sorted(rid for _, rid in finished) == sorted(f"s{i:03d}" for i in range(12))  # each record once
    with_part = {rid for task, rid in finished if task == "images"}
    assert with_part and with_part <= by_text_and_audio, tasks
    build(options(tmp_path / "raw", tmp_path / "one", workers=1, cache_dir=tmp_path / "cache1"))
    assert shard_bytes(tmp_path / "two") == shard_bytes(tmp_path / "one")
    assert read_manifest(tmp_path / "two")["shards"] == read_manifest(tmp_path / "one")["shards"]


@pytest.mark.parametrize("kill, kept", [("s000@{flag}", 12), ("s000", 11)])
def test_a_dead_text_and_audio_process_costs_its_record_one_attempt_and_is_not_replaced(tmp_path, kill, kept):
    tiny_raw(tmp_path / "raw", 12)
    log = tmp_path / "tasks.log"
    env = {nemu.workers.TASK_LOG_ENV: str(log), nemu.workers.KILL_WORKER_ENV: kill.format(flag=tmp_path / "killed")}
    seen = _probe(tmp_path, _SPLIT_PROBE, str(tmp_path / "raw"), str(tmp_path / "out"), str(tmp_path / "cache"),
                  env=env)
    tasks = _task_log(log)
    # it died on its first record, which a worker then extracted whole; no other text-and-audio process came
    assert [t for t in tasks if t[0] == "text-and-audio"] == [("text-and-audio", "s000")], tasks
    assert ("whole", "s000") in tasks and not [t for t in tasks if t[0] == "images"], tasks
    assert seen["kept"] == kept
    report = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert report == ([] if kept == 12 else
                      [{"id": "s000", "line": 1, "field": "record", "reason": "worker died: signal 9 (SIGKILL)"}])


# ---------------------------------------------------------------------------------------------------------
# Pipes


def test_large_records_and_large_results_never_deadlock_the_pipes(tmp_path):
    """Records of megabytes (comments) sent to a worker while it sends back megabytes (a long song's MFCC
    frames): both sides of a pipe writing at once hung the build before tasks were received by a thread of
    the worker's own."""
    raw = tmp_path / "raw"
    records = []
    for i in range(10):
        record = song(i, raw)
        write_audio(raw / record["audio"], 25, 300 + 7 * i)  # ~1100 frames x 74 float32: ~0.3 MB to send back
        records.append(record | {"comments": ["很好听的歌" * 100] * 400})  # ~0.6 MB to send, as UTF-8
    write_records(raw, records)
    script = ("import json, sys\nfrom pathlib import Path\nfrom nemu.build import build\n"
              "from tests.conftest import options\nif __name__ == '__main__':\n"
              "    s = build(options(Path(sys.argv[1]), Path(sys.argv[2]), workers=2))\n"
              "    print(json.dumps({'kept': s.kept}))\n")
    assert _probe(tmp_path, script, str(raw), str(tmp_path / "out"), timeout=300) == {"kept": 10}


def test_closing_the_starts_survives_a_start_that_was_interrupted():
    """Ctrl-C inside ``Thread.start`` (the build waits there for a start thread) left a thread that threading
    counts as not started; closing the starts joined it and died with "cannot join thread before it is started"
    and a second traceback. Such a thread is now waited for while it runs, and skipped when it never began."""
    import threading
    import time

    from nemu.workers import _join_started

    never_begun = threading.Thread(target=lambda: None)
    _join_started(never_begun, begin_seconds=0.05)  # raised RuntimeError before; returns once it never began
    assert never_begun.ident is None
    running = threading.Thread(target=time.sleep, args=(0.2,))
    running.start()
    _join_started(running)
    assert not running.is_alive()
