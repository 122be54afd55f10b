"""A built dataset folder read by the ecosystem's tools as it is: the five recipes of README.md ("Loading").

pandas, pyarrow, Hugging Face datasets, polars and DuckDB each read the folder written by the build, keep the
fixed feature sizes (or get them back, DuckDB), and see the same rows as ``nemu.load``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import nemu
from nemu.splits import HF_SPLIT_NAMES


def _sizes(out: Path) -> dict[str, int]:
    manifest = nemu.read_manifest(out)
    return {split: sum(entry["rows"] for entry in entries) for split, entries in manifest["shards"].items()}


def _dims(out: Path) -> dict[str, int]:
    return {m["name"]: m["dim"] for m in nemu.read_manifest(out)["modalities"]}


def test_pandas_recipe(built):
    import pandas as pd

    out = built[0] / "out"
    frame = pd.read_parquet(out / "train")
    expected = nemu.load(out, "train")
    assert sorted(frame["id"]) == sorted(expected["id"]) and len(frame) == _sizes(out)["train"]
    row = frame.set_index("id").loc[expected["id"].iloc[0]]
    assert list(row["labels"]) == list(expected["labels"].iloc[0])  # label names stay plain strings
    assert len(row["label_vector"]) == 12 and np.stack(list(row["audio"])).shape[1] == _dims(out)["audio"]


def test_pyarrow_recipe_reads_the_whole_folder_past_the_card(built):
    out = built[0] / "out"
    assert (out / "README.md").is_file() and (out / "manifest.json").is_file()
    with pytest.raises(pa.ArrowInvalid):  # why the recipe needs exclude_invalid_files: README.md is no Parquet
        ds.dataset(out, format="parquet")
    folder = ds.dataset(out, format="parquet", exclude_invalid_files=True,
                        partitioning=ds.partitioning(pa.schema([("split", pa.string())])))
    table = folder.to_table()
    assert table.num_rows == sum(_sizes(out).values())
    counts = dict(zip(*np.unique(table["split"].to_numpy(zero_copy_only=False), return_counts=True)))
    assert counts == _sizes(out)
    for name, dim in _dims(out).items():
        assert table.schema.field(name).type == pa.list_(pa.list_(pa.float32(), dim))
    assert table.schema.field("label_vector").type == pa.list_(pa.int8(), 12)
    train = ds.dataset(out / "train", format="parquet").to_table()
    assert train.num_rows == _sizes(out)["train"] and b"mmer.manifest" in train.schema.metadata


def test_hugging_face_load_dataset_opens_the_folder_as_it_is(built, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = built[0] / "out"
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    sizes = _sizes(out)
    assert {split: len(loaded[split]) for split in loaded} == {HF_SPLIT_NAMES[s]: n for s, n in sizes.items()}
    assert set(loaded) == {"train", "validation", "test"}
    manifest = nemu.read_manifest(out)
    label_ids = loaded["train"].features["label_ids"].feature
    assert isinstance(label_ids, datasets.ClassLabel) and label_ids.names == manifest["labels"]
    for row in loaded["train"]:  # the ClassLabel ids name exactly the labels and the label vector
        assert label_ids.int2str(row["label_ids"]) == row["labels"]
        assert row["label_ids"] == [i for i, v in enumerate(row["label_vector"]) if v]
    features = loaded["train"].features
    assert features["audio"].feature.length == _dims(out)["audio"] and features["label_vector"].length == 12
    # the split datasets calls "validation" is the toolkit's too
    assert loaded["validation"]["id"] == nemu.MMERDataset(out, "validation").ids == nemu.MMERDataset(out, "valid").ids
    first = loaded["train"].with_format("numpy")[0]
    assert first["audio"].shape[1] == _dims(out)["audio"]


def test_dataset_card_yaml_is_what_datasets_expects(built):
    pytest.importorskip("datasets")
    import yaml
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    out = built[0] / "out"
    text = (out / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "other" and header["license_name"]
    infos = DatasetInfosDict.from_dataset_card_data(header)["default"]
    sizes = _sizes(out)
    assert {name: split.num_examples for name, split in infos.splits.items()} == \
        {HF_SPLIT_NAMES[s]: n for s, n in sizes.items()}
    assert all(split.num_bytes > 0 for split in infos.splits.values())
    assert infos.features["label_ids"].feature.names == nemu.read_manifest(out)["labels"]
    configs = MetadataConfigs.from_dataset_card_data(header)["default"]
    assert configs["data_files"] == [{"split": "train", "path": "train/train-*.parquet"},
                                     {"split": "validation", "path": "valid/valid-*.parquet"},
                                     {"split": "test", "path": "test/test-*.parquet"}]


def test_polars_recipe(built):
    pl = pytest.importorskip("polars")
    out = built[0] / "out"
    frame = pl.read_parquet(out / "train" / "*.parquet")
    assert frame.height == _sizes(out)["train"]
    assert frame.schema["label_vector"] == pl.Array(pl.Int8, 12)
    for name, dim in _dims(out).items():
        assert frame.schema[name] == pl.List(pl.Array(pl.Float32, dim))
    assert sorted(frame["id"].to_list()) == sorted(nemu.load(out, "train")["id"])


def test_duckdb_recipes_keep_the_fixed_sizes(built):
    duckdb = pytest.importorskip("duckdb")
    out = built[0] / "out"
    dims = _dims(out)
    con = duckdb.connect()
    # DuckDB's own Parquet reader drops the fixed sizes (FLOAT[][]): the reason for the two recipes
    plain = con.sql(f"SELECT audio FROM read_parquet('{out / 'train' / '*.parquet'}')")
    assert plain.types[0] == "FLOAT[][]"
    # recipe 1: a pyarrow dataset, queried by its Python name, keeps the Arrow types
    train = ds.dataset(out / "train", format="parquet")  # noqa: F841 - DuckDB finds it by name
    kept = con.sql("SELECT id, label_vector, audio, len(audio) AS nodes FROM train ORDER BY id")
    assert kept.types[1] == "TINYINT[12]" and kept.types[2] == f"FLOAT[{dims['audio']}][]"
    rows = kept.fetchall()
    frame = nemu.load(out, "train").set_index("id")
    assert len(rows) == len(frame)
    assert [r[3] for r in rows] == [len(frame.loc[r[0], "audio"]) for r in rows]
    # recipe 2: DuckDB's reader, then a cast to the manifest's sizes
    cast = con.sql(f"SELECT label_vector::TINYINT[12] AS label_vector, audio::FLOAT[{dims['audio']}][] AS audio "
                   f"FROM read_parquet('{out / 'train' / '*.parquet'}')")
    assert cast.types == ["TINYINT[12]", f"FLOAT[{dims['audio']}][]"]
    con.close()


def test_card_yaml_survives_hostile_names():
    """Label and dataset names with YAML syntax in them (colons, quotes, 'yes', '#') stay strings."""
    pytest.importorskip("datasets")
    import yaml
    from datasets.info import DatasetInfosDict

    from nemu.shards import Modality, build_schema

    labels = ["a: b", "yes", "c'd\"e", "# not a comment", "- item", "null"]
    schema = build_schema(len(labels), [Modality("audio", 4, "window", True)], [])
    manifest = {"dataset": "X: [y]", "labels": labels, "source": {"kind": "raw-records"},
                "shards": {"train": [{"path": "train/t.parquet", "rows": 3, "bytes": 10}],
                           "valid": [{"path": "valid/v.parquet", "rows": 1, "bytes": 4}], "test": []}}
    from nemu.card import _yaml_header

    header = yaml.safe_load((_yaml_header(manifest, schema) + "\n").split("---\n")[1])
    assert header["pretty_name"] == "X: [y]"
    info = DatasetInfosDict.from_dataset_card_data(header)["default"]
    assert info.features["label_ids"].feature.names == labels
    assert {name: s.num_examples for name, s in info.splits.items()} == {"train": 3, "validation": 1, "test": 0}
