"""The streaming build: features are read back and written shard by shard, and what every shard's metadata
carries (Table 1, the counts, the limit cuts) is accumulated without holding the rows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import nemu.build
import nemu.writer
from nemu import labels as nemu_labels
from nemu.build import build
from nemu.extraction import TEXT_MODALITIES
from nemu.shards import read_manifest
from nemu.statistics import Table1Statistics, table1_statistics
from nemu.text import embed_nodes
from tests.conftest import options
from tests.rawkit import song, tiny_raw, write_records

def _tables(out):
    return {split: pq.read_table(sorted((out / split).glob("*.parquet"))) if list((out / split).glob("*.parquet"))
            else None for split in ("train", "valid", "test")}


def test_shards_are_written_one_row_group_of_features_at_a_time(tmp_path, monkeypatch):
    tiny_raw(tmp_path / "raw", 20)
    events: list[str] = []
    read_back, rows_table, write_shard = nemu.build._song_features, nemu.build.rows_table, nemu.writer.write_shard

    def table(rows, *args):
        events.append(f"table {len(rows)}")
        return rows_table(rows, *args)

    monkeypatch.setattr(nemu.build, "_song_features", lambda *a, **k: events.append("read") or read_back(*a, **k))
    monkeypatch.setattr(nemu.build, "rows_table", table)
    monkeypatch.setattr(nemu.writer, "write_shard", lambda *a, **k: events.append("shard") or write_shard(*a, **k))
    summary = build(options(tmp_path / "raw", tmp_path / "out", rows_per_shard=5, row_group_rows=2))

    assert events.count("read") == summary.kept  # every kept song's features are read back once, in pass 2
    runs, run = [], 0  # features read before they are turned into a row group's table
    for event in events:
        if event == "read":
            run += 1
        elif event.startswith("table"):
            runs.append(run)
            run = 0
    assert max(runs) == 2 and run == 0  # ...at most one row group's worth, and none left over
    tables = [int(e.split()[1]) for e in events if e.startswith("table")]
    assert max(tables) == 2 and sum(tables) == summary.kept
    manifest = read_manifest(tmp_path / "out")
    assert events.count("shard") == sum(len(entries) for entries in manifest["shards"].values())
    assert not list((tmp_path / "out").glob(".builds/*/.spool-*"))  # the spool files are not published


def test_accumulated_statistics_and_counts_are_those_of_the_written_rows(tmp_path):
    tiny_raw(tmp_path / "raw", 20)
    build(options(tmp_path / "raw", tmp_path / "out", rows_per_shard=4, row_group_rows=2))
    out = tmp_path / "out"
    manifest = read_manifest(out)
    tables = _tables(out)
    # Table 1 as the in-memory build computed it, from the rows the shards hold
    assert manifest["statistics"] == table1_statistics(tables, nemu_labels.LABEL_NAMES,
                                                       [f"{m}_tokens" for m in TEXT_MODALITIES])
    from gensim.models import KeyedVectors

    vectors = KeyedVectors.load_word2vec_format(str(out / "word_vectors.bin"), binary=True)
    without = 0
    for table in tables.values():
        for modality in TEXT_MODALITIES:
            for tokens in table[f"{modality}_tokens"].to_pylist():
                without += embed_nodes(tokens, vectors)[1]
    assert manifest["counts"]["text_nodes_without_word_vectors"] == without
    # a shard's metadata carries the same facts as the manifest, but for the shard entries and the source
    # (which the manifest alone records, so the shards of the same records are the same bytes whatever the source)
    shard = out / manifest["shards"]["train"][0]["path"]
    facts = json.loads(pq.read_schema(shard).metadata[b"mmer.manifest"])
    assert manifest["source"] == {"kind": "raw-records"}
    assert facts == {k: v for k, v in manifest.items() if k not in ("shards", "source")}


def test_nodes_without_word_vectors_counted_before_any_shard_is_written(tmp_path):
    """With --word-vectors that miss most tokens, the count in the metadata equals a recount over the rows."""
    raw = tmp_path / "raw"
    records = [song(i, raw) for i in range(12)]
    records[3]["comments"] = ["……", "好听"]  # a node without any word: no token, zeros, counted
    write_records(raw, records)
    vectors_file = tmp_path / "vectors.txt"
    rows = [f"{word} " + " ".join(f"{(i + j) % 7 / 10:.1f}" for j in range(300))
            for i, word in enumerate(["好听", "的"])]
    vectors_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    build(options(raw, tmp_path / "out", word_vectors=vectors_file))
    manifest = read_manifest(tmp_path / "out")
    tables = _tables(tmp_path / "out")
    from nemu.text import load_word_vectors

    vectors = load_word_vectors(vectors_file)
    recount = sum(embed_nodes(tokens, vectors)[1] for table in tables.values() for m in TEXT_MODALITIES
                  for tokens in table[f"{m}_tokens"].to_pylist())
    assert recount > 0
    assert manifest["counts"]["text_nodes_without_word_vectors"] == recount


def test_table1_accumulated_batch_by_batch_equals_the_whole_table():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (50, 12)).astype(np.int8)
    durations = rng.uniform(1, 300, 50).astype(np.float32)
    durations[[3, 17]] = np.nan  # songs without audio
    import pyarrow as pa

    whole = {"train": pa.table({"label_vector": pa.array(labels[:40].tolist(), pa.list_(pa.int8(), 12)),
                                "duration_seconds": pa.array(durations[:40], pa.float32())}),
             "test": pa.table({"label_vector": pa.array(labels[40:].tolist(), pa.list_(pa.int8(), 12)),
                               "duration_seconds": pa.array(durations[40:], pa.float32())})}
    expected = table1_statistics(whole, nemu_labels.LABEL_NAMES, [])
    accumulated = Table1Statistics(nemu_labels.LABEL_NAMES)
    for start in range(0, 40, 7):
        stop = min(start + 7, 40)
        accumulated.add("train", labels[start:stop], durations[start:stop])
    accumulated.add("test", labels[40:], durations[40:])
    assert accumulated.result() == expected
    assert expected["samples_with_duration"] == 48


def test_a_cache_entry_that_vanishes_between_the_passes_fails_the_build_naming_it(tmp_path, monkeypatch):
    tiny_raw(tmp_path / "raw", 10)
    read_back = nemu.build._song_features

    def vanish(song, *args):
        song.cache_path.unlink()
        return read_back(song, *args)

    monkeypatch.setattr(nemu.build, "_song_features", vanish)
    with pytest.raises(nemu.build.BuildError, match="changed or vanished during the build"):
        build(options(tmp_path / "raw", tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()  # nothing was published
