"""Loading through the toolkit: pandas and torch (nemu.load, MMERDataset); the other tools are in test_formats.py."""

from __future__ import annotations

import numpy as np
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


def test_validation_is_the_valid_split_under_either_name(built):
    out = built[0] / "out"
    assert list(nemu.load(out, "validation")["id"]) == list(nemu.load(out, "valid")["id"])
    assert nemu.MMERDataset(out, "validation").ids == nemu.MMERDataset(out, "valid").ids
    assert len(nemu.MMERDataset(out, "validation")) == sum(e["rows"] for e in nemu.read_manifest(out)["shards"]["valid"])
    with pytest.raises(ValueError, match="no split 'Validation'"):  # names are exact; no guessing
        nemu.load(out, "Validation")


# pyarrow, Hugging Face datasets, polars and DuckDB: tests/test_formats.py
