"""Atomic file writes: readers see the old file or the new one, never half of one.

Every file the toolkit writes whole (shards, manifests, cards, feature-cache entries, run files, checkpoints)
goes through :func:`atomic_open` (or ``atomic_write_bytes`` / ``atomic_write_text`` on top of it): the data is
written to a temporary file beside the target whose name is unique (``tempfile.mkstemp``: unique across
processes, threads and hosts sharing the folder, so two writers never rename each other's file away), flushed
to disk (``fsync``) and renamed over the target (``os.replace``, atomic on POSIX and Windows). On any failure,
an interrupt included, the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would have given the file


def temporary_name_prefix(path: Path) -> str:
    """The prefix of ``path``'s temporary files: ``.NAME.tmp-`` followed by mkstemp's unique part."""
    return f".{path.name}.tmp-"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """``with atomic_open(path) as handle: handle.write(...)``: ``path`` appears whole when the block ends
    without an exception, and not at all (the old file kept) otherwise. Creates ``path``'s folder.

    An OSError of the write names ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_name_prefix(path), dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        os.fchmod(fd, _MODE)
        os.close(fd)
        with open(tmp, "wb") as handle:  # by name, not fd: handle.name is the temporary file's path
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    if exc.filename is None or ".tmp-" in str(exc.filename):
        return OSError(exc.errno, exc.strerror or str(exc), str(path))
    return exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`), creating its folder; returns ``path``.

    On any failure (disk full, permission denied) the temporary file is removed and the OSError names ``path``."""
    with atomic_open(path) as handle:
        _write_all(handle, data)
    return Path(path)


def _write_all(handle: BinaryIO, data: bytes) -> None:
    """The one write of a whole file's bytes (a seam: tests/test_build_integrity.py fills the disk here)."""
    handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """``atomic_write_bytes`` of ``text`` encoded (no newline translation: the bytes are the same everywhere)."""
    return atomic_write_bytes(path, text.encode(encoding))
