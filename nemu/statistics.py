"""The paper's Table 1 statistics, computed from a built dataset's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def table1_statistics(tables: Mapping[str, pa.Table], label_names: Sequence[str],
                      token_columns: Sequence[str]) -> dict:
    """Split sizes, one- vs multi-label counts, mean duration, mean words per sentence, label frequencies.

    ``tables`` maps split name → rows with ``label_vector`` and ``duration_seconds``; ``token_columns``
    are list<list<string>> columns, one token list per text node (sentence).
    """
    all_rows = pa.concat_tables(tables.values())
    labels = np.asarray(all_rows["label_vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                        dtype=np.int64).reshape(all_rows.num_rows, len(label_names))
    per_sample = labels.sum(axis=1)
    durations = all_rows["duration_seconds"].to_numpy(zero_copy_only=False)
    durations = durations[~np.isnan(durations)] if durations.dtype.kind == "f" else durations
    sentence_lengths = []
    for column in token_columns:
        nodes = pc.list_flatten(all_rows[column])  # one token list per sentence
        sentence_lengths.append(pc.list_value_length(nodes).to_numpy(zero_copy_only=False))
    lengths = np.concatenate(sentence_lengths) if sentence_lengths else np.zeros(0)
    counts = labels.sum(axis=0)
    total = int(all_rows.num_rows)
    return {
        "splits": {split: int(table.num_rows) for split, table in tables.items()},
        "samples": total,
        "one_label": int((per_sample == 1).sum()),
        "two_or_more_labels": int((per_sample >= 2).sum()),
        "mean_labels_per_sample": round(float(per_sample.mean()), 3) if total else 0.0,
        "mean_duration_seconds": round(float(durations.mean()), 2) if len(durations) else None,
        "samples_with_duration": int(len(durations)),
        "mean_words_per_sentence": round(float(lengths.mean()), 2) if len(lengths) else None,
        "sentences": int(len(lengths)),
        "label_frequencies": {
            name: {"count": int(count), "share": round(float(count) / total, 4) if total else 0.0}
            for name, count in zip(label_names, counts)
        },
    }


# The paper's Table 1 (Zhang et al., AAAI 2021), for printing beside statistics computed from data.
PAPER_TABLE1 = {
    "MOSEI": {"splits": {"train": 16326, "valid": 1871, "test": 4659}, "one_label": 11121,
              "two_or_more_labels": 8339, "mean_duration_seconds": 7.28, "duration_unit": "utterance",
              "language": "English", "labels": 6, "mean_words_per_sentence": 19.1},
    "NEMu": {"splits": {"train": 15125, "valid": 1891, "test": 1891}, "one_label": 5587,
             "two_or_more_labels": 13320, "mean_duration_seconds": 115, "duration_unit": "sample",
             "language": "Chinese", "labels": 12, "mean_words_per_sentence": 24.0},
}
