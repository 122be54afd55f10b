"""Where records are extracted on one machine: in this process, or in a pool of local worker processes.

``extract_records(records, settings, workers=N)`` yields extract_record's results (nemu.extraction). With
several workers, the build process looks every record up in the feature cache itself and hands only the
records to extract to workers, which are forked from one warm template process (``nemu.worker_template``, a
multiprocessing fork server) and helped by one text-and-audio process; a worker that dies is replaced and its
record tried once more (``_parallel_extraction``). The Ray engine beside this one is nemu.ray_engine.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nemu.audio import audio_nodes
from nemu.extraction import (
    BuildError, ExtractionSettings, extract_record, extract_text_and_audio, image_encoder, keep_encoder,
    limit_threads, look_up,
)
from nemu.images import ImageEncoder
from nemu.records import Quarantined, RawRecord
from nemu.text import tokenize


def extract_records(records: list[RawRecord], settings: ExtractionSettings, *, workers: int = 1,
                    progress: bool = False, encoder: ImageEncoder | None = None):
    """extract_record's results for ``records``, in ``workers`` processes.

    Yields ("ok", record, features, from_cache) or ("quarantined", record, Quarantined, False), in input order
    with one worker, in the order they finish with several. ``encoder``: an ImageEncoder of ``settings.image``
    already loaded, used by in-process extraction (``workers`` <= 1), so a caller extracting many small batches
    loads the model once.
    """
    bar = dict(total=len(records), desc="extracting features", unit="song", disable=not progress,
               file=sys.stderr)
    if workers <= 1:
        if encoder is not None and encoder.settings == settings.image:
            keep_encoder(encoder)
        restore = limit_threads()
        try:
            yield from tqdm((extract_record(record, settings) for record in records), **bar)
        finally:
            restore()
        return
    yield from tqdm(_parallel_extraction(records, workers, settings), **bar)


KILL_WORKER_ENV = "NEMU_TEST_KILL_WORKER"
TASK_LOG_ENV = "NEMU_TEST_TASK_LOG"
WORKER_ATTEMPTS = 2  # a record whose worker dies is tried once more, then quarantined


def worker_test_hook(record_id: str, task: str) -> None:
    """Test hooks of every extraction process (local workers, Ray tasks), inert when unset
    (tests/test_build_integrity.py, tests/test_workers.py).
    NEMU_TEST_TASK_LOG=FILE: each process appends "TASK ID" to FILE as it starts a record, TASK being
    "text-and-audio" (the text-and-audio process), "images" (a worker given the record's text and audio
    part) or "whole". NEMU_TEST_KILL_WORKER=ID makes the process given record ID SIGKILL itself, as the OOM
    killer would; ID@FLAG does it only while the file FLAG does not exist (creating it), i.e. once; several
    such entries are separated by commas."""
    log = os.environ.get(TASK_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{task} {record_id}\n")
    kill_self_if_named(KILL_WORKER_ENV, record_id, separator=",")


def kill_self_if_named(variable: str, name: str, separator: str) -> None:
    """Test hook shared by build workers and benchmark cells: the environment ``variable`` lists entries NAME or
    NAME@FLAG (``separator`` between them); the process given ``name`` SIGKILLs itself, as the OOM killer would
    (with FLAG: only while the file FLAG does not exist, creating it, i.e. once). Inert when unset."""
    for wanted in filter(None, os.environ.get(variable, "").split(separator)):
        target, _, flag = wanted.partition("@")
        if name != target:
            continue
        if flag:
            try:
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
        os.kill(os.getpid(), signal.SIGKILL)


WARM_UP_PARTS = ("images", "text", "audio")


def _warm_up_steps(settings: ExtractionSettings, parts: tuple[str, ...] = WARM_UP_PARTS):
    """What a worker's first record would otherwise pay for, one step at a time, for the given ``parts`` of
    a record: the image encoder and one forward pass on a generated image ("images"), the tokenizer's
    dictionary ("text"), one MFCC of generated audio with the lazy imports of librosa, scipy and the decoders
    behind it ("audio"). Nothing of it reaches any record's features."""
    if "images" in parts:
        encoder = image_encoder(settings.image)
        yield
    if "text" in parts:
        tokenize("预热")  # the tokenizer's own dictionary (jieba.initialize would load the global one's)
        yield
    with tempfile.TemporaryDirectory(prefix="nemu-warm-up-") as folder:
        rng = np.random.default_rng(0)
        if "images" in parts:
            from PIL import Image  # here: the text-and-audio process warms up without the image libraries

            png = Path(folder) / "warm-up.png"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
            encoder.encode([png])
            yield
        if "audio" in parts:
            import soundfile  # here: a fork of the template warms up for images only

            wav = Path(folder) / "warm-up.wav"
            soundfile.write(wav, (0.1 * rng.standard_normal(settings.audio.sample_rate)).astype(np.float32),
                            settings.audio.sample_rate)
            audio_nodes(wav, settings.audio)
    yield


def warm_up_worker_template() -> None:
    """Run once in the fork server that local workers are forked from (nemu.worker_template): the imports and
    lazy initialisation of image extraction, whatever the build's settings, so each forked worker starts warm
    for images. Text and audio (jieba, librosa with scipy.signal) are not preloaded: a build's text-and-audio
    process (``_start_text_and_audio``) extracts them, on the core left idle while this runs, and a worker
    given a whole record imports them then.

    Torch and BLAS are held to one thread before any kernel runs, so the server never starts a thread pool
    that a forked child would inherit half-copied. The settings-specific part (the build's image encoder) is
    each worker's own warm-up. Best effort: a failure here only means workers pay for it themselves, and any
    real error is met again, and reported, by the record that needs the same thing.
    """
    try:  # the fork server dies of any exception that escapes its preload, and then no worker starts
        import torch  # the imports are the warm-up: this runs only in the fork server

        limit_threads()
        import timm  # noqa: F401  (with torchvision behind it: the image encoders' libraries)
        from torchvision import transforms  # noqa: F401
        from PIL import Image, JpegImagePlugin, PngImagePlugin  # noqa: F401

        # the first convolution, batch norm and pooling kernels (the CPU kernels' lazy set-up), on noise
        rng = np.random.default_rng(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
                                  torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.SiLU(),
                                  torch.nn.AdaptiveAvgPool2d(1)).eval()
        with torch.inference_mode():
            net(torch.from_numpy(rng.standard_normal((1, 3, 64, 64), dtype=np.float32)))
    except Exception:
        pass


def _worker_main(connection, settings: ExtractionSettings, environment: dict | None = None,
                 text_and_audio: bool = False, warm_up: tuple[str, ...] = WARM_UP_PARTS) -> None:
    """One extraction process: says "ready" once initialised, warms up the ``warm_up`` parts while no task has
    come, then answers tasks until None: (index, record, text and audio part or None) with extract_record's
    result, or, for the text-and-audio process (``text_and_audio``: no torch), (index, record) with
    extract_text_and_audio's. ``environment``: the build's os.environ when the worker was started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the build stops us
    if environment is not None and dict(os.environ) != environment:
        os.environ.clear()
        os.environ.update(environment)
        tempfile.tempdir = None  # chosen again from this environment's TMPDIR
    limit_threads(torch_threads=not text_and_audio)
    # Tasks are received by a thread of their own, so the pipe is always drained: the build never blocks
    # sending a large record (megabytes of comments) while this process blocks sending it a large result
    # (each would wait for the other to read).
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_tasks, args=(connection, tasks), name="nemu-tasks", daemon=True).start()
    connection.send(("ready", None, None))
    steps = _warm_up_steps(settings, warm_up)
    try:  # started before the build has read its records: the wait is spent on what the first record needs
        while tasks.empty() and next(steps, StopIteration) is not StopIteration:
            pass
    except Exception:  # only a head start: a failure (no space for its temporary files, say) is met again, and
        pass  # reported, by the record that needs the same thing
    while (task := tasks.get()) is not None:
        index, record, *part = task
        worker_test_hook(record.id, "text-and-audio" if text_and_audio else "images" if part and part[0] else
                          "whole")
        try:
            result = extract_text_and_audio(record, settings) if text_and_audio else \
                extract_record(record, settings, *part)
            message = ("done", index, result)
        except Exception as exc:  # an error of the environment (the cache cannot be written) or a bug
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            message = ("error", index, exc)
        try:
            connection.send(message)
        except OSError:  # the build went away
            break
    if text_and_audio:  # a spawned interpreter's teardown is not waited for
        os._exit(0)


def _receive_tasks(connection, tasks: queue.SimpleQueue) -> None:
    """Puts every task from the build into ``tasks``, then None once the build says stop or goes away."""
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            task = None
        tasks.put(task)
        if task is None:
            return


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclass
class _Worker:
    process: multiprocessing.Process
    connection: object
    ready: bool = False
    # indices of the records sent to it, in order: it extracts the first, the next waits in its pipe
    tasks: collections.deque = field(default_factory=collections.deque)
    text_and_audio: bool = False  # the build's text-and-audio process (no torch)


TASKS_PER_WORKER = 2  # one extracting, one queued: a worker never waits for the build to hand it the next record
LOOKUP_SLICE_SECONDS = 0.05  # the build's cache look-ups pause this often to serve the workers
PARTS_AHEAD = 64  # at most this many records' text and audio parts wait for a worker to add the images (memory)


WORKER_TEMPLATE_MODULE = "nemu.worker_template"


def _worker_context():
    """The start method of local extraction workers.

    A fork server, where the platform has one, whose single preloaded module (nemu.worker_template) imports
    and warms up what image extraction needs: each worker is then a fork of a warm process, so the start-up
    (torch, torchvision behind timm, the first kernels) is paid once per build process instead of once per
    worker, and a worker's exit is immediate (no interpreter teardown). The server is started clean by
    multiprocessing, never forked from the build, whose threads (torch's, a caller's) a child would inherit
    half-copied; it stays up for the build process's next builds. Where there is no fork server (Windows),
    spawn.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([WORKER_TEMPLATE_MODULE])  # read when the server starts; later, no-op
        return context
    return multiprocessing.get_context("spawn")


def _forks_from_template() -> bool:
    return _worker_context().get_start_method() == "forkserver"


def _launch(context, *args, text_and_audio: bool = False) -> _Worker:
    """An extraction process of ``context`` running _worker_main(its end of a new pipe, *args)."""
    parent, child = context.Pipe()
    process = context.Process(target=_worker_main, args=(child, *args), daemon=True)
    process.start()
    child.close()
    return _Worker(process, parent, text_and_audio=text_and_audio)


def _start_worker(settings: ExtractionSettings) -> _Worker:
    context = _worker_context()
    # The environment of now, not of the moment the fork server started (a caller, or a test, may have set
    # variables since): spawn would pass it, so this does too. A fork of the template warms up for images
    # only: the build's text-and-audio process does the rest of most records.
    warm_up = ("images",) if context.get_start_method() == "forkserver" else WARM_UP_PARTS
    return _launch(context, settings, dict(os.environ), False, warm_up)


def _start_text_and_audio(settings: ExtractionSettings) -> _Worker:
    """The build's text-and-audio process: spawned, with only what records' text and audio need (jieba,
    librosa: it starts faster than the template's torch and timm), it starts extracting that part of the
    records on the core left idle while the template warms up, and goes on beside the workers, which add the
    images (extract_record with the part), so the workers stay on images, for which they are warm."""
    return _launch(multiprocessing.get_context("spawn"), settings, None, True, ("text", "audio"),
                   text_and_audio=True)


def _join_started(thread: threading.Thread, begin_seconds: float = 1.0) -> None:
    """Join a start thread, also one whose ``Thread.start`` was interrupted (Ctrl-C lands in its wait for the new
    thread): that thread may be running without threading knowing it has started, and ``join`` would refuse it.
    A thread that does not begin within ``begin_seconds`` was never created."""
    deadline = time.monotonic() + begin_seconds
    while True:
        try:
            thread.join()
            return
        except RuntimeError:  # "cannot join thread before it is started"
            if thread.ident is None and time.monotonic() > deadline:
                return
            time.sleep(0.005)


class _Starts:
    """Workers being started in threads of the build: forking one from the fork server waits until the
    template is warm (seconds, at a build process's first build), and meanwhile the build goes on looking
    records up in the cache and serving the text-and-audio process. ``wake`` is readable whenever a start has
    finished."""

    def __init__(self):
        self.wake, self._finished_signal = multiprocessing.Pipe(duplex=False)
        self.count = 0  # starts not yet collected
        self._finished: collections.deque = collections.deque()
        self._threads: list[threading.Thread] = []

    def start(self, settings: ExtractionSettings) -> None:
        self.count += 1
        thread = threading.Thread(target=self._start, args=(settings,), name="nemu-worker-start", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _start(self, settings: ExtractionSettings) -> None:
        try:
            outcome = _start_worker(settings)
        except BaseException as exc:  # said by the build's thread (collect)
            outcome = exc
        self._finished.append(outcome)
        self._finished_signal.send(None)

    def collect(self, pool: list[_Worker]) -> None:
        """Adds the workers started since the last call to ``pool``; raises the error of a start that failed."""
        while self.wake.poll():
            self.wake.recv()
        errors = []
        while self._finished:
            outcome = self._finished.popleft()
            self.count -= 1
            (errors if isinstance(outcome, BaseException) else pool).append(outcome)
        if errors:
            raise errors[0]

    def close(self) -> list[_Worker]:
        """Waits for the starts under way; returns the workers they started, for the caller to stop."""
        for thread in self._threads:
            _join_started(thread)
        workers = [outcome for outcome in self._finished if isinstance(outcome, _Worker)]
        self._finished.clear()
        self.wake.close()
        self._finished_signal.close()
        return workers


class WorkerPool:
    """Local extraction workers of one build, readied ahead of the work: ``WorkerPool(n, settings)`` starts the
    fork server's warm-up (nemu.worker_template) or, where there is no fork server, spawns the n workers, while
    the caller reads and validates the records; ``extract(records)`` then runs ``_parallel_extraction``, which
    forks a worker only once a record is missing from the cache. ``close()`` stops any worker not handed over
    (also on error)."""

    def __init__(self, workers: int, settings: ExtractionSettings):
        self.count, self.settings = workers, settings
        self.workers: list[_Worker] = []
        if _forks_from_template():
            from multiprocessing import forkserver

            forkserver.ensure_running()  # returns at once; forking a worker waits until the server is warm
        else:
            self.workers = [_start_worker(settings) for _ in range(workers)]

    def extract(self, records: list[RawRecord]):
        started, self.workers = self.workers, []
        return _parallel_extraction(records, self.count, self.settings, started)

    def close(self) -> None:
        _stop_workers(self.workers, wait=False)
        self.workers = []


def _stop_workers(pool: list, wait: bool) -> None:
    for worker in pool:
        if worker.text_and_audio and not worker.ready:  # still importing; holds nothing
            worker.process.kill()
            continue
        try:
            worker.connection.send(None)
        except OSError:
            pass
    for worker in pool:
        worker.process.join(timeout=10 if wait else 0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.connection.close()


def _parallel_extraction(records: list[RawRecord], workers: int, settings: ExtractionSettings,
                         started: list | None = None):
    """extract_record's results from ``workers`` worker processes, in the order they finish.

    Each record is first looked up in the cache by this process (``look_up``); only the records
    to extract go to workers, which are started (in threads, ``_Starts``) when the first such record is found.
    Each worker extracts one record at a time, with the next one already in its pipe (``TASKS_PER_WORKER``),
    so a busy build on shared cores does not leave it idle. Where workers are forks of the template (which
    holds torch, not librosa or jieba), one text-and-audio process (``_start_text_and_audio``) extracts the
    records' text and audio, from the start and on the core the template's warm-up leaves idle; a worker
    takes a record whose part is ready first, adds the images and writes the cache entry, and extracts a
    whole record only when no part is ready.

    When a process dies (SIGKILL from the OOM killer, a crash inside a decoder) its record is known, the first
    it has not answered: it is given to a fresh worker once more, and quarantined ("worker died: signal 9
    (SIGKILL)") if that one dies too; the records queued behind it go back to the queue untouched. The
    text-and-audio process's death counts as an attempt of its record too; it is not replaced (the workers
    extract whole records). The build never waits on a dead process: ``multiprocessing.connection.wait``
    wakes on each worker's pipe and on its process sentinel. Workers that die before they are ready (a
    broken environment, not a record) end the build after three in a row.
    """
    unlooked = collections.deque(range(len(records)))  # not yet looked up in the cache by this process
    pending: collections.deque = collections.deque()  # looked up: to be extracted
    with_part: collections.deque = collections.deque()  # their text and audio are extracted: images left
    parts: dict[int, tuple] = {}  # those parts: (audio digest, text and audio features)
    attempts: collections.Counter = collections.Counter()
    pool: list[_Worker] = list(started or [])  # started ahead by a WorkerPool, or here
    starts = _Starts()
    text_and_audio_wanted = workers >= 2 and _forks_from_template()
    failed_starts = 0
    remaining = len(records)

    def may_look_up() -> bool:  # records left to look up, and room for them while enough wait for the workers
        return bool(unlooked) and len(pending) < workers * TASKS_PER_WORKER

    try:
        while remaining:
            # Cache hits (and media that cannot be resolved) are answered here, without a worker, so a rebuild
            # from the cache never waits for one to start. Looking up stops while enough records wait for the
            # workers, and pauses every LOOKUP_SLICE_SECONDS to hand the workers' results on.
            deadline = time.perf_counter() + LOOKUP_SLICE_SECONDS
            while may_look_up() and time.perf_counter() < deadline:
                index = unlooked.popleft()
                result = look_up(records[index], settings)
                if result is None:
                    pending.append(index)
                else:
                    remaining -= 1
                    yield result
            if text_and_audio_wanted and pending:
                text_and_audio_wanted = False
                pool.append(_start_text_and_audio(settings))
            full = [w for w in pool if not w.text_and_audio]
            text_audio = next((w for w in pool if w.text_and_audio), None)
            needed = min(workers, len(pending) + len(with_part) + sum(bool(w.tasks) for w in full)
                         + (len(text_audio.tasks) if text_audio else 0))
            for _ in range(needed - len(full) - starts.count):
                starts.start(settings)
            # The text-and-audio process is served first, so a worker is left a whole record only when that
            # process has no part ready for it (it fell behind, or has not started yet).
            if text_audio is not None and text_audio.ready:
                while len(text_audio.tasks) < TASKS_PER_WORKER and pending and \
                        len(parts) + len(text_audio.tasks) < PARTS_AHEAD:
                    text_audio.tasks.append(pending.popleft())
                    text_audio.connection.send((text_audio.tasks[-1], records[text_audio.tasks[-1]]))
            for worker in full:
                while worker.ready and len(worker.tasks) < TASKS_PER_WORKER and (with_part or pending):
                    index = (with_part or pending).popleft()
                    worker.tasks.append(index)
                    worker.connection.send((index, records[index], parts.pop(index, None)))
            if not pool and not starts.count:  # nothing to extract yet: look up more records (or all are answered)
                continue
            woke = set(multiprocessing.connection.wait(
                [w.connection for w in pool] + [w.process.sentinel for w in pool] + [starts.wake],
                timeout=0 if may_look_up() else None))
            if starts.wake in woke:
                starts.collect(pool)
            for worker in list(pool):
                if worker.connection not in woke and worker.process.sentinel not in woke:
                    continue
                message = None
                try:
                    if worker.connection.poll():
                        message = worker.connection.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None:
                    kind, index, payload = message
                    if kind == "ready":
                        worker.ready = True
                        if not worker.text_and_audio:
                            failed_starts = 0
                        continue
                    worker.tasks.remove(index)
                    if worker.text_and_audio and kind == "done" and payload[0] == "part":
                        parts[index] = payload[1:]
                        with_part.append(index)
                        continue
                    if worker.text_and_audio and kind == "error":  # a worker meets it again, and says it
                        pending.appendleft(index)
                        continue
                    if kind == "error":
                        record = records[index]
                        payload.add_note(f"while extracting record {record.id!r} (line {record.line})")
                        raise payload
                    remaining -= 1
                    yield payload
                    continue
                if worker.process.is_alive():
                    continue
                worker.process.join()
                worker.connection.close()
                pool.remove(worker)
                reason = _exit_reason(worker.process.exitcode)
                if not worker.tasks:
                    failed_starts += not (worker.ready or worker.text_and_audio)
                    if failed_starts >= 3:
                        raise BuildError(f"extraction workers die before extracting anything ({reason}); "
                                         f"try --workers 1 to see the error")
                    continue
                task = worker.tasks.popleft()  # the record it was extracting
                pending.extendleft(reversed(worker.tasks))  # those queued behind it were never started
                attempts[task] += 1
                if attempts[task] < WORKER_ATTEMPTS:
                    pending.appendleft(task)
                    continue
                record = records[task]
                remaining -= 1
                yield "quarantined", record, Quarantined(record.id, record.line, "record",
                                                         f"worker died: {reason}"), False
    finally:
        _stop_workers(pool + starts.close(), wait=not remaining)


