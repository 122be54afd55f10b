"""The paper's Table 1 statistics, computed from a built dataset's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Table1Statistics:
    """Table 1 accumulated split by split, so a build can count it without holding its rows (nemu.build).

    ``add`` takes one batch of rows at a time; ``result`` gives what ``table1_statistics`` gives for the same
    rows in the same order (integer sums are exact; durations are kept as float32, the column's type, and
    averaged as that column would be).
    """

    def __init__(self, label_names: Sequence[str]):
        self.label_names = list(label_names)
        self.splits: dict[str, int] = {}
        self._labels: list[np.ndarray] = []
        self._durations: list[np.ndarray] = []
        self.words = 0  # tokens over all sentences (text nodes)
        self.sentences = 0

    def add(self, split: str, label_vectors, durations, words: int = 0, sentences: int = 0) -> None:
        """Rows of ``split``: their 0/1 label vectors (rows × labels), durations (NaN: unknown) and the token
        count and number of their sentences."""
        labels = np.asarray(label_vectors, dtype=np.int64).reshape(-1, len(self.label_names))
        self.splits[split] = self.splits.get(split, 0) + len(labels)
        self._labels.append(labels)
        self._durations.append(np.asarray(durations))
        self.words += int(words)
        self.sentences += int(sentences)

    def result(self) -> dict:
        labels = np.concatenate(self._labels) if self._labels else np.zeros((0, len(self.label_names)), np.int64)
        per_sample = labels.sum(axis=1)
        durations = np.concatenate(self._durations) if self._durations else np.zeros(0, np.float32)
        durations = durations[~np.isnan(durations)] if durations.dtype.kind == "f" else durations
        counts = labels.sum(axis=0)
        total = int(len(labels))
        return {
            "splits": dict(self.splits),
            "samples": total,
            "one_label": int((per_sample == 1).sum()),
            "two_or_more_labels": int((per_sample >= 2).sum()),
            "mean_labels_per_sample": round(float(per_sample.mean()), 3) if total else 0.0,
            "mean_duration_seconds": round(float(durations.mean()), 2) if len(durations) else None,
            "samples_with_duration": int(len(durations)),
            "mean_words_per_sentence": round(self.words / self.sentences, 2) if self.sentences else None,
            "sentences": self.sentences,
            "label_frequencies": {
                name: {"count": int(count), "share": round(float(count) / total, 4) if total else 0.0}
                for name, count in zip(self.label_names, counts)
            },
        }


def table1_statistics(tables: Mapping[str, pa.Table], label_names: Sequence[str],
                      token_columns: Sequence[str]) -> dict:
    """Split sizes, one- vs multi-label counts, mean duration, mean words per sentence, label frequencies.

    ``tables`` maps split name → rows with ``label_vector`` and ``duration_seconds``; ``token_columns``
    are list<list<string>> columns, one token list per text node (sentence).
    """
    statistics = Table1Statistics(label_names)
    for split, table in tables.items():
        labels = np.asarray(table["label_vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                            dtype=np.int64).reshape(table.num_rows, len(label_names))
        words = sentences = 0
        for column in token_columns:
            nodes = pc.list_flatten(table[column])  # one token list per sentence
            lengths = pc.list_value_length(nodes).to_numpy(zero_copy_only=False)
            words, sentences = words + int(lengths.sum()), sentences + len(lengths)
        statistics.add(split, labels, table["duration_seconds"].to_numpy(zero_copy_only=False), words, sentences)
    return statistics.result()


# The paper's Table 1 (Zhang et al., AAAI 2021), for printing beside statistics computed from data.
PAPER_TABLE1 = {
    "MOSEI": {"splits": {"train": 16326, "valid": 1871, "test": 4659}, "one_label": 11121,
              "two_or_more_labels": 8339, "mean_duration_seconds": 7.28, "duration_unit": "utterance",
              "language": "English", "labels": 6, "mean_words_per_sentence": 19.1},
    "NEMu": {"splits": {"train": 15125, "valid": 1891, "test": 1891}, "one_label": 5587,
             "two_or_more_labels": 13320, "mean_duration_seconds": 115, "duration_unit": "sample",
             "language": "Chinese", "labels": 12, "mean_words_per_sentence": 24.0},
}
