"""Atomic file writes: readers see the old file or the new one, never half of one.

Every file the toolkit writes whole (shards, manifests, cards, feature-cache entries, run files) goes through
``atomic_write_bytes`` or ``atomic_write_text``: the data is written to a temporary name beside the target and
renamed over it (``os.replace``, atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
from pathlib import Path


def _write_all(handle, data: bytes) -> None:
    handle.write(data)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating its folder; returns ``path``.

    On any failure (disk full, permission denied) the temporary file is removed and the OSError names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            _write_all(handle, data)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """``atomic_write_bytes`` of ``text`` encoded (no newline translation: the bytes are the same everywhere)."""
    return atomic_write_bytes(path, text.encode(encoding))
