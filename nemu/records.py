"""Reading and validating the raw NEMu folder (``RAW/records.jsonl`` plus media files).

The raw format (also documented in the README and DATASET_CARD.md): one JSON object per line with
``id`` (non-empty string, unique after Unicode NFKC normalisation and case folding: see ``id_key``), ``title``, ``artist`` (strings), ``tags`` (list of strings),
``lyrics`` (LRC or plain text), ``comments`` (list of strings), ``audio`` (path relative to RAW, or
null/"" when the song has no audio) and ``images`` (list of paths relative to RAW).

Nothing is dropped silently: every input line ends up as exactly one of
kept sample, quarantined record (with line number, field and reason) or song without an emotion tag.
Checks that need only the JSON and the file system (encoding, syntax, types, duplicate ids, paths leaving
RAW, missing files and anything that is not a readable regular file) happen here; a file that exists but
cannot be decoded is caught during feature extraction.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nemu.labels import emotion_labels

RECORDS_FILE = "records.jsonl"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class RawRecord:
    """One song as read from records.jsonl, with its emotion labels resolved and paths checked."""

    id: str
    line: int
    title: str
    artist: str
    tags: tuple[str, ...]
    labels: tuple[str, ...]
    lyrics: str
    comments: tuple[str, ...]
    audio: str | None  # relative to RAW
    images: tuple[str, ...]  # relative to RAW


@dataclass(frozen=True)
class Quarantined:
    """A record that could not be used, and why. ``id`` is None when the line had no readable id."""

    id: str | None
    line: int
    field: str
    reason: str

    def to_json(self) -> dict:
        return {"id": self.id, "line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class ReadResult:
    records: list[RawRecord] = field(default_factory=list)  # with an emotion label (unless not required)
    quarantined: list[Quarantined] = field(default_factory=list)
    without_emotion: list[str] = field(default_factory=list)  # ids of valid songs without emotion tag
    input_count: int = 0  # non-blank lines


class RecordError(ValueError):
    """A raw record breaks the format; carries the field that does."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def _require_text(obj: dict, key: str, *, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise RecordError(key, f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise RecordError(key, f"{key!r} must be a string, got {type(value).__name__}")
    _require_utf8(value, key)
    return value


def _require_text_list(obj: dict, key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecordError(key, f"{key!r} must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordError(f"{key}[{i}]", f"{key}[{i}] must be a string, got {type(item).__name__}")
        _require_utf8(item, f"{key}[{i}]")
    return tuple(value)


def _require_utf8(text: str, field_name: str) -> None:
    # JSON escapes can smuggle lone surrogates (\ud800) that are not encodable text.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError(field_name, f"not valid UTF-8 text ({exc.reason} at position {exc.start})") from None


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
)


def _os_reason(exc: OSError) -> str:
    """A specific reason for an OS error on a media path: what went wrong, in words, with its errno name."""
    words = {
        errno.ENOENT: "not found", errno.ENOTDIR: "not found (a path component is not a folder)",
        errno.ELOOP: "symlink loop", errno.ENAMETOOLONG: "name too long for the file system",
        errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
        errno.EIO: "input/output error",
    }
    name = errno.errorcode.get(exc.errno, "OSError")
    return f"{words.get(exc.errno, exc.strerror or type(exc).__name__)} ({name})"


def resolve_media_path(raw_dir: Path, relative: str, field_name: str, suffixes: tuple[str, ...]) -> Path:
    """The absolute path of a readable regular media file under RAW; RecordError with a specific reason otherwise.

    Refused, each with its own reason: paths leaving RAW (absolute, ``..``, or a symlink pointing out),
    unknown file types, a NUL byte, a name too long for the file system, a symlink loop, a missing file,
    something that is not a regular file (a directory, a FIFO - never opened, so it cannot block the build -,
    a device or socket) and a file that cannot be read (permission denied).
    """
    if not relative.strip():
        raise RecordError(field_name, "empty path")
    if "\x00" in relative:
        raise RecordError(field_name, f"path {relative!r} contains a NUL byte")
    candidate = Path(relative)
    if candidate.is_absolute():
        raise RecordError(field_name, f"path {relative!r} leaves RAW (absolute paths are not allowed)")
    root = raw_dir.resolve()
    try:
        resolved = (root / candidate).resolve()  # follows symlinks, so a link pointing out is caught too
    except RuntimeError:  # pathlib reports a symlink loop met while resolving this way (Python 3.11)
        raise RecordError(field_name, f"file {relative!r}: symlink loop (ELOOP)") from None
    except OSError as exc:
        raise RecordError(field_name, f"file {relative!r}: {_os_reason(exc)}") from None
    if not resolved.is_relative_to(root):
        raise RecordError(field_name, f"path {relative!r} leaves RAW")
    if resolved.suffix.lower() not in suffixes:
        raise RecordError(field_name, f"path {relative!r} has unsupported type (expected {', '.join(suffixes)})")
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise RecordError(field_name, f"file {relative!r} not found") from None
    except OSError as exc:
        raise RecordError(field_name, f"file {relative!r}: {_os_reason(exc)}") from None
    for is_kind, kind in _FILE_KINDS:
        if is_kind(info.st_mode):
            raise RecordError(field_name, f"file {relative!r} is {kind}, not a regular file")
    if not stat.S_ISREG(info.st_mode):
        raise RecordError(field_name, f"file {relative!r} is not a regular file")
    if not os.access(resolved, os.R_OK):
        raise RecordError(field_name, f"file {relative!r}: permission denied (EACCES)")
    return resolved


def read_media_bytes_digest(path: Path, field_name: str, relative: str) -> str:
    """sha256 of a media file, opened without blocking and checked to be a regular file once open.

    The check on the open descriptor closes the gap between validation and extraction: a file swapped
    for a FIFO or a directory meanwhile is refused, not waited on. RecordError names the field.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise RecordError(field_name, f"file {relative!r}: cannot open: {_os_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise RecordError(field_name, f"file {relative!r} is not a regular file")
        digest = hashlib.sha256()
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError as exc:
        raise RecordError(field_name, f"file {relative!r}: cannot read: {_os_reason(exc)}") from None
    finally:
        os.close(descriptor)


def _shown(record_id: str) -> str:
    # Ids equal after normalisation often look identical on screen: the escaped form tells them apart.
    return repr(record_id) if record_id.isascii() else f"{record_id!r} ({ascii(record_id)})"


def id_key(record_id: str) -> str:
    """The form ids are compared in: NFKC-normalised (which includes NFC), case-folded, without invisible
    format characters (zero-width spaces and joiners, byte-order marks: Unicode category Cf) and outer whitespace.

    Two ids with the same key name the same song ("Ａ1", "a1", "A\u030a" and "\u00c5" style variants), so the
    second is a duplicate: kept apart they would put one song's content in two splits.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", record_id).casefold())
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf").strip()


def _parse_record(obj: object, line: int, raw_dir: Path) -> RawRecord:
    if not isinstance(obj, dict):
        raise RecordError("record", f"expected a JSON object, got {type(obj).__name__}")
    record_id = obj.get("id")
    if not isinstance(record_id, str) or not record_id.strip():
        raise RecordError("id", "missing or empty 'id' (a non-empty string is required)")
    _require_utf8(record_id, "id")
    tags = _require_text_list(obj, "tags")
    audio = obj.get("audio")
    if audio is not None and not isinstance(audio, str):
        raise RecordError("audio", f"'audio' must be a path string or null, got {type(audio).__name__}")
    images = _require_text_list(obj, "images")
    return RawRecord(
        id=record_id,
        line=line,
        title=_require_text(obj, "title", required=False),
        artist=_require_text(obj, "artist", required=False),
        tags=tags,
        labels=tuple(emotion_labels(list(tags))),
        lyrics=_require_text(obj, "lyrics", required=False),
        comments=_require_text_list(obj, "comments"),
        audio=audio or None,
        images=images,
    )


def check_media(record: RawRecord, raw_dir: Path) -> None:
    """Raise RecordError when a media path leaves RAW, has an unknown type or does not exist."""
    if record.audio is not None:
        resolve_media_path(raw_dir, record.audio, "audio", AUDIO_SUFFIXES)
    for i, image in enumerate(dict.fromkeys(record.images)):  # a path listed many times is checked once
        resolve_media_path(raw_dir, image, f"images[{record.images.index(image)}]", IMAGE_SUFFIXES)


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines of a file as (1-based line number, raw bytes)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def read_records(raw_dir: Path, *, require_labels: bool = True) -> ReadResult:
    """Parse and validate ``raw_dir/records.jsonl``; see the module docstring for the accounting.

    ``require_labels=False`` (prediction of new songs, ``nemu.featurize``) keeps valid records without an
    emotion tag as records, with their media checked, instead of counting them in ``without_emotion``.
    """
    raw_dir = Path(raw_dir)
    path = raw_dir / RECORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {RECORDS_FILE} in the raw folder {raw_dir}")
    return read_record_lines(iter_lines(path), raw_dir, require_labels=require_labels)


def read_record_lines(lines: Iterable[tuple[int, bytes]], raw_dir: Path, *, require_labels: bool = True
                      ) -> ReadResult:
    """``read_records`` on (line number, raw bytes) pairs, media paths relative to ``raw_dir``: the same checks,
    for records that do not come from a records.jsonl (``nemu.featurize`` feeds dicts through it)."""
    raw_dir = Path(raw_dir)
    result = ReadResult()
    first_seen: dict[str, tuple[str, int]] = {}  # id_key -> (id as written, line)
    for number, raw in lines:
        result.input_count += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            result.quarantined.append(
                Quarantined(None, number, "line", f"not valid UTF-8 (byte {exc.start}: {exc.reason})"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            result.quarantined.append(Quarantined(None, number, "line", f"malformed JSON: {exc.msg} (column {exc.colno})"))
            continue
        except RecursionError:  # json's C parser recurses once per nesting level
            result.quarantined.append(Quarantined(None, number, "line", "malformed JSON: nested too deeply"))
            continue
        except ValueError as exc:  # an integer of more than 4300 digits (Python's int/str conversion limit)
            result.quarantined.append(Quarantined(None, number, "line", f"malformed JSON: {exc}"))
            continue
        record_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
        try:
            record = _parse_record(obj, number, raw_dir)
            key = id_key(record.id)
            if key in first_seen:
                other, other_line = first_seen[key]
                if other == record.id:
                    raise RecordError("id", f"duplicate id {record.id!r} (first seen on line {other_line})")
                raise RecordError("id", f"duplicate id {_shown(record.id)} (first seen on line {other_line}, id "
                                        f"{_shown(other)}: the same after Unicode normalisation and case folding)")
            first_seen[key] = (record.id, number)
            if not record.labels and require_labels:
                result.without_emotion.append(record.id)
                continue
            check_media(record, raw_dir)
        except RecordError as exc:
            result.quarantined.append(Quarantined(record_id, number, exc.field, exc.reason))
            continue
        result.records.append(record)
    return result
