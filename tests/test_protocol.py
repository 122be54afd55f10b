"""The benchmark protocol's input pipeline: one standardisation of the node features, on the training split
of the rotation in use, for every model (nemu.normalization, nemu.loading.split_datasets, the runner)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import nemu
from mmer.registry import get
from mmer.runner import Cell
from mmer.runner import run_cell, run_folder
from nemu.loading import clear_cache, collate, split_datasets
from nemu.normalization import NORMALIZATION_FILE, NodeStatistics
from nemu.shards import read_manifest, sha256_file
from nemu.splits import cv_rotation

MODALITIES = ("lyrics", "comments", "audio", "images")


pytestmark = pytest.mark.usefixtures("one_thread")


def stored_nodes(root: Path, folds) -> dict[str, np.ndarray]:
    """Every real node of the given folds, read with pandas (independently of nemu.loading's arrays)."""
    frame = nemu.load(root, None)
    frame = frame[frame["fold"].isin(folds)]
    out = {}
    for m in MODALITIES:
        dim = next(x["dim"] for x in read_manifest(root)["modalities"] if x["name"] == m)
        rows = [np.asarray([np.asarray(node, dtype=np.float32) for node in nodes]).reshape(-1, dim)
                for nodes in frame[m]]
        out[m] = np.concatenate(rows)
    return out


def rewrite_splits(source: Path, target: Path, splits: tuple[str, ...], change) -> Path:
    """A copy of a built dataset whose ``splits`` have their node features replaced by ``change(x)``
    (shards rewritten with the same schema, manifest hashes updated)."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    for split in splits:
        for entry in manifest["shards"][split]:
            path = target / entry["path"]
            table = pq.read_table(path)
            for m in MODALITIES:
                column = table[m].combine_chunks()
                values = column.values.flatten().to_numpy(zero_copy_only=False)
                dim = column.type.value_type.list_size
                changed = pa.FixedSizeListArray.from_arrays(pa.array(change(values).astype(np.float32)), dim)
                new = pa.ListArray.from_arrays(column.offsets, changed).cast(column.type)
                table = table.set_column(table.schema.get_field_index(m), table.schema.field(m), new)
            pq.write_table(table, path)
            entry["sha256"] = sha256_file(path)
            for key in ("bytes", "size"):
                if key in entry:
                    entry[key] = path.stat().st_size
    (target / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    return target


def test_statistics_are_those_of_the_training_rotations_real_nodes(built):
    root = built[0] / "out"
    datasets = split_datasets(root, fold=3)
    statistics = datasets["train"].normalization
    assert statistics.setting == "standardize"
    assert all(ds.normalization is statistics for ds in datasets.values())
    train_nodes = stored_nodes(root, cv_rotation(3)["train"])
    everything = stored_nodes(root, range(10))
    for m in MODALITIES:
        expected_mean = train_nodes[m].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(statistics.mean[m], expected_mean, rtol=1e-6, atol=1e-9)
        std = train_nodes[m].astype(np.float64).std(axis=0)
        varying = std > 1e-6 * np.maximum(np.abs(expected_mean), 1e-12)
        np.testing.assert_allclose(statistics.std[m][varying], std[varying], rtol=1e-6)
        assert statistics.nodes[m] == len(train_nodes[m])
        if m in ("audio", "images"):  # every song's media are its own (the tiny lyrics repeat lines across songs)
            # the statistics are not those of all nodes (valid and test never enter them)
            assert not np.allclose(statistics.mean[m], everything[m].mean(axis=0, dtype=np.float64), rtol=1e-3,
                                   atol=0)
        # the train split is standardised: per dimension mean 0 and std 1 over its real nodes
        z = datasets["train"].node_values()[m].astype(np.float64)
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(z.std(axis=0)[varying], 1.0, rtol=1e-3)


def test_padding_is_excluded_and_stays_zero(built):
    root = built[0] / "out"
    train = split_datasets(root, fold=0)["train"]
    counts = {m: np.diff(offsets) for m, (_, offsets) in train._nodes.items()}
    assert any(len(set(c.tolist())) > 1 for c in counts.values())  # samples have unequal node counts
    batch = collate([train[i] for i in range(len(train))])
    for m in MODALITIES:
        padded, mask = batch["features"][m], batch["masks"][m]
        if mask.all():  # every sample has as many nodes (the tiny build's two images)
            continue
        assert torch.all(padded[~mask] == 0)  # padding added after standardisation, never standardised
        # the real positions are standardised (mean 0), so statistics counting padding would differ
        assert padded[mask].double().mean(dim=0).abs().max() < 1e-4


def test_valid_and_test_data_do_not_change_the_statistics(built, tmp_path):
    root = built[0] / "out"
    changed = rewrite_splits(root, tmp_path / "changed", ("valid", "test"), lambda x: 100.0 * x + 7.0)
    original, other = split_datasets(root), split_datasets(changed)
    assert original["train"].normalization.same_as(other["train"].normalization)
    for m in MODALITIES:  # the change did reach the valid features, through the same statistics
        raw = original["valid"].normalization
        a = original["valid"].node_values()[m].astype(np.float64) * raw.std[m] + raw.mean[m]
        b = other["valid"].node_values()[m].astype(np.float64) * raw.std[m] + raw.mean[m]
        np.testing.assert_allclose(b, 100.0 * a + 7.0, rtol=1e-3, atol=1e-2)
    # and changing the training split does change them
    moved = rewrite_splits(root, tmp_path / "moved", ("train",), lambda x: 3.0 * x + 1.0)
    assert not original["train"].normalization.same_as(split_datasets(moved)["train"].normalization)


def test_constant_dimensions_empty_modalities_and_non_finite_features():
    rng = np.random.default_rng(0)
    varying = rng.normal(3.0, 2.0, size=(50, 1))
    constant = np.full((50, 1), 0.1, dtype=np.float32)  # 0.1 is not exact in binary: rounding must not matter
    zero = np.zeros((50, 1), dtype=np.float32)
    values = np.hstack([varying, constant, zero]).astype(np.float32)
    statistics = NodeStatistics.fit({"a": values, "empty": np.zeros((0, 4), np.float32)})
    assert statistics.std["a"][1] == 1.0 and statistics.std["a"][2] == 1.0
    z = statistics.apply("a", values)
    assert np.isfinite(z).all() and np.allclose(z[:, 1:], 0.0, atol=1e-6)
    assert abs(z[:, 0].std() - 1.0) < 1e-5
    assert np.array_equal(statistics.mean["empty"], np.zeros(4)) and np.array_equal(statistics.std["empty"], np.ones(4))
    new = rng.normal(size=(3, 4)).astype(np.float32)
    assert np.array_equal(statistics.apply("empty", new), new)
    with pytest.raises(ValueError, match="non-finite"):
        NodeStatistics.fit({"a": np.array([[1.0], [np.nan]], dtype=np.float32)})
    with pytest.raises(ValueError, match="dim 3"):
        statistics.apply("a", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="unknown input normalisation"):
        NodeStatistics.fit({"a": values}, "minmax")


def test_statistics_file_round_trips_bit_for_bit_and_is_deterministic(built, tmp_path):
    statistics = split_datasets(built[0] / "out", fold=1)["train"].normalization
    first, second = statistics.save(tmp_path / "a.json"), statistics.save(tmp_path / "b.json")
    assert first.read_bytes() == second.read_bytes()
    loaded = NodeStatistics.load(first)
    assert loaded.same_as(statistics) and loaded.nodes == statistics.nodes
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        NodeStatistics.load(tmp_path / "bad.json")
    broken = json.loads(first.read_text())
    broken["modalities"]["audio"]["std"][0] = 0.0
    (tmp_path / "zero.json").write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match="std > 0"):
        NodeStatistics.load(tmp_path / "zero.json")


def test_raw_setting_reproduces_the_stored_features(built):
    root = built[0] / "out"
    raw = split_datasets(root, fold=2, input_normalization="raw")
    standardised = split_datasets(root, fold=2)
    for split, folds in cv_rotation(2).items():
        stored = stored_nodes(root, folds)
        frame = nemu.load(root, None)
        assert raw[split].ids == [i for i, f in zip(frame["id"], frame["fold"]) if f in folds]
        for m in MODALITIES:
            assert np.array_equal(raw[split].node_values()[m], stored[m])
            assert not np.allclose(standardised[split].node_values()[m], stored[m])
    assert raw["train"].normalization.setting == "raw"
    with pytest.raises(ValueError, match="unknown input normalisation"):
        split_datasets(root, input_normalization="none")


def test_decoded_cache_never_leaks_between_cells(built):
    root = built[0] / "out"
    clear_cache()
    first = split_datasets(root, fold=0)
    before = {m: v.copy() for m, v in first["test"].node_values().items()}
    for ds in first.values():  # a model scribbling on its inputs must not reach the next cell
        for values in ds.node_values().values():
            values += 1000.0
        ds.labels[:] = 7
    again = split_datasets(root, fold=0)
    for m in MODALITIES:
        assert np.array_equal(again["test"].node_values()[m], before[m])
    assert set(np.unique(again["train"].labels)) <= {0.0, 1.0}
    # each rotation gets its own statistics and its own normalised copy
    other = split_datasets(root, fold=1)
    assert not other["train"].normalization.same_as(again["train"].normalization)
    raw = split_datasets(root, fold=0, input_normalization="raw")
    assert not np.allclose(raw["test"].node_values()["audio"], again["test"].node_values()["audio"])


def test_setting_is_recorded_in_records_and_run_folders(built, tmp_path):
    root = built[0] / "out"
    spec = get("BR")
    records = {setting: run_cell(Cell("BR", "nemu", 0, 0), spec, root, "quick", input_normalization=setting)
               for setting in ("standardize", "raw")}
    assert {s: r["input_normalization"] for s, r in records.items()} == {"standardize": "standardize", "raw": "raw"}
    assert all(r["status"] == "ok" and "run_dir" not in r for r in records.values())  # estimators: no run folder
    cell = Cell("HHMPN", "nemu", 0, 0)
    record = run_cell(cell, get("HHMPN"), root, "quick", overrides={"epochs": 1, "d": 16}, out_dir=tmp_path)
    assert record["input_normalization"] == "standardize"
    assert record["dataset_fingerprint"] == nemu.shards.dataset_fingerprint(read_manifest(root))
    run_dir = Path(record["run_dir"])
    assert run_dir == run_folder(tmp_path, cell) == tmp_path / "runs" / "nemu" / "hhmpn" / "fold0-seed0-all"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["input_normalization"] == "standardize" and run["model"] == "HHMPN" and run["fold"] == 0
    saved = NodeStatistics.load(run_dir / NORMALIZATION_FILE)
    assert saved.same_as(split_datasets(root, fold=0)["train"].normalization)
    subset = Cell("HHMPN w/o F2F", "nemu", 1, 2, ("lyrics", "audio"))
    assert run_folder(tmp_path, subset) == tmp_path / "runs" / "nemu" / "hhmpn-no-f2f" / "fold1-seed2-lyrics+audio"
