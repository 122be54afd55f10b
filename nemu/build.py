"""NEMu construction: raw records → validated per-record features → Parquet shards with splits.

Stages (each with a progress bar): read and validate records.jsonl; extract per-record features in
``workers`` processes or on Ray (``engine``; text nodes and jieba tokens, MFCC windows, CNN image
features), each cached by content hash and settings so a killed build redoes only what is missing; word
vectors (given or trained on the corpus); stratified folds; shards, manifest, dataset card and
quarantine report. The build streams (see ``SPOOL_FILE``): its memory does not grow with the number of
songs, and the shards are the bytes the in-memory build wrote.

A record's failure is that record's (``extract_record``): media that cannot be resolved, opened or
decoded, non-finite features or no node in any modality quarantine it with a specific reason.
``RecordLimits`` (and AudioSettings' ``max_seconds``/``max_nodes``) bound what one record may cost;
what they cut is counted in the summary and the manifest. Songs whose media are byte-identical under
different ids are reported and kept in one fold.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from nemu import labels as nemu_labels
from nemu.audio import AudioDecodeError, AudioSettings, audio_nodes
from nemu.card import write_dataset_card
from nemu.images import (
    DEFAULT_MAX_IMAGE_PIXELS, FEATURE_DIMS, ImageDecodeError, ImageEncoder, ImageSettings, resolve_image_settings,
)
from nemu.records import (
    AUDIO_SUFFIXES, IMAGE_SUFFIXES, Quarantined, RawRecord, ReadResult, RecordError, read_media_bytes_digest,
    read_records, resolve_media_path,
)
from nemu.publish import DatasetPublisher, FolderConflict, FolderLocked
from nemu.shards import (
    FORMAT_VERSION, Modality, atomic_write_bytes, build_schema, canonical_json, sha256_file, shard_count,
    with_manifest, write_manifest, write_shard,
)
from nemu.splits import N_FOLDS, SPLITS, assign_folds, split_of_fold
from nemu.statistics import Table1Statistics
from nemu.text import clean_lyrics, comment_nodes, embed_nodes, load_word_vectors, tokenize, train_word_vectors

CACHE_VERSION = 3  # bump when extraction code changes what it produces
WORD_VECTOR_DIM = 300
TEXT_MODALITIES = ("lyrics", "comments")
QUARANTINE_FILE = "quarantine.jsonl"
TRAINED_VECTORS_FILE = "word_vectors.bin"


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class RecordLimits:
    """Per-record resource limits; each is a build_nemu flag and is recorded in the manifest.

    Audio has its own two, in AudioSettings: ``max_seconds`` (decoding stops there) and ``max_nodes``.
    What a limit cuts from a kept record is counted (``CUT_COUNTS``) in the summary and the manifest.
    """

    max_images: int = 16  # distinct images per record; byte-identical copies count once
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # decoded width × height, checked before decoding
    max_lyric_lines: int = 256  # the first lines are kept (lyrics are sequential)
    max_comment_nodes: int = 512  # the first comment nodes are kept

    def to_dict(self) -> dict:
        return asdict(self)


# What the limits cut from kept records (summed in the summary and the manifest's "limits").
CUT_COUNTS = (
    "duplicate_images",  # an image listed twice in one record, or byte-identical to another of its images
    "images_over_limit",  # images beyond max_images (not read)
    "lyric_lines_over_limit",
    "comment_nodes_over_limit",
    "audio_windows_over_limit",  # windows beyond max_audio_nodes (evenly spaced ones are kept)
    "audio_files_truncated",  # audio decoded only up to max_audio_seconds
    "audio_seconds_cut",  # seconds beyond max_audio_seconds, where the file's header gives its length
)


@dataclass
class BuildOptions:
    raw_dir: Path
    out_dir: Path
    seed: int = 0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    word_vectors: Path | None = None
    word_vectors_format: str = "auto"
    image_encoder: str = "resnet50"
    image_weights: Path | None = None
    audio: AudioSettings = field(default_factory=AudioSettings)
    max_comment_chars: int = 64
    strict: bool = False
    rows_per_shard: int = 1000
    row_group_rows: int = 100
    cache_dir: Path | None = None  # default OUT/.cache
    progress: bool = True
    limits: RecordLimits = field(default_factory=RecordLimits)
    engine: str = "local"  # ENGINES: where extraction runs (the output does not depend on it)
    ray_address: str | None = None  # engine "ray": the cluster to join (None: RAY_ADDRESS, else a local instance)
    ray_gpu: str = "auto"  # engine "ray": "auto" encodes images on the cluster's GPUs where it has them, "never"


ENGINES = ("local", "ray")


@dataclass
class BuildSummary:
    input: int
    kept: int
    quarantined: int
    without_emotion_tag: int
    extracted: int
    from_cache: int
    splits: dict[str, int]
    out_dir: Path
    cut_by_limits: dict[str, float] = field(default_factory=dict)  # CUT_COUNTS, summed over kept records
    duplicate_media: list[list[str]] = field(default_factory=list)  # ids of songs with byte-identical media
    extraction_seconds: float | None = None  # wall-clock from the start of the build to the last record extracted
    # ... to the first record extracted: the start-up (imports, warm-up) that the work waited for
    first_record_seconds: float | None = None

    def __str__(self) -> str:
        text = (
            f"input {self.input} = kept {self.kept} + quarantined {self.quarantined} + without emotion tag "
            f"{self.without_emotion_tag}\nfeatures: {self.extracted} records extracted, {self.from_cache} from cache\n"
            f"splits: " + ", ".join(f"{s} {n}" for s, n in self.splits.items()) + f"\nwritten to {self.out_dir}"
        )
        cut = {name: n for name, n in self.cut_by_limits.items() if n}
        if cut:
            text += "\ncut by limits: " + ", ".join(f"{name.replace('_', ' ')} {n:g}" for name, n in cut.items())
        if self.duplicate_media:
            text += (f"\nbyte-identical media under different ids (each group kept in one fold): "
                     + "; ".join(", ".join(group) for group in self.duplicate_media[:5])
                     + (f"; and {len(self.duplicate_media) - 5} more groups" if len(self.duplicate_media) > 5 else ""))
        return text


# ----------------------------------------------------------------------------------------------
# Per-record extraction (runs in worker processes)

_WORKER: dict = {}


def _settings_state(raw_dir: str, cache_dir: str | None, audio: AudioSettings, image: ImageSettings,
                    max_comment_chars: int, limits: RecordLimits = RecordLimits()) -> dict:
    """The settings every record is extracted with, from _init_worker's arguments."""
    return dict(raw_dir=Path(raw_dir), cache_dir=Path(cache_dir) if cache_dir is not None else None, audio=audio,
                image=image, max_comment_chars=max_comment_chars, limits=limits)


def _init_worker(raw_dir: str, cache_dir: str | None, audio: AudioSettings, image: ImageSettings,
                 max_comment_chars: int, limits: RecordLimits = RecordLimits(), *, images: bool = True):
    """Set up this process to extract records; ``images`` False: only their text and audio (the build's
    text-and-audio process, which never imports torch)."""
    from threadpoolctl import threadpool_limits

    # One thread per process: parallelism comes from the workers, and single-threaded kernels make
    # the features bit-identical whatever the worker count. BLAS too: librosa's mel filterbank and DCT are
    # numpy matrix products whose float32 sums change with OpenBLAS's thread count (seen: 1e-6 differences
    # between a 2-thread in-process extraction and the build's workers).
    if images:
        import torch

        torch.set_num_threads(1)
    _WORKER["blas_limits"] = threadpool_limits(1)
    _WORKER.update(_settings_state(raw_dir, cache_dir, audio, image, max_comment_chars, limits), encoder=None)


def _settings_fingerprint(audio: AudioSettings, image: ImageSettings, max_comment_chars: int,
                          limits: RecordLimits = RecordLimits()) -> dict:
    return {"cache_version": CACHE_VERSION, "audio": audio.to_dict(), "image": image.to_dict(),
            "max_comment_chars": max_comment_chars, "limits": limits.to_dict(), "tokenizer": "jieba"}


@dataclass
class _Media:
    """A record's media files after resolution, hashing and de-duplication (absolute paths, sha256 digests)."""

    audio: Path | None = None
    audio_digest: str | None = None
    images: list[tuple[int, str, Path, str]] = field(default_factory=list)  # (index in record, relative, path, digest)
    duplicate_images: int = 0
    images_over_limit: int = 0


def _resolve_media(record: RawRecord, raw_dir: Path, max_images: int) -> _Media:
    """Resolve and hash a record's media; RecordError names the field of the first file that fails.

    An image listed twice, or byte-identical to one already kept, counts once; images beyond
    ``max_images`` distinct ones are not read at all.
    """
    media = _Media()
    if record.audio is not None:
        media.audio = resolve_media_path(raw_dir, record.audio, "audio", AUDIO_SUFFIXES)
        media.audio_digest = read_media_bytes_digest(media.audio, "audio", record.audio)
    seen_paths: dict[Path, str] = {}
    seen_relative: set[str] = set()
    for index, relative in enumerate(record.images):
        if len(media.images) == max_images:
            media.images_over_limit = len(record.images) - index
            break
        if relative in seen_relative:  # the same path listed again: not even resolved again
            media.duplicate_images += 1
            continue
        seen_relative.add(relative)
        field_name = f"images[{index}]"
        path = resolve_media_path(raw_dir, relative, field_name, IMAGE_SUFFIXES)
        if path in seen_paths:
            media.duplicate_images += 1
            continue
        digest = seen_paths[path] = read_media_bytes_digest(path, field_name, relative)
        if any(digest == kept[3] for kept in media.images):
            media.duplicate_images += 1
            continue
        media.images.append((index, relative, path, digest))
    return media


def _record_key(record: RawRecord, media: _Media, fingerprint: dict) -> str:
    """Cache key: the record's content, the settings, and the bytes of every media file it uses."""
    digest = hashlib.sha256()
    content = {"lyrics": record.lyrics, "comments": record.comments, "audio": record.audio, "images": record.images}
    digest.update(canonical_json({"record": content, "settings": fingerprint}).encode("utf-8"))
    for file_digest in ([media.audio_digest] if media.audio_digest else []) + [d for *_, d in media.images]:
        digest.update(file_digest.encode("ascii"))
    return digest.hexdigest()


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.npz"


_TEXT_KEYS = ("lyrics_text", "lyrics_tokens", "comments_text", "comments_tokens")
_META_KEYS = ("image_paths", "media_digests", "cut")


def _save_features(path: Path, features: dict) -> None:
    texts = {k: features[k] for k in _TEXT_KEYS + _META_KEYS}
    buffer = io.BytesIO()
    np.savez(buffer, audio=features["audio"], images=features["images"],
             duration=np.float64(features["duration_seconds"] if features["duration_seconds"] is not None else np.nan),
             texts=np.array(json.dumps(texts, ensure_ascii=False)))
    atomic_write_bytes(path, buffer.getvalue())


def _is_string_list(value, nested: bool = False) -> bool:
    if not isinstance(value, list):
        return False
    return all(_is_string_list(v) if nested else isinstance(v, str) for v in value)


def _features_problem(features: dict, audio_dim: int, image_dim: int) -> str | None:
    """Why ``features`` do not have the shape a record's features must have (None when they do)."""
    for modality in ("lyrics", "comments"):
        texts, tokens = features.get(f"{modality}_text"), features.get(f"{modality}_tokens")
        if not _is_string_list(texts) or not _is_string_list(tokens, nested=True) or len(texts) != len(tokens):
            return f"{modality} texts and tokens are not two lists of one length"
    for modality, dim in (("audio", audio_dim), ("images", image_dim)):
        array = features.get(modality)
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2 or array.shape[1] != dim:
            return f"{modality} features are not a float32 (nodes, {dim}) matrix"
        if not np.isfinite(array).all():
            return f"{modality} features hold NaN or infinite values"
    if not _is_string_list(features.get("image_paths")) or len(features["image_paths"]) != len(features["images"]):
        return "image paths do not match the image features"
    duration = features.get("duration_seconds")
    if duration is not None and not (isinstance(duration, float) and np.isfinite(duration) and duration >= 0):
        return "duration is not a finite non-negative number"
    digests = features.get("media_digests")
    if not isinstance(digests, dict) or set(digests) != {"audio", "images"} or not _is_string_list(digests["images"]):
        return "media digests are missing"
    cut = features.get("cut")
    if not isinstance(cut, dict) or set(cut) != set(CUT_COUNTS) or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cut.values()):
        return "limit counts are missing"
    return None


def _load_features(path: Path, audio_dim: int | None = None, image_dim: int | None = None) -> dict | None:
    """A cache entry's features, or None when it is torn, unreadable or not of the expected shape (recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            features = json.loads(str(data["texts"]))
            features["audio"] = data["audio"]
            features["images"] = data["images"]
            duration = float(data["duration"])
    except Exception:  # a cache entry torn by a crash is just recomputed
        return None
    if not isinstance(features, dict):
        return None
    features["duration_seconds"] = None if np.isnan(duration) else duration
    audio_dim = features["audio"].shape[-1] if audio_dim is None and features["audio"].ndim == 2 else audio_dim
    image_dim = features["images"].shape[-1] if image_dim is None and features["images"].ndim == 2 else image_dim
    if audio_dim is None or image_dim is None or _features_problem(features, audio_dim, image_dim) is not None:
        return None
    return features


def _extract_text(record: RawRecord, max_comment_chars: int, limits: RecordLimits = RecordLimits()) -> dict:
    """Lyric-line and comment nodes with their tokens, at most ``max_lyric_lines`` / ``max_comment_nodes``."""
    lyric_lines = clean_lyrics(record.lyrics)
    comments = comment_nodes(record.comments, max_comment_chars)
    cut = {"lyric_lines_over_limit": max(0, len(lyric_lines) - limits.max_lyric_lines),
           "comment_nodes_over_limit": max(0, len(comments) - limits.max_comment_nodes)}
    lyric_lines, comments = lyric_lines[: limits.max_lyric_lines], comments[: limits.max_comment_nodes]
    return {
        "lyrics_text": lyric_lines,
        "lyrics_tokens": [tokenize(line) for line in lyric_lines],
        "comments_text": comments,
        "comments_tokens": [tokenize(c) for c in comments],
        "cut": cut,
    }


def _quarantine(record: RawRecord, field_name: str, reason: str):
    return "quarantined", record, Quarantined(record.id, record.line, field_name, reason), False


def _without_extraction(record: RawRecord, state: dict):
    """(result, media, cache path): extract_record's result where the record needs no extraction (its features
    are in the cache, or its media cannot be resolved), else (None, media, cache path or None without a
    cache). Cheap (stat, hash the media, read one cache file): the build process runs it too, before any
    worker is involved."""
    limits: RecordLimits = state.get("limits", RecordLimits())
    fingerprint = _settings_fingerprint(state["audio"], state["image"], state["max_comment_chars"], limits)
    try:
        media = _resolve_media(record, state["raw_dir"], limits.max_images)
    except RecordError as exc:
        return _quarantine(record, exc.field, exc.reason), None, None
    path = _cache_path(state["cache_dir"], _record_key(record, media, fingerprint)) \
        if state["cache_dir"] is not None else None  # no cache: prediction of new songs (nemu.featurize)
    if path is not None and path.is_file():
        cached = _load_features(path, state["audio"].n_mfcc, state["image"].dim)
        if cached is not None:
            return ("ok", record, cached, True), media, path
    return None, media, path


def extract_record(record: RawRecord, text_and_audio: tuple | None = None) -> tuple[str, RawRecord, dict | Quarantined,
                                                                                    bool]:
    """("ok", record, features, from_cache) or ("quarantined", record, Quarantined, False).

    Every failure of this record's data is this record's: a media path that cannot be resolved,
    opened or read (with its specific OS reason), a decoder error of any type, non-finite features
    in any modality, or no node in any modality quarantine the record and the build goes on. Only
    writing the cache entry (the output folder's problem, not the record's) can raise.
    ``text_and_audio``: the record's text and audio part, from ``extract_text_and_audio`` in another process
    (the build's text-and-audio process); used only while the audio file has the digest it was extracted from.
    """
    state = _WORKER
    limits: RecordLimits = state.get("limits", RecordLimits())
    result, media, path = _without_extraction(record, state)
    if result is not None:
        return result
    if state["encoder"] is None:  # loading the model is not this record's business: its errors are not caught
        state["encoder"] = ImageEncoder(state["image"])
    try:
        if text_and_audio is None or text_and_audio[0] != media.audio_digest:
            text_and_audio = (media.audio_digest, _extract_text_and_audio(record, media, state, limits))
        features = _extract_features(record, media, state, limits, text_and_audio[1])
    except Exception as exc:
        return _extraction_failed(record, exc)
    # something else in the cache slot's place (a directory, a link) is left alone
    if path is not None and (not (path.exists() or path.is_symlink()) or path.is_file()):
        _save_features(path, features)
    return "ok", record, features, False


def extract_text_and_audio(record: RawRecord) -> tuple:
    """The part of extract_record before the images, for the text-and-audio process (no torch): ("part",
    audio digest, text and audio features) for extract_record(record, (digest, features)) to finish, or
    extract_record's own final result where this part already decides it (a cache hit, media that cannot be
    resolved, text or audio that quarantine the record: extract_record meets those before the images too)."""
    state = _WORKER
    limits: RecordLimits = state.get("limits", RecordLimits())
    result, media, _ = _without_extraction(record, state)
    if result is not None:
        return result
    try:
        return "part", media.audio_digest, _extract_text_and_audio(record, media, state, limits)
    except Exception as exc:
        return _extraction_failed(record, exc)


def _extraction_failed(record: RawRecord, exc: Exception):
    """The quarantine result of a record whose extraction raised ``exc``: a library failing on this record's data
    (MemoryError included) is the record's."""
    if isinstance(exc, RecordError):
        return _quarantine(record, exc.field, exc.reason)
    return _quarantine(record, "record", f"feature extraction failed: {type(exc).__name__}: {str(exc)[:300]}")


def _extract_text_and_audio(record: RawRecord, media: _Media, state: dict, limits: RecordLimits) -> dict:
    """The text and audio nodes (what needs no image encoder); RecordError names the field that fails."""
    try:
        features = _extract_text(record, state["max_comment_chars"], limits)
    except Exception as exc:
        raise RecordError("lyrics/comments", f"text processing failed: {type(exc).__name__}: {exc}") from None
    cut = dict.fromkeys(CUT_COUNTS, 0) | features["cut"]
    audio: AudioSettings = state["audio"]
    if media.audio is not None:
        try:
            nodes = audio_nodes(media.audio, audio)
        except AudioDecodeError as exc:
            raise RecordError("audio", f"{record.audio}: {exc}") from None
        except Exception as exc:  # MemoryError, resampler errors on absurd sample rates, ...
            raise RecordError("audio", f"{record.audio}: cannot decode audio: {type(exc).__name__}: {str(exc)[:300]}") from None
        features["audio"], features["duration_seconds"] = nodes.features, nodes.duration_seconds
        cut.update(audio_windows_over_limit=nodes.windows_cut, audio_files_truncated=int(nodes.truncated),
                   audio_seconds_cut=round(nodes.seconds_cut, 3))
    else:
        features["audio"] = np.zeros((0, audio.n_mfcc), dtype=np.float32)
        features["duration_seconds"] = None
    features["cut"] = cut
    return features


def _extract_features(record: RawRecord, media: _Media, state: dict, limits: RecordLimits,
                      text_and_audio: dict) -> dict:
    """Every modality's nodes, validated: ``text_and_audio`` (_extract_text_and_audio's) and the images;
    RecordError names the field (modality or media file) that fails."""
    features = dict(text_and_audio)
    cut = dict(features["cut"])
    try:
        features["images"] = state["encoder"].encode([path for _, _, path, _ in media.images], limits.max_image_pixels)
    except ImageDecodeError as exc:
        position, reason = exc.args
        index, relative = media.images[position][:2]
        raise RecordError(f"images[{index}]", f"{relative}: {reason}") from None
    features["image_paths"] = [relative for _, relative, _, _ in media.images]
    features["media_digests"] = {"audio": media.audio_digest, "images": [d for *_, d in media.images]}
    cut.update(duplicate_images=media.duplicate_images, images_over_limit=media.images_over_limit)
    features["cut"] = cut
    for modality in ("audio", "images"):
        bad = int((~np.isfinite(features[modality])).sum())
        if bad:
            raise RecordError(modality, f"{bad} {modality} feature values are NaN or infinite")
    sizes = {"lyric lines": len(features["lyrics_text"]), "comment nodes": len(features["comments_text"]),
             "audio windows": len(features["audio"]), "images": len(features["images"])}
    if not any(sizes.values()):
        raise RecordError("record", "no node in any modality (" + ", ".join(f"0 {name}" for name in sizes) + ")")
    problem = _features_problem(features, state["audio"].n_mfcc, state["image"].dim)
    if problem is not None:  # a bug, not bad data; said rather than written into the shards
        raise RecordError("record", f"extracted features are malformed: {problem}")
    return features


def _duplicate_media(kept: list[tuple[RawRecord, dict]]) -> tuple[list[list[str]], np.ndarray]:
    """Groups of ids whose media are byte-identical, and a group index per kept record (for the folds).

    Two songs are the same recording when their audio files are byte-identical, or, for songs
    without audio, when their sets of images are; text alone does not group. Such songs stay in one
    fold, so one recording cannot sit in train and in test.
    """
    first_of: dict[tuple, int] = {}
    group_of = np.arange(len(kept))
    members: dict[int, list[str]] = {}
    for position, (record, features) in enumerate(kept):
        digests = features["media_digests"]
        signature = ("audio", digests["audio"]) if digests["audio"] else \
            ("images", tuple(sorted(digests["images"]))) if digests["images"] else None
        if signature is None:
            continue
        if signature in first_of:
            group_of[position] = first_of[signature]
            members[first_of[signature]].append(record.id)
        else:
            first_of[signature] = position
            members[position] = [record.id]
    groups = [ids for ids in members.values() if len(ids) > 1]
    return groups, group_of


def _build_init_args(options: BuildOptions, image: ImageSettings, cache_dir: Path) -> tuple:
    return _worker_init_args(options.raw_dir, cache_dir, options.audio, image, options.max_comment_chars,
                             options.limits)


def _run_extraction(records: list[RawRecord], options: BuildOptions, image: ImageSettings, cache_dir: Path,
                    ray_session=None, pool: WorkerPool | None = None):
    """Pass 1's extraction on the chosen engine: local worker processes (``pool``, started ahead by the
    build, or in this process), or Ray tasks (nemu.ray_engine)."""
    bar = dict(total=len(records), unit="song", disable=not options.progress, file=sys.stderr)
    if ray_session is not None:
        from nemu.ray_engine import ray_extraction

        yield from tqdm(ray_extraction(records, _build_init_args(options, image, cache_dir), ray_session),
                        desc="extracting features (Ray)", **bar)
    elif pool is not None:
        yield from tqdm(pool.extract(records), desc="extracting features", **bar)
    else:
        yield from extract_records(records, options.raw_dir, audio=options.audio, image=image,
                                   max_comment_chars=options.max_comment_chars, limits=options.limits,
                                   workers=options.workers, cache_dir=cache_dir, progress=options.progress)


def _worker_init_args(raw_dir: Path, cache_dir: Path | None, audio: AudioSettings, image: ImageSettings,
                      max_comment_chars: int, limits: RecordLimits) -> tuple:
    """_init_worker's arguments, built in this one place for every engine."""
    return (str(raw_dir), str(cache_dir) if cache_dir is not None else None, audio, image, max_comment_chars,
            limits)


def extract_records(records: list[RawRecord], raw_dir: Path, *, audio: AudioSettings, image: ImageSettings,
                    max_comment_chars: int, limits: RecordLimits = RecordLimits(), workers: int = 1,
                    cache_dir: Path | None = None, progress: bool = False, encoder: ImageEncoder | None = None):
    """extract_record's results for ``records`` (media relative to ``raw_dir``), in ``workers`` processes.

    The build's per-record stage, callable on its own (``nemu.featurize`` extracts new songs with a built
    dataset's settings through it): yields ("ok", record, features, from_cache) or ("quarantined", record,
    Quarantined, False), in input order with one worker, in the order they finish with several.
    ``cache_dir`` None reads and writes no feature cache. ``encoder``: an ImageEncoder of ``image`` already
    loaded, used by in-process extraction (``workers`` <= 1), so a caller extracting many small batches loads
    the model once.
    """
    init_args = _worker_init_args(raw_dir, cache_dir, audio, image, max_comment_chars, limits)
    bar = dict(total=len(records), desc="extracting features", unit="song", disable=not progress,
               file=sys.stderr)
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        _init_worker(*init_args)
        if encoder is not None and encoder.settings == image:
            _WORKER["encoder"] = encoder
        try:
            yield from tqdm(map(extract_record, records), **bar)
        finally:
            torch.set_num_threads(threads)
            _WORKER.pop("blas_limits").restore_original_limits()
        return
    yield from tqdm(_parallel_extraction(records, workers, init_args), **bar)


KILL_WORKER_ENV = "NEMU_TEST_KILL_WORKER"
TASK_LOG_ENV = "NEMU_TEST_TASK_LOG"
WORKER_ATTEMPTS = 2  # a record whose worker dies is tried once more, then quarantined


def _worker_test_hook(record_id: str, task: str) -> None:
    """Test hooks, inert when unset (tests/test_build_integrity.py, tests/test_workers.py).
    NEMU_TEST_TASK_LOG=FILE: each process appends "TASK ID" to FILE as it starts a record, TASK being
    "text-and-audio" (the text-and-audio process), "images" (a worker given the record's text and audio
    part) or "whole". NEMU_TEST_KILL_WORKER=ID makes the process given record ID SIGKILL itself, as the OOM
    killer would; ID@FLAG does it only while the file FLAG does not exist (creating it), i.e. once; several
    such entries are separated by commas."""
    log = os.environ.get(TASK_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{task} {record_id}\n")
    for wanted in filter(None, os.environ.get(KILL_WORKER_ENV, "").split(",")):
        target, _, flag = wanted.partition("@")
        if record_id != target:
            continue
        if flag:
            try:
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


WARM_UP_PARTS = ("images", "text", "audio")


def _warm_up_steps(parts: tuple[str, ...] = WARM_UP_PARTS):
    """What a worker's first record would otherwise pay for, one step at a time, for the given ``parts`` of
    a record: the image encoder and one forward pass on a generated image ("images"), the tokenizer's
    dictionary ("text"), one MFCC of generated audio with the lazy imports of librosa, scipy and the decoders
    behind it ("audio"). Nothing of it reaches any record's features."""
    import tempfile

    if "images" in parts and _WORKER["encoder"] is None:
        _WORKER["encoder"] = ImageEncoder(_WORKER["image"])
        yield
    if "text" in parts:
        tokenize("预热")  # the tokenizer's own dictionary (jieba.initialize would load the global one's)
        yield
    with tempfile.TemporaryDirectory(prefix="nemu-warm-up-") as folder:
        rng = np.random.default_rng(0)
        if "images" in parts:
            from PIL import Image

            png = Path(folder) / "warm-up.png"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
            _WORKER["encoder"].encode([png])
            yield
        if "audio" in parts:
            import soundfile

            wav = Path(folder) / "warm-up.wav"
            soundfile.write(wav, (0.1 * rng.standard_normal(_WORKER["audio"].sample_rate)).astype(np.float32),
                            _WORKER["audio"].sample_rate)
            audio_nodes(wav, _WORKER["audio"])
    yield


def warm_up_worker_template() -> None:
    """Run once in the fork server that local workers are forked from (nemu.worker_template): the imports and
    lazy initialisation of image extraction, whatever the build's settings, so each forked worker starts warm
    for images. Text and audio (jieba, librosa with scipy.signal: ~2 s more) are not preloaded: a build's
    text-and-audio process (``_start_text_and_audio``) extracts them, on the core left idle while this runs,
    and a worker given a whole record imports them then.

    Torch and BLAS are held to one thread before any kernel runs, so the server never starts a thread pool
    that a forked child would inherit half-copied. The settings-specific part (the build's image encoder) is
    each worker's own warm-up. Best effort: a failure here only means workers pay for it themselves, and any
    real error is met again, and reported, by the record that needs the same thing.
    """
    try:  # the fork server dies of any exception that escapes its preload, and then no worker starts
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)
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


def _worker_main(connection, init_args: tuple, environment: dict | None = None, text_and_audio: bool = False,
                 warm_up: tuple[str, ...] = WARM_UP_PARTS) -> None:
    """One extraction process: says "ready" once initialised, warms up the ``warm_up`` parts while no task has
    come, then answers tasks until None: (index, record, text and audio part or None) with extract_record's
    result, or, for the text-and-audio process (``text_and_audio``: no torch), (index, record) with
    extract_text_and_audio's. ``environment``: the build's os.environ when the worker was started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the build stops us
    if environment is not None and dict(os.environ) != environment:
        import tempfile

        os.environ.clear()
        os.environ.update(environment)
        tempfile.tempdir = None  # chosen again from this environment's TMPDIR
    _init_worker(*init_args, images=not text_and_audio)
    # Tasks are received by a thread of their own, so the pipe is always drained: the build never blocks
    # sending a large record (megabytes of comments) while this process blocks sending it a large result
    # (each waiting for the other to read: a deadlock seen with two workers on such records).
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_tasks, args=(connection, tasks), name="nemu-tasks", daemon=True).start()
    connection.send(("ready", None, None))
    steps = _warm_up_steps(warm_up)
    try:  # started before the build has read its records: the wait is spent on what the first record needs
        while tasks.empty() and next(steps, StopIteration) is not StopIteration:
            pass
    except Exception:  # only a head start: a failure (no space for its temporary files, say) is met again, and
        pass  # reported, by the record that needs the same thing
    while (task := tasks.get()) is not None:
        index, record, *part = task
        _worker_test_hook(record.id, "text-and-audio" if text_and_audio else "images" if part and part[0] else
                          "whole")
        try:
            result = extract_text_and_audio(record) if text_and_audio else extract_record(record, *part)
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
    and warms up what image extraction needs: each worker is then a fork of a warm process, so the ~4.5 CPU-s of
    start-up per process (torch, torchvision behind timm, the first kernels) are paid once per build process
    instead of once per worker, and a worker's exit is immediate (no interpreter teardown). The server is
    started clean by multiprocessing, never forked from the build, whose threads (torch's, a caller's) a
    child would inherit half-copied; it stays up for the build process's next builds. Where there is no fork server (Windows), spawn.
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


def _start_worker(init_args: tuple) -> _Worker:
    context = _worker_context()
    # The environment of now, not of the moment the fork server started (a caller, or a test, may have set
    # variables since): spawn would pass it, so this does too. A fork of the template warms up for images
    # only: the build's text-and-audio process does the rest of most records.
    warm_up = ("images",) if context.get_start_method() == "forkserver" else WARM_UP_PARTS
    return _launch(context, init_args, dict(os.environ), False, warm_up)


def _start_text_and_audio(init_args: tuple) -> _Worker:
    """The build's text-and-audio process: spawned, with only what records' text and audio need (jieba,
    librosa: ~1.5 s to start, against ~4.5 s for the template's torch and timm), it starts extracting that part
    of the records on the core left idle while the template warms up, and goes on beside the workers, which
    add the images (extract_record with the part); its ~15 % of the work keeps the workers on images, for
    which they are warm."""
    return _launch(multiprocessing.get_context("spawn"), init_args, None, True, ("text", "audio"),
                   text_and_audio=True)


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

    def start(self, init_args: tuple) -> None:
        self.count += 1
        thread = threading.Thread(target=self._start, args=(init_args,), name="nemu-worker-start", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _start(self, init_args: tuple) -> None:
        try:
            outcome = _start_worker(init_args)
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
            thread.join()
        workers = [outcome for outcome in self._finished if isinstance(outcome, _Worker)]
        self._finished.clear()
        self.wake.close()
        self._finished_signal.close()
        return workers


class WorkerPool:
    """Local extraction workers of one build, readied ahead of the work: ``WorkerPool(n, init_args)`` starts the
    fork server's warm-up (nemu.worker_template) or, where there is no fork server, spawns the n workers, while
    the caller reads and validates the records; ``extract(records)`` then runs ``_parallel_extraction``, which
    forks a worker only once a record is missing from the cache. ``close()`` stops any worker not handed over
    (also on error)."""

    def __init__(self, workers: int, init_args: tuple):
        self.count, self.init_args = workers, init_args
        self.workers: list[_Worker] = []
        if _forks_from_template():
            from multiprocessing import forkserver

            forkserver.ensure_running()  # returns at once; forking a worker waits until the server is warm
        else:
            self.workers = [_start_worker(init_args) for _ in range(workers)]

    def extract(self, records: list[RawRecord]):
        started, self.workers = self.workers, []
        return _parallel_extraction(records, self.count, self.init_args, started)

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


def _parallel_extraction(records: list[RawRecord], workers: int, init_args: tuple, started: list | None = None):
    """extract_record's results from ``workers`` worker processes, in the order they finish.

    Each record is first looked up in the cache by this process (``_without_extraction``); only the records
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
    lookup_state = _settings_state(*init_args)
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
                result = _without_extraction(records[index], lookup_state)[0]
                if result is None:
                    pending.append(index)
                else:
                    remaining -= 1
                    yield result
            if text_and_audio_wanted and pending:
                text_and_audio_wanted = False
                pool.append(_start_text_and_audio(init_args))
            full = [w for w in pool if not w.text_and_audio]
            text_audio = next((w for w in pool if w.text_and_audio), None)
            needed = min(workers, len(pending) + len(with_part) + sum(bool(w.tasks) for w in full)
                         + (len(text_audio.tasks) if text_audio else 0))
            for _ in range(needed - len(full) - starts.count):
                starts.start(init_args)
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


# ----------------------------------------------------------------------------------------------
# Assembling the dataset


def _word_vectors(options: BuildOptions, corpus: _TokenCorpus, out_dir: Path):
    """(KeyedVectors, manifest description) from --word-vectors or trained on the corpus (non-empty token lists
    of the kept songs in id order, lyrics before comments)."""
    if options.word_vectors is not None:
        vectors = load_word_vectors(options.word_vectors, options.word_vectors_format)
        return vectors, {"source": "file", "file": Path(options.word_vectors).name, "dim": vectors.vector_size,
                         "sha256": sha256_file(options.word_vectors), "vocabulary": len(vectors.key_to_index)}
    if not corpus.sentences:
        raise BuildError("no lyric or comment tokens to train word vectors on; pass --word-vectors PATH")
    vectors = train_word_vectors(corpus, WORD_VECTOR_DIM, options.seed)
    target = out_dir / TRAINED_VECTORS_FILE  # the build's staging folder: published with the shards
    try:
        vectors.save_word2vec_format(str(target), binary=True)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
    return vectors, {"source": "trained on this corpus (gensim Word2Vec skip-gram, window 5, 10 epochs, one "
                               "worker, fixed seed)", "file": TRAINED_VECTORS_FILE, "format": "word2vec-binary",
                     "dim": vectors.vector_size, "vocabulary": len(vectors.key_to_index),
                     "sha256": sha256_file(target)}


def _modalities(text_dim: int, audio: AudioSettings, image: ImageSettings) -> list[Modality]:
    return [
        Modality("lyrics", text_dim, "lyric line (mean of its jieba tokens' word vectors)", sequential=True),
        Modality("comments", text_dim, "comment or comment sentence (mean word vector)", sequential=False),
        Modality("audio", audio.n_mfcc, f"{audio.window_seconds:g} s window of mean-pooled MFCCs", sequential=True),
        Modality("images", image.dim, f"one image ({image.encoder} pooled feature)", sequential=False),
    ]


EXTRA_FIELDS = [
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("lyrics_text", pa.list_(pa.string())),
    pa.field("lyrics_tokens", pa.list_(pa.list_(pa.string()))),
    pa.field("comments_text", pa.list_(pa.string())),
    pa.field("comments_tokens", pa.list_(pa.list_(pa.string()))),
    pa.field("audio_path", pa.string()),
    pa.field("image_paths", pa.list_(pa.string())),
]


def _nodes_array(matrices: list[np.ndarray], dim: int) -> pa.Array:
    lengths = np.array([len(m) for m in matrices], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([m.reshape(-1, dim) for m in matrices]).astype(np.float32).ravel() if matrices else \
        np.zeros(0, np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def _rows_table(rows: list[dict], schema: pa.Schema, modalities: list[Modality]) -> pa.Table:
    columns = {}
    for f in schema:
        if f.name in {m.name for m in modalities}:
            dim = next(m.dim for m in modalities if m.name == f.name)
            columns[f.name] = _nodes_array([r[f.name] for r in rows], dim)
        else:
            columns[f.name] = pa.array([r[f.name] for r in rows], f.type)
    return pa.Table.from_pydict(columns, schema=schema)


def _os_error_message(exc: OSError, out_dir: Path) -> str:
    """One line naming the path: "OUT/.builds/staging-…/train/train-00000-of-00001.parquet: No space left on
    device" (OUT itself when the library that failed did not say which file)."""
    if exc.filename is None:
        return str(exc) if exc.errno is None else f"{out_dir}: {exc.strerror or exc}"
    paths = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    return f"{paths}: {exc.strerror or exc}"


def build(options: BuildOptions) -> BuildSummary:
    """Build the dataset described by ``options`` into OUT; see the module docstring.

    OUT is always one whole dataset (nemu.publish): the build holds OUT's lock, writes into a staging folder
    and publishes shards, manifest, card and report in one atomic swap, so a failure or a kill at any moment
    leaves the previous dataset (or the new one). Faults of the environment (a read-only or full disk,
    permission denied) and a second build into the same OUT raise BuildError with one line naming the path.
    """
    options.raw_dir, options.out_dir = Path(options.raw_dir), Path(options.out_dir)
    if options.engine not in ENGINES:
        raise BuildError(f"unknown engine {options.engine!r}; choose one of {', '.join(ENGINES)}")
    if options.engine == "ray":
        from nemu.ray_engine import RayUnavailable, import_ray

        try:
            import_ray()
        except RayUnavailable as exc:
            raise BuildError(str(exc)) from None
    try:
        with contextlib.ExitStack() as stack:
            publisher = stack.enter_context(DatasetPublisher(options.out_dir))  # the lock first: fail at once
            ray_session = None
            if options.engine == "ray":
                from nemu.ray_engine import RaySession, RayUnavailable

                try:
                    ray_session = stack.enter_context(RaySession(options.ray_address, options.workers,
                                                                 options.ray_gpu))
                except RayUnavailable as exc:
                    raise BuildError(str(exc)) from None
            return _build_staged(options, publisher, ray_session)
    except (FolderLocked, FolderConflict) as exc:
        raise BuildError(str(exc)) from exc
    except OSError as exc:
        raise BuildError(_os_error_message(exc, options.out_dir)) from exc


# The build streams: its memory does not grow with the number of songs' features. Pass 1 extracts every
# record (features go to the per-record cache, which the build always has) and keeps per kept song only what
# the whole dataset needs before any shard can be written: its id, labels, cache key and media digests in
# memory, its tokens, limit counts and duration in a spool file. Word vectors, folds, Table 1 and the counts
# that every shard's metadata carries come from those; pass 2 then reads each song's features back from the
# cache, embeds its text and writes the shards one at a time.
SPOOL_FILE = ".spool-songs.jsonl"  # in the staging folder; removed before publishing
CORPUS_FILE = ".spool-corpus.jsonl"  # the word-vector corpus in shard order, one token list per line


@dataclass
class _KeptSong:
    """What the build holds of one kept record between its two passes (its features stay in the cache)."""

    record: RawRecord  # without lyrics and comments once extracted (their nodes are in the cache entry)
    cache_path: Path
    media_digests: dict
    spool_offset: int
    needs_record: bool = False  # the cache slot could not take the features: pass 2 extracts it again


class _TokenCorpus:
    """The lyric and comment token lists of the kept songs, in id order, read from a file on each pass.

    gensim's Word2Vec iterates its corpus once for the vocabulary and once per epoch; a list of every token
    would grow with the corpus, this does not."""

    def __init__(self, path: Path, sentences: int):
        self.path, self.sentences = path, sentences

    def __iter__(self):
        with self.path.open("rb") as handle:
            for line in handle:
                yield json.loads(line)


def _cache_path_of(record: RawRecord, features: dict, fingerprint: dict, cache_dir: Path) -> Path:
    """The cache entry extract_record used for ``record`` (its key from the media digests it returned)."""
    digests = features["media_digests"]
    media = _Media(audio_digest=digests["audio"], images=[(0, "", Path(), digest) for digest in digests["images"]])
    return _cache_path(cache_dir, _record_key(record, media, fingerprint))


def _extract_pass(records: list[RawRecord], options: BuildOptions, image: ImageSettings, cache_dir: Path,
                  spool, ray_session=None, pool=None) -> tuple[list[_KeptSong], list[Quarantined], int, int,
                                                              float | None]:
    """Pass 1: extract every record; per kept song its small facts in memory and its spool line. Also returns
    when (time.perf_counter) the first record's result came, None when there were no records."""
    fingerprint = _settings_fingerprint(options.audio, image, options.max_comment_chars, options.limits)
    kept: list[_KeptSong] = []
    quarantined: list[Quarantined] = []
    extracted = from_cache = 0
    first_record_at = None
    for status, record, result, cached in _run_extraction(records, options, image, cache_dir, ray_session, pool):
        if first_record_at is None:
            first_record_at = time.perf_counter()
        if status != "ok":
            quarantined.append(result)
            continue
        from_cache += cached
        extracted += not cached
        offset = spool.tell()
        line = {"tokens": {m: result[f"{m}_tokens"] for m in TEXT_MODALITIES}, "cut": result["cut"],
                "duration": result["duration_seconds"]}
        spool.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
        path = _cache_path_of(record, result, fingerprint, cache_dir)
        needs_record = not path.is_file()  # a directory or link in the slot is left alone by extract_record
        kept.append(_KeptSong(record if needs_record else replace(record, lyrics="", comments=()), path,
                              result["media_digests"], offset, needs_record))
    return kept, quarantined, extracted, from_cache, first_record_at


def _spool_line(spool, offset: int) -> dict:
    spool.seek(offset)
    return json.loads(spool.readline())


def _song_features(song: _KeptSong, options: BuildOptions, image: ImageSettings, cache_dir: Path) -> dict:
    """Pass 2: a kept song's features from the cache entry pass 1 wrote (or extracted again where it could not)."""
    if not song.needs_record:
        features = _load_features(song.cache_path, options.audio.n_mfcc, image.dim)
        if features is not None and features["media_digests"] == song.media_digests:
            return features
        raise BuildError(f"{song.cache_path}: the feature cache entry of record {song.record.id!r} (line "
                         f"{song.record.line}) changed or vanished during the build; build again")
    results = list(extract_records([song.record], options.raw_dir, audio=options.audio, image=image,
                                   max_comment_chars=options.max_comment_chars, limits=options.limits,
                                   workers=1, cache_dir=cache_dir))
    status, _, features, _ = results[0]
    if status != "ok" or features["media_digests"] != song.media_digests:
        raise BuildError(f"record {song.record.id!r} (line {song.record.line}): its media changed during the "
                         f"build; build again")
    return features


def _build_staged(options: BuildOptions, publisher: DatasetPublisher, ray_session=None) -> BuildSummary:
    staging = publisher.path  # everything the build writes goes here until publisher.commit()
    cache_dir = Path(options.cache_dir) if options.cache_dir else options.out_dir / ".cache"
    image = resolve_image_settings(options.image_encoder, options.image_weights)
    image_settings = image.to_dict()
    if ray_session is not None and ray_session.use_gpu:  # GPU features round differently: cached and said apart
        cache_dir, image_settings = cache_dir / "cuda", image_settings | {"device": "cuda"}
    started = time.perf_counter()

    with (staging / SPOOL_FILE).open("w+b") as spool:
        # Local workers start now, so their imports and warm-up overlap with reading and validating the records.
        pool = WorkerPool(options.workers, _build_init_args(options, image, cache_dir)) \
            if ray_session is None and options.workers > 1 else None
        try:
            read: ReadResult = read_records(options.raw_dir)
            input_count, without_emotion_tag = read.input_count, len(read.without_emotion)
            kept, extraction_quarantined, extracted, from_cache, first_record_at = _extract_pass(
                read.records, options, image, cache_dir, spool, ray_session, pool)
        finally:
            if pool is not None:
                pool.close()
        extraction_seconds = time.perf_counter() - started
        first_record_seconds = first_record_at - started if first_record_at is not None else None
        quarantined = read.quarantined + extraction_quarantined
        del read  # the records' texts: kept songs hold what pass 2 needs
        quarantined.sort(key=lambda q: q.line)
        report = "".join(json.dumps(q.to_json(), ensure_ascii=False) + "\n" for q in quarantined)
        atomic_write_bytes(staging / QUARANTINE_FILE, report.encode("utf-8"))
        if options.strict and quarantined:
            first = quarantined[0]
            spool.close()
            (staging / SPOOL_FILE).unlink()
            rejected = publisher.reject()  # the previous dataset stays as it was, report and all
            raise BuildError(f"--strict: {len(quarantined)} record(s) quarantined, see {rejected / QUARANTINE_FILE}; "
                             f"first: line {first.line} id {first.id!r} field {first.field}: {first.reason}")

        kept.sort(key=lambda song: song.record.id)  # shard content does not depend on line order
        # One sequential pass over the spool in id order: the word-vector corpus, the limit counts (summed in
        # id order, as they always were), durations and sentence lengths for Table 1.
        cut_totals = dict.fromkeys(CUT_COUNTS, 0)
        durations = np.full(len(kept), np.nan, dtype=np.float32)  # the shards' float32 duration column
        words_of = np.zeros(len(kept), dtype=np.int64)
        sentences_of = np.zeros(len(kept), dtype=np.int64)
        empty_nodes = sentences = 0
        with (staging / CORPUS_FILE).open("wb") as corpus_file:
            for position, song in enumerate(kept):
                line = _spool_line(spool, song.spool_offset)
                for name in CUT_COUNTS:
                    cut_totals[name] += line["cut"][name]
                if line["duration"] is not None:
                    durations[position] = line["duration"]
                for modality in TEXT_MODALITIES:
                    for tokens in line["tokens"][modality]:
                        words_of[position] += len(tokens)
                        sentences_of[position] += 1
                        if tokens:
                            corpus_file.write(json.dumps(tokens, ensure_ascii=False).encode("utf-8") + b"\n")
                            sentences += 1
                        else:
                            empty_nodes += 1
    (staging / SPOOL_FILE).unlink()
    corpus = _TokenCorpus(staging / CORPUS_FILE, sentences)
    vectors, vectors_info = _word_vectors(options, corpus, staging)
    # nodes without any in-vocabulary token get zeros (embed_nodes); every shard's metadata counts them
    nodes_without_vectors = empty_nodes + sum(1 for tokens in corpus
                                              if not any(t in vectors.key_to_index for t in tokens))
    (staging / CORPUS_FILE).unlink()

    label_matrix = np.array([[name in song.record.labels for name in nemu_labels.LABEL_NAMES] for song in kept],
                            dtype=np.int8).reshape(len(kept), len(nemu_labels.LABEL_NAMES))
    duplicate_media, media_group = _duplicate_media([(song.record, {"media_digests": song.media_digests})
                                                     for song in kept])  # byte-identical media: one song
    folds = assign_folds(label_matrix, options.seed, groups=media_group)
    split_of = [split_of_fold(int(fold)) for fold in folds]
    members = {split: [p for p in range(len(kept)) if split_of[p] == split] for split in SPLITS}
    statistics = Table1Statistics(nemu_labels.LABEL_NAMES)
    for split, positions in members.items():  # the order of the shards' rows
        statistics.add(split, label_matrix[positions], durations[positions], int(words_of[positions].sum()),
                       int(sentences_of[positions].sum()))

    modalities = _modalities(vectors.vector_size, options.audio, image)
    counts = {"input": input_count, "kept": len(kept), "quarantined": len(quarantined),
              "without_emotion_tag": without_emotion_tag, "text_nodes_without_word_vectors": nodes_without_vectors}
    assert counts["input"] == counts["kept"] + counts["quarantined"] + counts["without_emotion_tag"]
    facts = {
        "format_version": FORMAT_VERSION,
        "dataset": "NEMu",
        "labels": list(nemu_labels.LABEL_NAMES),
        "label_names_zh": list(nemu_labels.CHINESE_NAMES),
        "modalities": [m.to_dict() for m in modalities],
        "text_columns": {m: {"text": f"{m}_text", "tokens": f"{m}_tokens"} for m in TEXT_MODALITIES},
        "settings": {
            "seed": options.seed,
            "audio": options.audio.to_dict() | {"library": "librosa"},
            "image": image_settings,
            "text": {"tokenizer": "jieba (accurate mode, punctuation dropped)", "node_feature": "mean word vector",
                     "max_comment_chars": options.max_comment_chars, "word_vectors": vectors_info},
            "splits": {"n_folds": N_FOLDS, "method": "iterative stratification (iterative-stratification "
                       "MultilabelStratifiedKFold, shuffled with the seed)",
                       "rule": "test = fold 0, valid = fold 1, train = folds 2-9 (rotation 0 of 10-fold CV)"},
        },
        "counts": counts,
        "limits": {"per_record": options.limits.to_dict() | {"max_audio_seconds": options.audio.max_seconds,
                                                              "max_audio_nodes": options.audio.max_nodes},
                   "cut": {name: round(total, 3) for name, total in cut_totals.items()}},
        "duplicate_media": {"rule": "same audio bytes, or for songs without audio the same image bytes; "
                                    "each group is kept in one fold", "groups": duplicate_media},
        "statistics": statistics.result(),
    }
    base_schema = build_schema(len(nemu_labels.LABEL_NAMES), modalities, EXTRA_FIELDS)
    schema = with_manifest(base_schema, facts)

    shards: dict[str, list[dict]] = {}
    bar = tqdm(total=len(kept), desc="writing shards", unit="song", disable=not options.progress, file=sys.stderr)
    with bar:
        for split, positions in members.items():
            count = shard_count(len(positions), options.rows_per_shard)
            shards[split] = []
            for index in range(count):
                in_shard = positions[index * options.rows_per_shard:(index + 1) * options.rows_per_shard]

                def row_groups(in_shard=in_shard):  # one row group of features at a time
                    for start in range(0, max(1, len(in_shard)), options.row_group_rows):
                        rows = []
                        for position in in_shard[start:start + options.row_group_rows]:
                            song = kept[position]
                            features = _song_features(song, options, image, cache_dir)
                            rows.append(_row(song.record, features, label_matrix[position], int(folds[position]),
                                             vectors))
                            bar.update()
                        yield _rows_table(rows, base_schema, modalities).cast(schema)

                shards[split].append(write_shard(row_groups(), staging, split, index, count, options.row_group_rows))
    manifest = facts | {"shards": shards}
    write_dataset_card(staging, manifest, schema)  # README.md, the card datasets.load_dataset reads
    write_manifest(staging, manifest)
    publisher.commit()
    return BuildSummary(input=input_count, kept=len(kept), quarantined=len(quarantined),
                        without_emotion_tag=without_emotion_tag, extracted=extracted, from_cache=from_cache,
                        splits={s: len(p) for s, p in members.items()}, out_dir=options.out_dir,
                        cut_by_limits=facts["limits"]["cut"], duplicate_media=duplicate_media,
                        extraction_seconds=extraction_seconds, first_record_seconds=first_record_seconds)


def _row(record: RawRecord, features: dict, label_row: np.ndarray, fold: int, vectors) -> dict:
    """One shard row: the record's fields, its labels and fold, its features with text nodes embedded."""
    row = {"id": record.id, "labels": list(record.labels),
           "label_ids": np.flatnonzero(label_row).tolist(), "label_vector": label_row.tolist(),
           "fold": fold, "title": record.title, "artist": record.artist, "tags": list(record.tags),
           "audio": features["audio"], "images": features["images"],
           "duration_seconds": features["duration_seconds"], "audio_path": record.audio,
           "image_paths": list(features["image_paths"])}
    for modality in TEXT_MODALITIES:
        row[f"{modality}_text"] = features[f"{modality}_text"]
        row[f"{modality}_tokens"] = features[f"{modality}_tokens"]
        row[modality], _ = embed_nodes(features[f"{modality}_tokens"], vectors)
    return row
