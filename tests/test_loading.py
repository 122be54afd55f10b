"""The three loading paths: pandas / torch (nemu), pyarrow, Hugging Face datasets."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from torch.utils.data import DataLoader

import nemu


def test_pandas_load_has_every_sample_once(built):
    base, records, _ = built
    frames = [nemu.load(base / "out", split) for split in ("train", "valid", "test")]
    ids = [i for f in frames for i in f["id"]]
    assert sorted(ids) == sorted(r["id"] for r in records)
    assert len(nemu.load(base / "out", None)) == len(records)
    with pytest.raises(ValueError, match="no split 'dev'"):
        nemu.load(base / "out", "dev")


def test_torch_dataset_pads_each_modality_and_masks_padding(built):
    base, _, _ = built
    dataset = nemu.MMERDataset(base / "out", "train")
    frame = nemu.load(base / "out", "train")
    assert len(dataset) == len(frame) == 16
    assert dataset.modality_dims == {"lyrics": 300, "comments": 300, "audio": 74, "images": 1280}
    loader = DataLoader(dataset, batch_size=5, shuffle=False, collate_fn=nemu.collate)
    batch = next(iter(loader))
    assert batch["labels"].shape == (5, 12) and batch["labels"].dtype == torch.float32
    for modality, dim in dataset.modality_dims.items():
        features, mask = batch["features"][modality], batch["masks"][modality]
        lengths = [len(frame[modality].iloc[i]) for i in range(5)]
        assert features.shape == (5, max(lengths), dim) and mask.dtype == torch.bool
        assert mask.sum(1).tolist() == lengths
        assert torch.all(features[~mask] == 0)
        real = np.stack(list(frame[modality].iloc[0]))
        np.testing.assert_array_equal(features[0, : lengths[0]].numpy(), real)
    np.testing.assert_array_equal(batch["labels"][2].numpy(), np.asarray(frame["label_vector"].iloc[2], np.float32))


def test_modalities_and_folds_select(built):
    base, _, _ = built
    dataset = nemu.MMERDataset(base / "out", None, modalities=["audio"], folds=[0, 1])
    assert list(dataset[0]["features"]) == ["audio"] and len(dataset) == 4
    with pytest.raises(ValueError, match="no modality 'video'"):
        nemu.MMERDataset(base / "out", "train", modalities=["video"])


def test_collate_keeps_an_empty_modality_well_formed():
    items = [{"id": str(i), "features": {"comments": torch.zeros(0, 3)}, "labels": torch.zeros(2)} for i in range(2)]
    batch = nemu.collate(items)
    assert batch["features"]["comments"].shape == (2, 1, 3) and not batch["masks"]["comments"].any()


def test_pyarrow_recipe(built):
    base, _, _ = built
    table = ds.dataset(base / "out" / "train", format="parquet").to_table()
    assert table.num_rows == 16
    assert table.schema.field("audio").type.value_type.list_size == 74
    assert b"mmer.manifest" in table.schema.metadata


def test_hugging_face_datasets_recipe(built, tmp_path):
    datasets = pytest.importorskip("datasets")
    base, _, _ = built
    out = base / "out"
    loaded = datasets.load_dataset(
        "parquet", data_files={s: str(out / s / "*.parquet") for s in ("train", "valid", "test")},
        cache_dir=str(tmp_path / "hf-cache"))
    assert {s: len(loaded[s]) for s in loaded} == {"train": 16, "valid": 2, "test": 2}
    row = loaded["train"].with_format("numpy")[0]
    assert row["audio"].shape[1] == 74 and row["label_vector"].shape == (12,)
    expected = nemu.load(out, "train").iloc[0]
    assert row["id"] == expected["id"]
