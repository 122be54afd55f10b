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

from nemu.normalization import NodeStatistics, check_setting
from nemu.shards import DatasetMismatch, check_shard, dataset_fingerprint, published_root, read_manifest, sha256_file
from nemu.splits import SPLITS, cv_rotation, split_key


def shard_paths(root: Path, manifest: dict, split: str | None, shown_root: Path | None = None) -> list[Path]:
    """The split's shard paths (all splits when ``split`` is None), each checked cheaply against the manifest:
    it exists, has the listed size in bytes and the listed row count in its Parquet footer. A folder whose
    shards do not match its manifest is refused with DatasetMismatch (a ValueError) naming the shard, as
    ``shown_root/path`` (``root`` by default; nemu.load passes the folder the user named)."""
    splits = SPLITS if split is None else (split_key(split),)  # "validation" and "valid" name one split
    unknown = [s for s in splits if s not in manifest["shards"]]
    if unknown:
        raise ValueError(f"{shown_root or root}: no split {unknown[0]!r}; the dataset has "
                         f"{', '.join(manifest['shards'])}")
    paths = []
    for s in splits:
        for entry in manifest["shards"][s]:
            path = Path(root) / entry["path"]
            check_shard(path, entry, Path(shown_root or root) / entry["path"])
            paths.append(path)
    return paths


def verify(root: Path) -> None:
    """Check every shard against the manifest: the cheap checks of ``shard_paths`` and its sha256.
    Raises DatasetMismatch (a ValueError) naming the first shard that differs."""
    generation = published_root(root)
    manifest = read_manifest(generation)
    for entries in manifest["shards"].values():
        for entry in entries:
            path, shown = generation / entry["path"], Path(root) / entry["path"]
            check_shard(path, entry, shown)
            if sha256_file(path) != entry["sha256"]:
                raise DatasetMismatch(f"{shown}: sha256 differs from the one in {root}/manifest.json; "
                                      f"the shard is damaged or was replaced (rebuild the dataset)")


def read_table(root: Path, split: str | None = None, columns: Sequence[str] | None = None,
               folds: Iterable[int] | None = None) -> pa.Table:
    """One Arrow table of the split's shards (all splits when ``split`` is None), optionally some folds.

    The folder is resolved once (``published_root``), so the manifest and the shards read are one build's
    even while a rebuild publishes another; should that rebuild retire the shards mid-read, the read starts
    again on the new build."""
    filters = [("fold", "in", sorted(set(folds)))] if folds is not None else None
    for attempt in range(3):
        generation = published_root(root)
        manifest = read_manifest(generation)
        try:
            tables = [pq.read_table(path, columns=list(columns) if columns else None, filters=filters)
                      for path in shard_paths(generation, manifest, split, Path(root))]
        except (FileNotFoundError, DatasetMismatch):
            if attempt < 2 and published_root(root) != generation:
                continue  # a rebuild was published while reading
            raise
        return pa.concat_tables(tables)
    raise AssertionError("unreachable")


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


class _DecodedDataset:
    """Every row of one built dataset, decoded once: ids, labels, split and fold per row, and the columns
    decoded so far (node matrices with offsets, extras). Read-only: datasets copy the rows they select."""

    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = root, manifest
        self.dims = {m["name"]: m["dim"] for m in manifest["modalities"]}
        self.label_names: list[str] = list(manifest["labels"])
        # the order of read_table(root, None): the published splits first, then any other the manifest lists
        self.splits = [s for s in SPLITS if s in manifest["shards"]] + [s for s in manifest["shards"]
                                                                       if s not in SPLITS]
        base = [read_table(root, split, ["id", "label_vector", "fold"]) for split in self.splits]
        self.ids = np.array([i for table in base for i in table["id"].to_pylist()], dtype=object)
        self.labels = np.concatenate([
            np.asarray(t["label_vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                       dtype=np.float32).reshape(-1, len(self.label_names)) for t in base])
        self.fold = np.concatenate([t["fold"].to_numpy(zero_copy_only=False).astype(np.int64) for t in base])
        self.split = np.concatenate([np.full(t.num_rows, s, dtype=object) for s, t in zip(self.splits, base)])
        self.columns: dict[str, object] = {}

    def column(self, name: str):
        """(values, offsets) of a modality column, or the raw Arrow column of an extra, decoded once."""
        if name not in self.columns:
            table = pa.concat_tables([read_table(self.root, split, [name]) for split in self.splits])
            self.columns[name] = _node_arrays(table[name], self.dims[name]) if name in self.dims else table[name]
        return self.columns[name]


#: Decoded datasets by (root, manifest fingerprint, shard sizes and times): run_all's cells read the same
#: immutable shards again and again; only the most recently used datasets are kept.
_DECODED: dict[tuple, _DecodedDataset] = {}
_DECODED_KEEP = 2


def _decoded(root: Path) -> _DecodedDataset:
    manifest = read_manifest(root)
    paths = [Path(root) / e["path"] for entries in manifest["shards"].values() for e in entries]
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
            stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            stamps.append((str(path), None, None))  # read_table reports the missing shard
    key = (str(Path(root).resolve()), dataset_fingerprint(manifest), tuple(stamps))
    if key not in _DECODED:
        decoded = _DecodedDataset(Path(root), manifest)
        while len(_DECODED) >= _DECODED_KEEP:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = decoded
    else:
        _DECODED[key] = _DECODED.pop(key)  # most recently used last
    return _DECODED[key]


def clear_cache() -> None:
    """Forget every decoded dataset (the next load reads the shards again)."""
    _DECODED.clear()


def _select_nodes(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nodes of ``rows`` (in that order) as a new (total, dim) matrix with its offsets."""
    counts = offsets[rows + 1] - offsets[rows]
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # index of every selected node: its row's start plus its position within the row
    starts = np.repeat(offsets[rows] - new_offsets[:-1], counts)
    index = starts + np.arange(new_offsets[-1], dtype=np.int64)
    return values[index], new_offsets


class MMERDataset:
    """A torch-style map Dataset over a built dataset: one item per sample.

    Each item is ``{"id": str, "features": {modality: float32 (nodes, dim)}, "labels": float32 (L,)}``;
    pass ``collate`` to a DataLoader to get padded batches with masks.

    ``extra_columns`` adds per-sample targets some models need under ``item["extras"]``: a string column
    naming a label (``dominant_emotion``) becomes the label's index (-1 when null); numeric and
    fixed-size list columns (``intensities``) become float tensors (NaN when null).

    ``normalization`` (a :class:`nemu.normalization.NodeStatistics`) is applied to the node features;
    None keeps them as stored. The statistics used are ``self.normalization`` (None when not normalised).
    :func:`split_datasets` fits them on the training split and applies them to all three splits.
    The decoded shards are cached per process (``clear_cache``); each dataset holds its own copy.
    """

    def __init__(self, root: str | Path, split: str | None = "train", modalities: Sequence[str] | None = None,
                 folds: Iterable[int] | None = None, extra_columns: Sequence[str] = (),
                 normalization=None):
        self.root = Path(root)
        decoded = _decoded(self.root)
        self.manifest = decoded.manifest
        dims = decoded.dims
        chosen = list(modalities) if modalities else list(dims)
        unknown = [m for m in chosen if m not in dims]
        if unknown:
            raise ValueError(f"{self.root}: no modality {unknown[0]!r}; it has {', '.join(dims)}")
        self.modality_dims = {m: dims[m] for m in chosen}
        self.label_names: list[str] = list(decoded.label_names)
        selected = np.ones(len(decoded.ids), dtype=bool)
        if split is not None:  # the splits whose shards shard_paths names for ``split`` (it refuses unknown ones)
            paths = set(shard_paths(self.root, self.manifest, split))
            names = [s for s, entries in self.manifest["shards"].items()
                     if any(self.root / e["path"] in paths for e in entries)]
            selected = np.isin(decoded.split, names)
        if folds is not None:
            selected &= np.isin(decoded.fold, sorted(set(folds)))
        rows = np.flatnonzero(selected)
        self.ids: list[str] = decoded.ids[rows].tolist()
        self.labels = decoded.labels[rows].copy()
        self._nodes = {m: _select_nodes(*decoded.column(m), rows) for m in self.modality_dims}
        self.normalization = None
        if normalization is not None:
            self.apply_normalization(normalization)
        self.extras = {column: self._extra(decoded.column(column).take(pa.array(rows, pa.int64())))
                       for column in extra_columns}

    def apply_normalization(self, statistics) -> None:
        """Normalise the node features with ``statistics`` (once: a normalised dataset refuses another)."""
        if self.normalization is not None:
            raise ValueError(f"{self.root}: features are already normalised ({self.normalization.setting})")
        self._nodes = {m: (statistics.apply(m, values), offsets) for m, (values, offsets) in self._nodes.items()}
        self.normalization = statistics

    def node_values(self) -> dict[str, np.ndarray]:
        """{modality: every real node of this dataset, (nodes, dim)} (no padding), as currently normalised."""
        return {m: values for m, (values, _) in self._nodes.items()}

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
                   extra_columns: Sequence[str] = (), input_normalization: str = "standardize"
                   ) -> dict[str, MMERDataset]:
    """train/valid/test datasets: the published split folders, or cross-validation rotation ``fold``.

    Rotation k takes test = fold k, valid = fold k+1, train = the other folds (``nemu.splits.cv_rotation``).

    ``input_normalization`` is the benchmark protocol's input setting (``nemu.normalization``):
    ``"standardize"`` (default) standardises every modality per dimension with the mean and std of the
    real nodes of *this* train split, applied to all three splits; ``"raw"`` keeps the stored features.
    The statistics are ``datasets["train"].normalization`` (the same object on every split).
    """
    check_setting(input_normalization)
    if fold is None:
        selections = {split: (split, None) for split in SPLITS}
    else:
        selections = {split: (None, folds) for split, folds in cv_rotation(fold).items()}
    train_split, train_folds = selections["train"]
    train = MMERDataset(root, train_split, modalities, folds=train_folds, extra_columns=extra_columns)
    statistics = NodeStatistics.fit(train.node_values(), input_normalization)
    train.apply_normalization(statistics)
    return {split: train if split == "train" else
            MMERDataset(root, split_name, modalities, folds=folds, extra_columns=extra_columns,
                        normalization=statistics)
            for split, (split_name, folds) in selections.items()}


def column_names(root: str | Path) -> list[str]:
    """Every column of the dataset's shards (the schema is the same in every shard)."""
    manifest = read_manifest(Path(root))
    first = next(entry for entries in manifest["shards"].values() for entry in entries)
    return pq.read_schema(Path(root) / first["path"]).names
