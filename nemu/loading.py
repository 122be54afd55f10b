"""Loading any dataset built in the toolkit's Parquet layout (NEMu, CMU-MOSEI): pandas and torch.

Recipes for other tools (tested in tests/test_loading.py)::

    import pyarrow.dataset as ds
    table = ds.dataset("OUT/train", format="parquet").to_table()

    from datasets import load_dataset
    nemu = load_dataset("parquet", data_files={s: f"OUT/{s}/*.parquet" for s in ("train", "valid", "test")})
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nemu.shards import read_manifest, sha256_file
from nemu.splits import SPLITS


def shard_paths(root: Path, manifest: dict, split: str | None) -> list[Path]:
    splits = SPLITS if split is None else (split,)
    unknown = [s for s in splits if s not in manifest["shards"]]
    if unknown:
        raise ValueError(f"{root}: no split {unknown[0]!r}; the dataset has {', '.join(manifest['shards'])}")
    return [Path(root) / entry["path"] for s in splits for entry in manifest["shards"][s]]


def verify(root: Path) -> None:
    """Raise ValueError naming the first shard whose sha256 differs from the manifest's."""
    manifest = read_manifest(root)
    for entries in manifest["shards"].values():
        for entry in entries:
            if sha256_file(Path(root) / entry["path"]) != entry["sha256"]:
                raise ValueError(f"{Path(root) / entry['path']}: sha256 differs from {root}/manifest.json")


def read_table(root: Path, split: str | None = None, columns: Sequence[str] | None = None,
               folds: Iterable[int] | None = None) -> pa.Table:
    """One Arrow table of the split's shards (all splits when ``split`` is None), optionally some folds."""
    manifest = read_manifest(root)
    filters = [("fold", "in", sorted(set(folds)))] if folds is not None else None
    tables = [pq.read_table(path, columns=list(columns) if columns else None, filters=filters)
              for path in shard_paths(root, manifest, split)]
    return pa.concat_tables(tables)


def load(root: str | Path, split: str | None = "train", columns: Sequence[str] | None = None):
    """A pandas DataFrame of one split (or all splits when ``split`` is None)."""
    return read_table(Path(root), split, columns).to_pandas()


def _node_arrays(column: pa.ChunkedArray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(all nodes as one (total, dim) float32 matrix, per-row offsets) of a list<fixed_size_list> column."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.values.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    # offsets are relative to a possibly sliced child array; the copy makes the tensors' memory writable
    return values[offsets[0]:offsets[-1]].copy(), offsets - offsets[0]


class MMERDataset:
    """A torch-style map Dataset over a built dataset: one item per sample.

    Each item is ``{"id": str, "features": {modality: float32 (nodes, dim)}, "labels": float32 (L,)}``;
    pass ``collate`` to a DataLoader to get padded batches with masks.

    ``extra_columns`` adds per-sample targets some models need under ``item["extras"]``: a string column
    naming a label (``dominant_emotion``) becomes the label's index (-1 when null); numeric and
    fixed-size list columns (``intensities``) become float tensors (NaN when null).
    """

    def __init__(self, root: str | Path, split: str | None = "train", modalities: Sequence[str] | None = None,
                 folds: Iterable[int] | None = None, extra_columns: Sequence[str] = ()):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        dims = {m["name"]: m["dim"] for m in self.manifest["modalities"]}
        chosen = list(modalities) if modalities else list(dims)
        unknown = [m for m in chosen if m not in dims]
        if unknown:
            raise ValueError(f"{self.root}: no modality {unknown[0]!r}; it has {', '.join(dims)}")
        self.modality_dims = {m: dims[m] for m in chosen}
        self.label_names: list[str] = list(self.manifest["labels"])
        table = read_table(self.root, split, ["id", "label_vector", *chosen, *extra_columns], folds)
        self.ids: list[str] = table["id"].to_pylist()
        self.labels = np.asarray(table["label_vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                                 dtype=np.float32).reshape(-1, len(self.label_names))
        self._nodes = {m: _node_arrays(table[m], dim) for m, dim in self.modality_dims.items()}
        self.extras = {column: self._extra(table[column]) for column in extra_columns}

    def _extra(self, column: pa.ChunkedArray) -> np.ndarray:
        values = column.to_pylist()
        if pa.types.is_string(column.type):
            index = {name: i for i, name in enumerate(self.label_names)}
            return np.array([index.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64)
        width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
        missing = [np.nan] * width if width else np.nan
        return np.array([missing if v is None else v for v in values], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        import torch

        features = {}
        for modality, (values, offsets) in self._nodes.items():
            features[modality] = torch.from_numpy(values[offsets[index]:offsets[index + 1]])
        item = {"id": self.ids[index], "features": features, "labels": torch.from_numpy(self.labels[index])}
        if self.extras:
            item["extras"] = {column: torch.as_tensor(values[index]) for column, values in self.extras.items()}
        return item


def collate(items: list[dict]) -> dict:
    """Pad each modality to the batch's longest node list.

    Returns ``{"ids": [str], "features": {m: (B, S_max, dim)}, "masks": {m: bool (B, S_max)},
    "labels": (B, L)}``; mask True marks a real node. S_max is at least 1, so a batch where no
    sample has a node of some modality still has a well-formed (all-False) mask.
    """
    import torch

    batch_features, batch_masks = {}, {}
    for modality in items[0]["features"]:
        nodes = [item["features"][modality] for item in items]
        longest = max(1, max(len(n) for n in nodes))
        padded = torch.zeros(len(items), longest, nodes[0].shape[-1], dtype=torch.float32)
        mask = torch.zeros(len(items), longest, dtype=torch.bool)
        for row, n in enumerate(nodes):
            padded[row, :len(n)] = n
            mask[row, :len(n)] = True
        batch_features[modality], batch_masks[modality] = padded, mask
    batch = {
        "ids": [item["id"] for item in items],
        "features": batch_features,
        "masks": batch_masks,
        "labels": torch.stack([item["labels"] for item in items]),
    }
    if "extras" in items[0]:
        batch["extras"] = {column: torch.stack([item["extras"][column] for item in items])
                           for column in items[0]["extras"]}
    return batch


def split_datasets(root: str | Path, fold: int | None = None, modalities: Sequence[str] | None = None,
                   extra_columns: Sequence[str] = ()) -> dict[str, MMERDataset]:
    """train/valid/test datasets: the published split folders, or cross-validation rotation ``fold``.

    Rotation k takes test = fold k, valid = fold k+1, train = the other folds (``nemu.splits.cv_rotation``).
    """
    from nemu.splits import cv_rotation

    if fold is None:
        return {split: MMERDataset(root, split, modalities, extra_columns=extra_columns) for split in SPLITS}
    return {split: MMERDataset(root, None, modalities, folds=folds, extra_columns=extra_columns)
            for split, folds in cv_rotation(fold).items()}


def column_names(root: str | Path) -> list[str]:
    """Every column of the dataset's shards (the schema is the same in every shard)."""
    manifest = read_manifest(Path(root))
    first = next(entry for entries in manifest["shards"].values() for entry in entries)
    return pq.read_schema(Path(root) / first["path"]).names
