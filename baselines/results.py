"""The results store: one JSON line per finished model x dataset x fold x seed (x modality subset) cell.

Each record is appended and flushed to disk the moment its cell finishes, so a killed run loses at
most the cell in progress; started again, the harness skips every cell already stored. The file is read
as bytes: a last line torn by a kill (unterminated and unparsable, even torn inside a multi-byte UTF-8
character) is ignored with a one-line notice naming the file, that cell is redone and the next append
overwrites the torn tail; any other line that is not a JSON object (undecodable bytes, invalid JSON, a
non-finite number) is an error naming the file and the line. No record holding a non-finite number is
ever appended (:class:`NonFiniteResult`). One run at a time per folder: :class:`OutLock`.

A cell's identity is its place in the grid (``Cell.key``: model, dataset, fold, seed, modalities) *and*
what it was computed from: the dataset's fingerprint (``nemu.shards.dataset_fingerprint`` of its
manifest), a digest of the model's resolved settings (profile configuration, overrides and the input
normalisation) and a digest of the code that computed it (``mmer.code``: the model's module, the cell runner
and their imports within the project; per-file digests in the record's ``code_files``). A stored record is
reused only when all four match, so a rebuilt dataset, a changed setting or an edited model reruns the cell
instead of reusing an old number; :func:`stale_reasons` says what changed (for code: which files).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from mmer.code import changed_files
from mmer.metrics import NonFiniteResult, check_finite
from mmer.runner import POSITION_SETTINGS, Cell

RESULTS_FILE = "results.jsonl"
FAILURES_FILE = "failures.jsonl"
LOCK_FILE = ".lock"


class StoreError(ValueError):
    """A results file that cannot be read: the message names the file and the line."""


class OutLocked(ValueError):
    """Another run holds the --out folder's lock: the message names the holder."""



def _refuse_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def read_records(path: Path) -> tuple[list[dict], str | None]:
    """Every record of a JSON-lines store, read as bytes, and a notice when its torn last line was ignored.

    Raises :class:`StoreError` naming the file and line for any other line that is not a JSON object."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline; else an unterminated (torn) last line
    records, notice = [], None
    for number, line in enumerate(lines + ([tail] if tail else []), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"), parse_constant=_refuse_constant)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            if tail and number == len(lines) + 1:
                notice = (f"{path}: ignoring its torn last line {number} (a run killed while writing it); "
                          f"that cell is redone")
                continue
            reason = ("not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc).splitlines()[0])
            raise StoreError(f"{path}: line {number} is not a valid record ({reason}); remove or repair that "
                             f"line and run again") from None
        records.append(record)
    return records, notice


class OutLock:
    """One run per results folder: ``with OutLock(out):`` holds an exclusive ``flock`` on ``OUT/.lock``
    (which names the holder: pid, host, command) or raises :class:`OutLocked` naming the holder at once.
    The OS releases the lock when the holder exits, however it ends (a kill included)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_FILE
        self._handle = None

    def __enter__(self) -> OutLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutLocked(f"{self.path.parent} is in use by another run ({holder}); wait for it to finish or "
                            f"pass another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the flock
            self._handle = None


def _short(fingerprint: str | None) -> str:
    return f"{fingerprint[:8]}.." if fingerprint else "(not recorded)"


def record_settings(record: Mapping) -> dict:
    """A stored record's resolved settings: the factory's configuration plus the top-level input setting."""
    settings = dict(record.get("settings") or {})
    if "input_normalization" in record:
        settings["input_normalization"] = record["input_normalization"]
    return settings


def _changed_settings(old: Mapping, new: Mapping) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(POSITION_SETTINGS))
    return [f"{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys if old.get(k) != new.get(k)]


def stale_reasons(records: Iterable[dict], cells: Iterable[Cell], settings: Mapping[str, Mapping],
                  roots: Mapping[str, Path], store_path: Path,
                  code_files: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Why stored records at the cells' grid places cannot be reused (one message per dataset/model).

    ``settings`` maps model name -> its current resolved settings; ``roots`` dataset name -> its folder;
    ``code_files`` model name -> its current ``mmer.code.code_files`` (to name the changed files).
    """
    wanted = {cell.key: cell for cell in cells}
    records = list(records)
    current = {r.get("identity") for r in records}
    # One record per grid place, the latest: a cell is counted once and compared with what it last ran with,
    # however many older runs the store keeps at its place.
    records = list({r.get("key"): r for r in records}.values())
    by_data: dict[tuple, int] = defaultdict(int)
    by_settings: dict[str, tuple[int, list[str]]] = {}
    by_code: dict[str, tuple[int, list[str]]] = {}
    for record in records:
        cell = wanted.get(record.get("key"))
        if cell is None or cell.identity in current:
            continue
        if record.get("dataset_fingerprint") != cell.fingerprint:
            by_data[(cell.dataset, record.get("dataset_fingerprint"), cell.fingerprint)] += 1
        elif record.get("settings_digest") != cell.settings:
            count, changes = by_settings.get(cell.model, (0, []))
            by_settings[cell.model] = (count + 1, changes or _changed_settings(record_settings(record),
                                                                              settings.get(cell.model, {})))
        elif record.get("code_digest") != cell.code:
            count, changes = by_code.get(cell.model, (0, []))
            by_code[cell.model] = (count + 1, changes or changed_files(record.get("code_files"),
                                                                      (code_files or {}).get(cell.model, {})))
    messages = [f"{store_path} has {n} cell(s) for dataset {d} built from fingerprint {_short(old)} but "
                f"{roots.get(d, d)} is now {_short(new)}: rerunning them"
                for (d, old, new), n in sorted(by_data.items(), key=lambda item: (item[0][0], -item[1]))]
    messages += [f"{store_path} has {n} cell(s) of {model} run with other settings "
                 f"({', '.join(changes) or 'settings digest differs'}): rerunning them"
                 for model, (n, changes) in sorted(by_settings.items())]
    messages += [f"{store_path} has {n} cell(s) of {model} run with other code "
                 f"({', '.join(changes) or 'code digest differs'}): rerunning them"
                 for model, (n, changes) in sorted(by_code.items())]
    return messages


class ResultsStore:
    def __init__(self, out_dir: Path, profile: str):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.path = self.out_dir / RESULTS_FILE
        self._noticed: set[str] = set()

    def records(self) -> list[dict]:
        """Every intact record of this store's profile (a torn last line is ignored, with a notice once)."""
        records, notice = read_records(self.path)
        if notice and notice not in self._noticed:
            self._noticed.add(notice)
            print(f"note: {notice}", file=sys.stderr)
        return [r for r in records if r.get("profile") == self.profile]

    def done(self) -> set[str]:
        """Identities (``Cell.identity``) of the stored cells; records without one (older stores) match none."""
        return {record["identity"] for record in self.records() if "identity" in record}

    def current(self, cells: Iterable[Cell]) -> list[dict]:
        """The stored records of exactly these cells (same grid place, data build and settings); latest wins."""
        wanted = {cell.identity for cell in cells}
        latest = {r["identity"]: r for r in self.records() if r.get("identity") in wanted}
        return list(latest.values())

    def _append(self, path: Path, record: dict) -> None:
        check_finite(record, f"the record of {record.get('key', 'a cell')}")
        line = (json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        with path.open("ab") as handle:
            self._drop_torn_tail(handle)
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _drop_torn_tail(handle) -> None:
        """Cut an unterminated, unparsable last line (torn by a kill; its cell is redone), so the store stays
        whole lines."""
        size = handle.seek(0, os.SEEK_END)
        if not size:
            return
        with open(handle.name, "rb") as reader:
            start = max(0, size - 1)
            while True:
                reader.seek(start)
                chunk = reader.read(size - start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                if start == 0:
                    keep = 0
                    break
                start = max(0, start - 65536)
            reader.seek(keep)
            tail = reader.read()
        if keep == size:
            return
        try:
            whole = isinstance(json.loads(tail.decode("utf-8"), parse_constant=_refuse_constant), dict)
        except ValueError:
            whole = False
        if whole:
            handle.write(b"\n")  # a whole record whose newline was lost: keep it
        else:
            handle.truncate(keep)

    def add(self, record: dict, cell: Cell | None = None) -> None:
        """Append ``record``; with ``cell``, stamp it with the cell's identity, fingerprint, settings and code digests."""
        if cell is not None:
            record = record | {"identity": cell.identity, "dataset_fingerprint": cell.fingerprint,
                               "settings_digest": cell.settings, "code_digest": cell.code}
        self._append(self.path, record | {"profile": self.profile})

    def add_failure(self, cell: Cell, error: str) -> None:
        self._append(self.out_dir / FAILURES_FILE, {"key": cell.key, "identity": cell.identity,
                                                    "profile": self.profile, "error": error})
