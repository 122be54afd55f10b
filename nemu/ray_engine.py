"""Ray as the build's extraction engine past one machine: ``build_nemu --engine ray [--ray-address ADDR]``.

Records go to Ray tasks in small batches (``BATCH_RECORDS``); each task runs the build's own per-record code
(``nemu.extraction.extract_record``), so the features, the cache entries and the shards are byte-identical to
``--engine local``. A Ray worker process initialises the extraction state once, on its first task, and keeps
it, image encoder included, for every later task it runs (one encoder per worker process); at most a few
tasks per CPU are in flight, so the driver's memory does not grow with the number of records.

Where the cluster has GPUs (and ``gpu`` is not "never"), the tasks ask for a share of one and encode images
on it. GPU kernels round differently from the CPU ones, so such features are not bit-identical to a CPU
build: they are cached apart (``CACHE/cuda``) and the manifest's image settings say ``device: cuda``.

Every node must see the raw folder and OUT (the feature cache, which the workers write and the driver reads
back) at the same paths: a shared file system. Ray is an optional dependency (``pip install nemu-hhmpn[ray]``);
nothing imports it unless this engine is used.
"""

from __future__ import annotations

import collections
import os

from nemu.extraction import ExtractionSettings, extract_record, keep_encoder, limit_threads
from nemu.images import ImageEncoder
from nemu.records import Quarantined
from nemu.workers import worker_test_hook

BATCH_RECORDS = 4  # records per task: small, so work spreads evenly and a dead worker costs little
IN_FLIGHT_PER_CPU = 2  # tasks submitted ahead per CPU: workers never wait for the driver
GPU_CHOICES = ("auto", "never")


class RayUnavailable(RuntimeError):
    pass


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray: pip install 'nemu-hhmpn[ray]' (or pip install ray)") from None
    return ray


class RaySession:
    """Ray for one build: joins ``address`` (or RAY_ADDRESS), else starts a local instance of ``num_cpus`` CPUs.

    ``with RaySession(...) as session:`` shuts down only what it started (a local instance, or this driver's
    connection). ``session.use_gpu`` says whether image encoding runs on the cluster's GPUs."""

    def __init__(self, address: str | None, num_cpus: int, gpu: str = "auto"):
        if gpu not in GPU_CHOICES:
            raise ValueError(f"gpu must be one of {', '.join(GPU_CHOICES)}, got {gpu!r}")
        self.address, self.num_cpus, self.gpu = address, num_cpus, gpu
        self._started = False

    def __enter__(self) -> RaySession:
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address is not None:  # before importing Ray: a wrong address is named in seconds, Ray or not
            _check_reachable(address)
        ray = import_ray()
        if not ray.is_initialized():
            try:
                if address is None:  # a local instance, started and stopped by this build
                    ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                             configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as exc:  # no cluster at that address, a version mismatch, ...
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise RayUnavailable(f"cannot start or join {where}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            self._started = True
        resources = ray.cluster_resources()
        self.cpus = max(1, int(resources.get("CPU", 1)))
        self.gpus = float(resources.get("GPU", 0)) if self.gpu == "auto" else 0.0
        return self

    def __exit__(self, *exc_info) -> None:
        if self._started:
            import_ray().shutdown()

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0


#: The HTTP/2 client preface and an empty SETTINGS frame: Ray's GCS (and its client server, ray://) are gRPC
#: servers, which answer with a SETTINGS frame of their own; an HTTP/1 server (the dashboard) answers otherwise.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HANDSHAKE_SECONDS = 5.0


def _check_reachable(address: str, timeout: float | None = None) -> None:
    """Refuse in seconds, naming ``address``, a HOST:PORT (or ray://HOST:PORT) address where no Ray answers:
    nothing listens, something answers that is not a gRPC server (an HTTP server such as Ray's dashboard, a
    typo'd port), or nothing replies within ``timeout`` seconds -- where ``ray.init`` itself would wait in its
    reconnect loop for minutes. The handshake is gRPC's HTTP/2 preface; "auto", "local" and TLS clusters
    (RAY_USE_TLS) are left to Ray."""
    import socket

    timeout = HANDSHAKE_SECONDS if timeout is None else timeout
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = target.rpartition(":")
    if "://" in target or not host or not port.isdigit() or os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
        return
    fix = "start one with 'ray start --head' or check --ray-address / RAY_ADDRESS"
    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:
        raise RayUnavailable(f"no Ray cluster answers at {address} ({exc.strerror or exc}); {fix}") from None
    reply = b""
    try:
        with connection:
            connection.settimeout(timeout)
            connection.sendall(_HTTP2_PREFACE)
            while len(reply) < 9:
                chunk = connection.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except socket.timeout:
        raise RayUnavailable(f"{address} accepts connections but does not answer as Ray within {timeout:g} s; "
                             f"{fix}") from None
    except OSError:
        pass  # reset by a server that does not speak HTTP/2: judged by the reply below
    if len(reply) < 9 or reply[3] != 0x04:  # a gRPC server's first frame is SETTINGS (type 4)
        seen = reply.split(b"\r\n", 1)[0].decode("latin-1")[:40] if reply else "closed the connection"
        raise RayUnavailable(f"{address} is not a Ray cluster (it answered {seen!r}, not Ray's gRPC); Ray's "
                             f"address is the head node's GCS port (6379 by default; the dashboard's 8265 is "
                             f"not it); {fix}")


# ----------------------------------------------------------------------------------------------
# In the Ray worker processes

_PROCESS_STATE: dict = {"settings": None}  # what this Ray worker process was prepared for


class _OnDevice:
    """The image encoder's network on ``device``: batches go there and features come back to the CPU."""

    def __init__(self, model, device: str):
        self.model, self.device = model.to(device), device

    def __call__(self, batch):
        return self.model(batch.to(self.device)).float().cpu()


def _prepare_process(settings: ExtractionSettings, use_gpu: bool) -> None:
    """This worker process set up for extraction on its first task and kept so for later ones."""
    if _PROCESS_STATE["settings"] == (settings, use_gpu):
        return
    limit_threads()
    encoder = ImageEncoder(settings.image)  # loaded now, not on the first record that needs it
    if use_gpu:
        encoder.model = _OnDevice(encoder.model, "cuda")
    keep_encoder(encoder)
    _PROCESS_STATE["settings"] = (settings, use_gpu)


def extract_batch(settings: ExtractionSettings, use_gpu: bool, batch: list) -> list:
    """extract_record's results for a batch of (index, record) pairs, as (index, result) pairs."""
    _prepare_process(settings, use_gpu)
    results = []
    for index, record in batch:
        worker_test_hook(record.id, "whole")
        results.append((index, extract_record(record, settings)))
    return results


# ----------------------------------------------------------------------------------------------
# In the driver


def _is_worker_death(ray, exc: BaseException) -> bool:
    deaths = tuple(getattr(ray.exceptions, name) for name in (
        "WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "ActorDiedError", "LocalRayletDiedError")
        if hasattr(ray.exceptions, name))
    return isinstance(exc, deaths)


def ray_extraction(records: list, settings: ExtractionSettings, session: RaySession):
    """extract_record's results for ``records`` from Ray tasks, in the order they finish.

    A task whose worker dies (the OOM killer, a crash inside a decoder) is run again by Ray once; if it dies
    again, each of its records is tried alone, and one whose worker dies then is quarantined ("worker died"),
    as with local workers. An exception from the build's code (the cache cannot be written) is raised here.
    """
    ray = import_ray()
    resources = {"num_cpus": 1}
    if session.use_gpu:
        resources["num_gpus"] = min(1.0, session.gpus / session.cpus)
    task = ray.remote(max_retries=1, **resources)(extract_batch)
    shared_settings = ray.put(settings)
    pending = collections.deque([(i, records[i]) for i in range(start, min(start + BATCH_RECORDS, len(records)))]
                                for start in range(0, len(records), BATCH_RECORDS))
    alone: collections.deque = collections.deque()  # records of a batch that died twice, each tried alone
    in_flight: dict = {}  # object ref -> (batch, tried alone)
    limit = IN_FLIGHT_PER_CPU * session.cpus
    while pending or alone or in_flight:
        while len(in_flight) < limit and (alone or pending):
            batch, single = ([alone.popleft()], True) if alone else (pending.popleft(), False)
            in_flight[task.remote(shared_settings, session.use_gpu, batch)] = (batch, single)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        batch, single = in_flight.pop(done[0])
        try:
            results = ray.get(done[0])
        except Exception as exc:
            if not _is_worker_death(ray, exc):
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    index, record = batch[0] if len(batch) == 1 else (None, None)
                    if record is not None:
                        cause.add_note(f"while extracting record {record.id!r} (line {record.line})")
                    raise cause from None
                raise
            if not single:
                alone.extend(batch)
                continue
            _, record = batch[0]
            yield "quarantined", record, Quarantined(record.id, record.line, "record",
                                                     f"worker died: {type(exc).__name__}"), False
            continue
        for _, result in results:
            yield result
