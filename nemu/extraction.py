"""One record's features: validation of its media, text nodes and tokens, MFCC windows, CNN image features,
and the per-record feature cache.

``extract_record(record, settings)`` is the whole per-record stage, with everything that decides a feature in
one frozen ``ExtractionSettings``; the build's worker processes (nemu.workers), its Ray tasks
(nemu.ray_engine) and the featurisation of new songs (nemu.featurize) all call it, so their features are the
same bytes. A record's failure is that record's: media that cannot be resolved, opened or decoded, non-finite
features or no node in any modality quarantine it with a specific reason. ``RecordLimits`` (and
AudioSettings' ``max_seconds``/``max_nodes``) bound what one record may cost; what they cut is counted.

Each result is cached under a key of the record's content, the settings and the bytes of its media files
(``CACHE_VERSION`` changes every key when the extraction code changes what it produces), so a killed build
redoes only what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from nemu.audio import AudioDecodeError, AudioSettings, audio_nodes
from nemu.atomic import atomic_write_bytes
from nemu.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, ImageEncoder, ImageSettings
from nemu.records import (
    AUDIO_SUFFIXES, IMAGE_SUFFIXES, Quarantined, RawRecord, RecordError, read_media_bytes_digest, resolve_media_path,
)
from nemu.shards import canonical_json
from nemu.text import clean_lyrics, comment_nodes, tokenize

CACHE_VERSION = 3  # bump when extraction code changes what it produces
TEXT_MODALITIES = ("lyrics", "comments")


class BuildError(RuntimeError):
    """The build, or an extraction of records outside it, cannot go on; the message says why in one line."""


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


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything that decides a record's features, and where its media and the feature cache are."""

    raw_dir: Path  # media paths of the records are relative to it
    audio: AudioSettings
    image: ImageSettings
    max_comment_chars: int = 64
    limits: RecordLimits = field(default_factory=RecordLimits)
    cache_dir: Path | None = None  # None: no feature cache is read or written

    def __post_init__(self):
        object.__setattr__(self, "raw_dir", Path(self.raw_dir))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def fingerprint(self) -> dict:
        """The settings' part of every cache key (not the folders: they do not change the features)."""
        return {"cache_version": CACHE_VERSION, "audio": self.audio.to_dict(), "image": self.image.to_dict(),
                "max_comment_chars": self.max_comment_chars, "limits": self.limits.to_dict(), "tokenizer": "jieba"}


# ----------------------------------------------------------------------------------------------
# This process's heavy objects and thread limits

_encoder: ImageEncoder | None = None  # loading a CNN takes seconds: one per process, kept between records


def image_encoder(image: ImageSettings) -> ImageEncoder:
    """This process's encoder for ``image``, loaded on first use and kept (a new one when the settings differ)."""
    global _encoder
    if _encoder is None or _encoder.settings != image:
        _encoder = ImageEncoder(image)
    return _encoder


def keep_encoder(encoder: ImageEncoder) -> None:
    """Use ``encoder`` (loaded by the caller, or moved to a GPU) for its settings in this process from now on."""
    global _encoder
    _encoder = encoder


def limit_threads(torch_threads: bool = True) -> Callable[[], None]:
    """One thread for torch (``torch_threads``) and BLAS in this process; returns a function that restores them.

    Parallelism comes from the processes, and single-threaded kernels make the features bit-identical whatever
    the number of processes: librosa's mel filterbank and DCT are numpy matrix products whose float32 sums
    depend on OpenBLAS's thread count."""
    restore_torch = None
    if torch_threads:
        import torch  # here, not at the top: the text-and-audio process (no torch_threads) never imports it

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        restore_torch = lambda: torch.set_num_threads(threads)  # noqa: E731
    blas = threadpool_limits(1)

    def restore() -> None:
        if restore_torch is not None:
            restore_torch()
        blas.restore_original_limits()

    return restore


# ----------------------------------------------------------------------------------------------
# Media and the feature cache


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


def cache_path_of(record: RawRecord, features: dict, settings: ExtractionSettings) -> Path:
    """The cache entry extract_record used for ``record`` (its key from the media digests it returned)."""
    digests = features["media_digests"]
    media = _Media(audio_digest=digests["audio"], images=[(0, "", Path(), digest) for digest in digests["images"]])
    return _cache_path(settings.cache_dir, _record_key(record, media, settings.fingerprint()))


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
    for modality in TEXT_MODALITIES:
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


def load_features(path: Path, audio_dim: int | None = None, image_dim: int | None = None) -> dict | None:
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


# ----------------------------------------------------------------------------------------------
# The per-record stage


def _quarantine(record: RawRecord, field_name: str, reason: str):
    return "quarantined", record, Quarantined(record.id, record.line, field_name, reason), False


def _look_up(record: RawRecord, settings: ExtractionSettings):
    """(result, media, cache path): extract_record's result where the record needs no extraction (its features
    are in the cache, or its media cannot be resolved), else (None, media, cache path or None without a
    cache)."""
    try:
        media = _resolve_media(record, settings.raw_dir, settings.limits.max_images)
    except RecordError as exc:
        return _quarantine(record, exc.field, exc.reason), None, None
    path = _cache_path(settings.cache_dir, _record_key(record, media, settings.fingerprint())) \
        if settings.cache_dir is not None else None
    if path is not None and path.is_file():
        cached = load_features(path, settings.audio.n_mfcc, settings.image.dim)
        if cached is not None:
            return ("ok", record, cached, True), media, path
    return None, media, path


def look_up(record: RawRecord, settings: ExtractionSettings):
    """extract_record's result where the record needs no extraction (a cache hit, or media that cannot be
    resolved), else None. Cheap (stat, hash the media, read one cache file): a scheduler answers such records
    itself, before any worker is involved."""
    return _look_up(record, settings)[0]


def extract_record(record: RawRecord, settings: ExtractionSettings, text_and_audio: tuple | None = None
                   ) -> tuple[str, RawRecord, dict | Quarantined, bool]:
    """("ok", record, features, from_cache) or ("quarantined", record, Quarantined, False).

    Every failure of this record's data is this record's: a media path that cannot be resolved,
    opened or read (with its specific OS reason), a decoder error of any type, non-finite features
    in any modality, or no node in any modality quarantine the record and the caller goes on. Only
    writing the cache entry (the output folder's problem, not the record's) can raise.
    ``text_and_audio``: (audio digest, features) from ``extract_text_and_audio`` in another process; used only
    while the audio file has the digest it was extracted from.
    """
    result, media, path = _look_up(record, settings)
    if result is not None:
        return result
    encoder = image_encoder(settings.image)  # loading the model is not this record's business: not caught
    try:
        if text_and_audio is None or text_and_audio[0] != media.audio_digest:
            text_and_audio = (media.audio_digest, _extract_text_and_audio(record, media, settings))
        features = _extract_features(record, media, settings, encoder, text_and_audio[1])
    except Exception as exc:
        return _extraction_failed(record, exc)
    # something else in the cache slot's place (a directory, a link) is left alone
    if path is not None and (not (path.exists() or path.is_symlink()) or path.is_file()):
        _save_features(path, features)
    return "ok", record, features, False


def extract_text_and_audio(record: RawRecord, settings: ExtractionSettings) -> tuple:
    """The part of extract_record before the images (needs no torch): ("part", audio digest, text and audio
    features) for extract_record(record, settings, (digest, features)) to finish, or extract_record's own final
    result where this part already decides it (a cache hit, media that cannot be resolved, text or audio that
    quarantine the record: extract_record meets those before the images too)."""
    result, media, _ = _look_up(record, settings)
    if result is not None:
        return result
    try:
        return "part", media.audio_digest, _extract_text_and_audio(record, media, settings)
    except Exception as exc:
        return _extraction_failed(record, exc)


def _extraction_failed(record: RawRecord, exc: Exception):
    """The quarantine result of a record whose extraction raised ``exc``: a library failing on this record's data
    (MemoryError included) is the record's."""
    if isinstance(exc, RecordError):
        return _quarantine(record, exc.field, exc.reason)
    return _quarantine(record, "record", f"feature extraction failed: {type(exc).__name__}: {str(exc)[:300]}")


def _extract_text(record: RawRecord, max_comment_chars: int, limits: RecordLimits) -> dict:
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


def _extract_text_and_audio(record: RawRecord, media: _Media, settings: ExtractionSettings) -> dict:
    """The text and audio nodes (what needs no image encoder); RecordError names the field that fails."""
    try:
        features = _extract_text(record, settings.max_comment_chars, settings.limits)
    except Exception as exc:
        raise RecordError("lyrics/comments", f"text processing failed: {type(exc).__name__}: {exc}") from None
    cut = dict.fromkeys(CUT_COUNTS, 0) | features["cut"]
    audio = settings.audio
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


def _extract_features(record: RawRecord, media: _Media, settings: ExtractionSettings, encoder: ImageEncoder,
                      text_and_audio: dict) -> dict:
    """Every modality's nodes, validated: ``text_and_audio`` (_extract_text_and_audio's) and the images;
    RecordError names the field (modality or media file) that fails."""
    features = dict(text_and_audio)
    cut = dict(features["cut"])
    try:
        features["images"] = encoder.encode([path for _, _, path, _ in media.images], settings.limits.max_image_pixels)
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
    problem = _features_problem(features, settings.audio.n_mfcc, settings.image.dim)
    if problem is not None:  # a bug, not bad data; said rather than written into the shards
        raise RecordError("record", f"extracted features are malformed: {problem}")
    return features
