"""Loading any dataset built in the toolkit's Parquet layout (NEMu, CMU-MOSEI): pandas and torch.

The loaders read exactly the shard files the manifest lists: any other file in a split folder (a stray
``train-00000-of-00003 (copy).parquet``, a user's notes) is ignored and named in an :class:`UnlistedFileWarning`.
Before reading, every shard read is checked against its manifest entry: it exists, has the listed size, row
count and schema (each modality's node width is the manifest's dim, ``label_vector`` as wide as the labels),
and, with ``check_integrity=True`` (the default), the listed sha256 (hashed once per file state and process).
A mismatch raises :class:`nemu.shards.DatasetMismatch` naming the file. ``nemu-verify`` (nemu.integrity) runs
the full check.

Recipes for other tools (tested in tests/test_formats.py) read the manifest's file list, never a glob::

    files = nemu.loading.shard_files("OUT", "train")          # or from OUT/manifest.json, see README.md
    import pyarrow.dataset as ds
    table = ds.dataset(files, format="parquet").to_table()

    from datasets import load_dataset                        # the card lists each split's shard files
    nemu = load_dataset("OUT")
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nemu.integrity import IntegrityWarning, UnlistedFileWarning, unlisted_files, verify_dataset
from nemu.normalization import NodeStatistics, check_setting
from nemu.shards import (DatasetMismatch, check_digest, check_shard, dataset_fingerprint, published_root,
                         read_manifest)
from nemu.splits import SPLITS, cv_rotation, split_key

__all__ = ["IntegrityWarning", "MMERDataset", "UnlistedFileWarning", "collate", "load", "read_table",
           "shard_files", "split_datasets", "verify"]


def _splits_of(root: Path, manifest: dict, split: str | None) -> tuple[str, ...]:
    splits = SPLITS if split is None else (split_key(split),)  # "validation" and "valid" name one split
    unknown = [s for s in splits if s not in manifest["shards"]]
    if unknown:
        raise ValueError(f"{root}: no split {unknown[0]!r}; the dataset has {', '.join(manifest['shards'])}")
    return splits


def shard_paths(root: Path, manifest: dict, split: str | None, shown_root: Path | None = None,
                check_integrity: bool = False) -> list[Path]:
    """The split's shard paths (train, valid and test when ``split`` is None), each checked against the manifest:
    it exists, has the listed size in bytes, the listed row count in its Parquet footer and a schema that agrees
    with the manifest's modality dims and labels (no column data read); with ``check_integrity`` also its
    sha256. A folder whose shards do not match its manifest is refused with DatasetMismatch (a ValueError)
    naming the shard, as ``shown_root/path`` (``root`` by default; nemu.load passes the folder the user named)."""
    shown_root = Path(shown_root or root)
    paths, unchecked = [], []
    for s in _splits_of(shown_root, manifest, split):
        for entry in manifest["shards"][s]:
            path, shown = Path(root) / entry["path"], shown_root / entry["path"]
            check_shard(path, entry, shown, manifest)
            if check_integrity and not check_digest(path, entry, shown):
                unchecked.append(entry["path"])
            paths.append(path)
    if unchecked:
        warnings.warn(IntegrityWarning(
            f"{shown_root}: the manifest records no sha256 for {len(unchecked)} shard(s) ({unchecked[0]}"
            f"{', ...' if len(unchecked) > 1 else ''}; a manifest written before checksums): checked by size, rows "
            f"and schema only; rebuild the dataset to get checksums"), stacklevel=4)
    return paths


def shard_files(root: str | Path, split: str | None = None) -> list[Path]:
    """The shard files the manifest of ``root`` lists for ``split`` (train, valid and test when None), as paths
    under ``root``: the file list to hand to pandas, pyarrow, polars or DuckDB, so that no stray file in a
    split folder is ever read."""
    manifest = read_manifest(Path(root))
    return [Path(root) / entry["path"] for s in _splits_of(Path(root), manifest, split)
            for entry in manifest["shards"][s]]


def warn_unlisted(root: Path, manifest: dict | None = None, stacklevel: int = 3) -> list[Path]:
    """Warn (UnlistedFileWarning) about the files in ``root``'s split folders its manifest does not list, which
    the toolkit's loaders ignore; returns them."""
    stray = unlisted_files(root, manifest)
    if stray:
        names = ", ".join(str(path) for path in stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        warnings.warn(UnlistedFileWarning(
            f"{root}: {len(stray)} file(s) in its split folders are not listed in its manifest and are ignored: "
            f"{names} (move them out of the dataset folder; glob readers such as "
            f"pd.read_parquet('{root}/train') would read them)"), stacklevel=stacklevel)
    return stray


def verify(root: Path) -> None:
    """The full check of ``nemu-verify`` (nemu.integrity.verify_dataset): every listed shard present, with its
    size, sha256, row count and schema as the manifest lists, its data readable. Raises DatasetMismatch (a
    ValueError) with the first problem found; files the manifest does not list are named in an
    UnlistedFileWarning (the loaders ignore them)."""
    report = verify_dataset(Path(root))
    if report.unlisted:
        warn_unlisted(Path(root), stacklevel=3)
    for note in report.warnings:
        if "no sha256" in note:
            warnings.warn(IntegrityWarning(note), stacklevel=2)
    if report.problems:
        raise DatasetMismatch(report.problems[0] + (f" (and {len(report.problems) - 1} more problem(s): "
                                                    f"nemu-verify {root} lists them)"
                                                    if len(report.problems) > 1 else ""))


def _read_table(root: Path, split: str | None, columns: Sequence[str] | None, folds: Iterable[int] | None,
                check_integrity: bool, warn: bool) -> pa.Table:
    filters = [("fold", "in", sorted(set(folds)))] if folds is not None else None
    for attempt in range(3):
        generation = published_root(root)
        manifest = read_manifest(generation)
        try:
            paths = shard_paths(generation, manifest, split, Path(root), check_integrity)
            tables = []
            for path in paths:
                try:
                    tables.append(pq.read_table(path, columns=list(columns) if columns else None, filters=filters))
                except FileNotFoundError:
                    raise
                except (pa.ArrowException, OSError) as exc:  # a damaged shard read with check_integrity=False
                    raise DatasetMismatch(f"{Path(root) / path.relative_to(generation)}: cannot be read "
                                          f"({exc}); the shard is damaged (rebuild the dataset)") from None
        except (FileNotFoundError, DatasetMismatch):
            if attempt < 2 and published_root(root) != generation:
                continue  # a rebuild was published while reading
            raise
        if warn:
            warn_unlisted(Path(root), manifest, stacklevel=4)
        return pa.concat_tables(tables)
    raise AssertionError("unreachable")


def read_table(root: Path, split: str | None = None, columns: Sequence[str] | None = None,
               folds: Iterable[int] | None = None, check_integrity: bool = True) -> pa.Table:
    """One Arrow table of the split's shards (all splits when ``split`` is None), optionally some folds.

    Only the shards the manifest lists are read (other files in the split folders: UnlistedFileWarning), each
    checked first (``shard_paths``; ``check_integrity=False`` skips the sha256 only).
    The folder is resolved once (``published_root``), so the manifest and the shards read are one build's
    even while a rebuild publishes another; should that rebuild retire the shards mid-read, the read starts
    again on the new build."""
    return _read_table(Path(root), split, columns, folds, check_integrity, warn=True)


def load(root: str | Path, split: str | None = "train", columns: Sequence[str] | None = None,
         check_integrity: bool = True):
    """A pandas DataFrame of one split (or all splits when ``split`` is None): ``read_table`` as pandas, the
    shards' sha256 checked unless ``check_integrity=False``."""
    return _read_table(Path(root), split, columns, None, check_integrity, warn=True).to_pandas()


def _node_arrays(column: pa.ChunkedArray, dim: int, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(all nodes as one (total, dim) float32 matrix, per-row offsets) of a list<fixed_size_list> column.

    A column whose nodes are not ``dim`` wide (the manifest's dim) is refused, never reshaped to ``dim``."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    inner = array.values
    if pa.types.is_fixed_size_list(inner.type):
        widths = {inner.type.list_size} if len(inner) else set()
    else:
        widths = set(np.unique(pc.list_value_length(inner).to_numpy(zero_copy_only=False)).tolist())
    wrong = sorted(w for w in widths if w != dim)
    if wrong:
        raise DatasetMismatch(f"modality {name!r}: the manifest's dim is {dim} but the shards' nodes are "
                              f"{wrong[0]} wide; the manifest does not describe these shards (rebuild the dataset)")
    values = inner.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
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
        base = [_read_table(root, split, ["id", "label_vector", "fold"], None, False, False)
                for split in self.splits]
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
            table = pa.concat_tables([_read_table(self.root, split, [name], None, False, False)
                                      for split in self.splits])
            self.columns[name] = _node_arrays(table[name], self.dims[name], name) if name in self.dims \
                else table[name]
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


def _check_dataset(root: Path, check_integrity: bool) -> None:
    """Check every shard the manifest lists (``shard_paths``), and warn about files it does not list."""
    generation = published_root(root)
    manifest = read_manifest(generation)
    for split in manifest["shards"]:
        shard_paths(generation, manifest, split, root, check_integrity)
    warn_unlisted(root, manifest, stacklevel=4)


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

    Every shard of the dataset (all are decoded) is checked first, its sha256 included unless
    ``check_integrity=False`` (``shard_paths``); files the manifest does not list are ignored
    (UnlistedFileWarning).

    ``normalization`` (a :class:`nemu.normalization.NodeStatistics`) is applied to the node features;
    None keeps them as stored. The statistics used are ``self.normalization`` (None when not normalised).
    :func:`split_datasets` fits them on the training split and applies them to all three splits.
    The decoded shards are cached per process (``clear_cache``); each dataset holds its own copy.
    """

    def __init__(self, root: str | Path, split: str | None = "train", modalities: Sequence[str] | None = None,
                 folds: Iterable[int] | None = None, extra_columns: Sequence[str] = (),
                 normalization=None, check_integrity: bool = True):
        self.root = Path(root)
        _check_dataset(self.root, check_integrity)
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
                   extra_columns: Sequence[str] = (), input_normalization: str = "standardize",
                   check_integrity: bool = True) -> dict[str, MMERDataset]:
    """train/valid/test datasets: the published split folders, or cross-validation rotation ``fold``.

    Rotation k takes test = fold k, valid = fold k+1, train = the other folds (``nemu.splits.cv_rotation``).

    ``input_normalization`` is the benchmark protocol's input setting (``nemu.normalization``):
    ``"standardize"`` (default) standardises every modality per dimension with the mean and std of the
    real nodes of *this* train split, applied to all three splits; ``"raw"`` keeps the stored features.
    The statistics are ``datasets["train"].normalization`` (the same object on every split).
    ``check_integrity`` is MMERDataset's (the shards' sha256, checked by default; hashed once per process).
    """
    check_setting(input_normalization)
    if fold is None:
        selections = {split: (split, None) for split in SPLITS}
    else:
        selections = {split: (None, folds) for split, folds in cv_rotation(fold).items()}
    train_split, train_folds = selections["train"]
    train = MMERDataset(root, train_split, modalities, folds=train_folds, extra_columns=extra_columns,
                        check_integrity=check_integrity)
    statistics = NodeStatistics.fit(train.node_values(), input_normalization)
    train.apply_normalization(statistics)
    return {split: train if split == "train" else
            MMERDataset(root, split_name, modalities, folds=folds, extra_columns=extra_columns,
                        normalization=statistics, check_integrity=check_integrity)
            for split, (split_name, folds) in selections.items()}


def column_names(root: str | Path) -> list[str]:
    """Every column of the dataset's shards (the schema is the same in every shard)."""
    manifest = read_manifest(Path(root))
    first = next(entry for entries in manifest["shards"].values() for entry in entries)
    return pq.read_schema(Path(root) / first["path"]).names
