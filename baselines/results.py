"""The results store: one JSON line per finished model x dataset x fold x seed (x modality subset) cell.

Each record is appended and flushed to disk the moment its cell finishes, so a killed run loses at
most the cell in progress; started again, the harness skips every key already stored. A line torn
by a kill (the last one, unparsable) is ignored and that cell is redone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

RESULTS_FILE = "results.jsonl"
FAILURES_FILE = "failures.jsonl"


@dataclass(frozen=True)
class Cell:
    model: str
    dataset: str
    fold: int
    seed: int
    modalities: tuple[str, ...] | None = None  # None: all the dataset's modalities

    @property
    def key(self) -> str:
        subset = "+".join(self.modalities) if self.modalities else "all"
        return f"{self.model}|{self.dataset}|fold={self.fold}|seed={self.seed}|modalities={subset}"


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
                if record.get("profile") == self.profile:
                    records.append(record)
        return records

    def done(self) -> set[str]:
        return {record["key"] for record in self.records()}

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

    def add(self, record: dict) -> None:
        self._append(self.path, record | {"profile": self.profile})

    def add_failure(self, cell: Cell, error: str) -> None:
        self._append(self.out_dir / FAILURES_FILE, {"key": cell.key, "profile": self.profile, "error": error})
