"""The one dataset writer: rows to Arrow tables, tables to shards, then card, manifest and the atomic publish.

Every dataset of the toolkit (the NEMu build, MOSEI ingestion) is written here, in one order: each split's
shards into the publisher's staging folder (``nemu.shards.write_shard``, one row group at a time where the
caller streams), the manifest (the caller's facts plus every shard's entry), the dataset card from that
manifest, the manifest file, and ``publisher.commit()``, which swaps the whole dataset in (nemu.publish).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from nemu.card import write_dataset_card
from nemu.publish import DatasetPublisher
from nemu.shards import shard_count, write_manifest, write_shard


def nodes_array(matrices: Sequence, dim: int) -> pa.Array:
    """One modality column: list<fixed_size_list<float32, dim>>, one (nodes, dim) matrix per row."""
    lengths = np.array([len(m) for m in matrices], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([np.asarray(m, np.float32).reshape(-1, dim) for m in matrices]).ravel() \
        if len(matrices) else np.zeros(0, np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner)


def table_from_columns(columns: Mapping[str, Sequence], schema: pa.Schema, node_dims: Mapping[str, int]) -> pa.Table:
    """A table of ``schema`` from its columns' values; the columns named in ``node_dims`` (modality -> dim) hold
    node matrices."""
    arrays = [nodes_array(columns[f.name], node_dims[f.name]) if f.name in node_dims else
              pa.array(columns[f.name], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def rows_table(rows: list[dict], schema: pa.Schema, node_dims: Mapping[str, int]) -> pa.Table:
    """A table of ``schema`` from rows (dicts with every column of the schema)."""
    return table_from_columns({f.name: [row[f.name] for row in rows] for f in schema}, schema, node_dims)


def shard_chunks(items: Sequence, rows_per_shard: int) -> list[Sequence]:
    """``items`` (one split's samples, in row order) cut into its shards' parts; one, possibly empty, at least."""
    return [items[index * rows_per_shard:(index + 1) * rows_per_shard]
            for index in range(shard_count(len(items), rows_per_shard))]


def write_dataset(publisher: DatasetPublisher, facts: dict, schema: pa.Schema,
                  shards: Mapping[str, Sequence[pa.Table | Iterable[pa.Table]]], row_group_rows: int,
                  source: Mapping | None = None) -> dict:
    """Write and publish a dataset; returns its manifest.

    ``shards``: per split, its shards in order, each a table or its row groups (tables of ``schema``, read one at
    a time, so a caller holds one row group of features); ``facts``: the manifest without the shard entries
    (also in every shard's schema metadata); ``source``: where the data came from (nemu.provenance), in the
    manifest and the card only, so the same records give the same shard bytes whether or not their raw folder
    says how it was made. Nothing is visible in OUT until the commit at the end."""
    staging = publisher.path
    written = {split: [write_shard(parts, staging, split, index, len(parts_of_split), row_group_rows)
                       for index, parts in enumerate(parts_of_split)]
               for split, parts_of_split in shards.items()}
    manifest = facts | ({"source": dict(source)} if source is not None else {}) | {"shards": written}
    write_dataset_card(staging, manifest, schema)  # README.md, the card datasets.load_dataset reads
    write_manifest(staging, manifest)
    publisher.commit()
    return manifest
