"""The results store: one JSON line per finished model x dataset x fold x seed (x modality subset) cell.

Each record is appended and flushed to disk the moment its cell finishes, so a killed run loses at
most the cell in progress; started again, the harness skips every cell already stored. A line torn
by a kill (the last one, unparsable) is ignored and that cell is redone.

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
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from mmer.code import changed_files
from mmer.runner import POSITION_SETTINGS, Cell

RESULTS_FILE = "results.jsonl"
FAILURES_FILE = "failures.jsonl"


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

    def records(self) -> list[dict]:
        """Every intact record of this store's profile."""
        if not self.path.is_file():
            return []
        records = []
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill: its cell is simply redone
                if isinstance(record, dict) and record.get("profile") == self.profile:
                    records.append(record)
        return records

    def done(self) -> set[str]:
        """Identities (``Cell.identity``) of the stored cells; records without one (older stores) match none."""
        return {record["identity"] for record in self.records() if "identity" in record}

    def current(self, cells: Iterable[Cell]) -> list[dict]:
        """The stored records of exactly these cells (same grid place, data build and settings); latest wins."""
        wanted = {cell.identity for cell in cells}
        latest = {r["identity"]: r for r in self.records() if r.get("identity") in wanted}
        return list(latest.values())

    def _append(self, path: Path, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        with path.open("a", encoding="utf-8") as handle:
            if handle.tell() and not self._ends_with_newline(path):
                handle.write("\n")  # after a torn line, start a fresh one
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _ends_with_newline(path: Path) -> bool:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def add(self, record: dict, cell: Cell | None = None) -> None:
        """Append ``record``; with ``cell``, stamp it with the cell's identity, fingerprint, settings and code digests."""
        if cell is not None:
            record = record | {"identity": cell.identity, "dataset_fingerprint": cell.fingerprint,
                               "settings_digest": cell.settings, "code_digest": cell.code}
        self._append(self.path, record | {"profile": self.profile})

    def add_failure(self, cell: Cell, error: str) -> None:
        self._append(self.out_dir / FAILURES_FILE, {"key": cell.key, "identity": cell.identity,
                                                    "profile": self.profile, "error": error})
