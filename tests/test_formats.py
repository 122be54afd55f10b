"""A built dataset folder read by the ecosystem's tools as it is: the five recipes of README.md ("Loading").

pandas, pyarrow, Hugging Face datasets, polars and DuckDB each read the folder written by the build, keep the
fixed feature sizes (or get them back, DuckDB), and see the same rows as ``nemu.load``. Every recipe reads the
shard files the manifest lists (the card lists them for datasets), so a stray copy in a split folder is read by
none of them: the README's code block is run as written on a folder holding one.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
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


def _files(out: Path) -> dict[str, list[str]]:
    """The README's file lists: each split's shard files as its manifest lists them."""
    shards = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["shards"]
    return {split: [f"{out}/{entry['path']}" for entry in entries] for split, entries in shards.items()}


def test_pandas_recipe(built):
    import pandas as pd

    out = built[0] / "out"
    frame = pd.read_parquet(_files(out)["train"])
    expected = nemu.load(out, "train")
    assert sorted(frame["id"]) == sorted(expected["id"]) and len(frame) == _sizes(out)["train"]
    row = frame.set_index("id").loc[expected["id"].iloc[0]]
    assert list(row["labels"]) == list(expected["labels"].iloc[0])  # label names stay plain strings
    assert len(row["label_vector"]) == 12 and np.stack(list(row["audio"])).shape[1] == _dims(out)["audio"]


def test_pyarrow_recipe_reads_every_split_with_its_name(built):
    out = built[0] / "out"
    files = _files(out)
    folder = ds.dataset(sum(files.values(), []), format="parquet", partition_base_dir=str(out),
                        partitioning=ds.partitioning(pa.schema([("split", pa.string())])))
    table = folder.to_table()
    assert table.num_rows == sum(_sizes(out).values())
    counts = dict(zip(*np.unique(table["split"].to_numpy(zero_copy_only=False), return_counts=True)))
    assert counts == _sizes(out)
    for name, dim in _dims(out).items():
        assert table.schema.field(name).type == pa.list_(pa.list_(pa.float32(), dim))
    assert table.schema.field("label_vector").type == pa.list_(pa.int8(), 12)
    train = ds.dataset(files["train"], format="parquet").to_table()
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
    manifest = nemu.read_manifest(out)  # exactly the manifest's shard files, never a glob
    assert configs["data_files"] == [{"split": HF_SPLIT_NAMES[s], "path": [e["path"] for e in manifest["shards"][s]]}
                                     for s in ("train", "valid", "test")]


def test_polars_recipe(built):
    pl = pytest.importorskip("polars")
    out = built[0] / "out"
    frame = pl.read_parquet(_files(out)["train"])
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
    files = _files(out)["train"]
    plain = con.sql(f"SELECT audio FROM read_parquet({files})")
    assert plain.types[0] == "FLOAT[][]"
    # recipe 1: a pyarrow dataset, queried by its Python name, keeps the Arrow types
    train = ds.dataset(files, format="parquet")  # noqa: F841 - DuckDB finds it by name
    kept = con.sql("SELECT id, label_vector, audio, len(audio) AS nodes FROM train ORDER BY id")
    assert kept.types[1] == "TINYINT[12]" and kept.types[2] == f"FLOAT[{dims['audio']}][]"
    rows = kept.fetchall()
    frame = nemu.load(out, "train").set_index("id")
    assert len(rows) == len(frame)
    assert [r[3] for r in rows] == [len(frame.loc[r[0], "audio"]) for r in rows]
    # recipe 2: DuckDB's reader, then a cast to the manifest's sizes
    cast = con.sql(f"SELECT label_vector::TINYINT[12] AS label_vector, audio::FLOAT[{dims['audio']}][] AS audio "
                   f"FROM read_parquet({files})")
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


def _readme_loading_block() -> str:
    """The first Python block of README.md's "## Loading" section, as written."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Loading\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _rows(value) -> dict[str, int] | int | None:
    """Rows of a table-like result of a recipe (per split for a DatasetDict); None for anything else."""
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return len(value)
    if isinstance(value, pa.Table):
        return value.num_rows
    if isinstance(value, ds.Dataset):
        return value.count_rows()
    if isinstance(value, nemu.MMERDataset):
        return len(value)
    kind = f"{type(value).__module__}.{type(value).__name__}"
    if kind.startswith("polars.") and kind.endswith("DataFrame"):
        return value.height
    if kind == "datasets.dataset_dict.DatasetDict":
        return {split: len(part) for split, part in value.items()}
    if kind == "datasets.arrow_dataset.Dataset":
        return len(value)
    if kind.startswith("duckdb") and "Relation" in kind:
        return len(value.fetchall())
    return None


def test_a_stray_copy_doubles_no_split_in_any_readme_recipe(built, tmp_path, monkeypatch):
    """A file manager's ``train-00000-of-00003 (copy).parquet`` in the train folder: the README's loading block,
    run as written, gives every table its split's rows (or every split's), never the copy's too; so do nemu.load,
    MMERDataset and datasets.load_dataset (through the card's data_files)."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("polars")
    pytest.importorskip("duckdb")
    data = tmp_path / "data" / "nemu"
    shutil.copytree(built[0] / "out", data, symlinks=True, ignore=shutil.ignore_patterns(".cache"))
    first = data / nemu.read_manifest(data)["shards"]["train"][0]["path"]
    stray = first.with_name(first.stem + " (copy).parquet")
    shutil.copyfile(first, stray)
    sizes = _sizes(data)
    wanted = {sizes["train"], sum(sizes.values())}  # one split's rows, or every split's
    doubled = sizes["train"] + nemu.read_manifest(data)["shards"]["train"][0]["rows"]
    load_dataset = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, **kw: load_dataset(*args, **kw, cache_dir=str(tmp_path / "hf-cache")))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(_readme_loading_block(), "README.md (Loading)", "exec"), namespace)
    assert any("(copy).parquet" in str(w.message) for w in caught)  # the toolkit's loaders name it
    counted = {name: _rows(value) for name, value in namespace.items() if _rows(value) is not None}
    assert len(counted) >= 8, counted  # nemu, MMERDataset, pandas, pyarrow (2), datasets, polars, DuckDB ...
    for name, rows in counted.items():
        if isinstance(rows, dict):
            assert rows == {HF_SPLIT_NAMES[s]: n for s, n in sizes.items()}, (name, rows)
        else:
            assert rows in wanted, f"{name}: {rows} rows; the split has {sizes['train']} (with the copy: {doubled})"
    # the repository's card (DATASET_CARD.md) matches the shards by a pattern that leaves the copy out
    import yaml
    from datasets.data_files import resolve_pattern

    card = (Path(__file__).resolve().parents[1] / "DATASET_CARD.md").read_text(encoding="utf-8")
    patterns = yaml.safe_load(card.split("---\n")[1])["configs"][0]["data_files"]
    for item in patterns:
        split = {v: k for k, v in HF_SPLIT_NAMES.items()}[item["split"]]
        found = sorted(Path(p).name for p in resolve_pattern(item["path"], base_path=str(data)))
        assert found == sorted(Path(e["path"]).name for e in nemu.read_manifest(data)["shards"][split]), found
