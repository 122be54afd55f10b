"""The full check of a built dataset folder against its manifest (``nemu-verify OUT``; ``nemu.verify``).

The loaders' own check is the cheap one (``nemu.loading.shard_paths``): size, footer row count, schema and, by
default, the sha256 of each shard they read. ``verify_dataset`` checks everything the manifest claims:

- the manifest is one (valid JSON, labels, modalities with positive dims, shard entries: ``read_manifest``);
- every listed shard is there, with the listed size in bytes and sha256 (a manifest without digests: a warning);
- its Parquet footer has the listed row count, and its data decodes to that many rows;
- its schema is the manifest's: a column per modality whose nodes are the manifest's dim wide, ``label_vector``
  as wide as the labels, the same schema in every shard, and the facts recorded in its schema metadata
  (``mmer.manifest``) equal to the manifest's;
- node features are finite, ids are unique across the dataset, and each split's rows add up to the counts of
  the manifest's statistics;
- files in the split folders that the manifest does not list are named (a warning: every loader of the toolkit
  ignores them, but a glob reader such as ``pd.read_parquet("OUT/train")`` would read them).

(The module is ``nemu.integrity``, not ``nemu.verify``: that name is the function ``nemu.verify``.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nemu.shards import (SCHEMA_METADATA_KEY, DatasetMismatch, DatasetNotFound, check_schema, published_root,
                         read_manifest, sha256_file)

#: manifest keys that are not among the facts each shard's schema metadata records (nemu.writer.write_dataset)
NOT_IN_SHARD_METADATA = ("shards", "source")


class UnlistedFileWarning(UserWarning):
    """Files in a dataset's split folders that its manifest does not list: the toolkit's loaders ignore them."""


class IntegrityWarning(UserWarning):
    """The integrity check could not compare every shard: its manifest records no sha256 for some (a manifest
    written before checksums); those shards are checked by size, row count and schema only."""


def split_folders(manifest: dict) -> list[str]:
    """The folders holding the manifest's shards (each split's), relative to the dataset folder."""
    folders = {entry["path"].split("/")[0] for entries in manifest["shards"].values() for entry in entries}
    return sorted(folders | set(manifest["shards"]))


def unlisted_files(root: Path, manifest: dict | None = None) -> list[Path]:
    """Files (and links) under ``root``'s split folders that the manifest does not list, as paths under
    ``root``, sorted; hidden files included."""
    root = Path(root)
    generation = published_root(root)
    manifest = manifest if manifest is not None else read_manifest(generation)
    listed = {entry["path"] for entries in manifest["shards"].values() for entry in entries}
    stray = []
    for folder in split_folders(manifest):
        top = generation / folder
        if not top.is_dir():
            continue
        for directory, subdirectories, files in os.walk(top):
            here = Path(directory)
            links = [name for name in subdirectories if (here / name).is_symlink()]  # not followed: listed
            for name in sorted(files + links):
                relative = (here / name).relative_to(generation).as_posix()
                if relative not in listed:
                    stray.append(root / relative)
    return sorted(stray)


@dataclass
class VerifyReport:
    """What ``verify_dataset`` found: ``problems`` (the dataset is not what its manifest says) and ``warnings``
    (it is, but something deserves a look), one line each naming the file."""

    root: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unlisted: list[Path] = field(default_factory=list)
    shards: int = 0
    rows: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _facts_differ(schema: pa.Schema, manifest: dict) -> list[str]:
    """The manifest keys whose values differ from the facts in the shard's schema metadata (empty when the
    shard records none, e.g. one rewritten by another tool)."""
    raw = (schema.metadata or {}).get(SCHEMA_METADATA_KEY)
    if raw is None:
        return []
    try:
        facts = json.loads(raw.decode("utf-8"))
    except ValueError:
        return ["(unreadable metadata)"]
    if not isinstance(facts, dict):
        return ["(unreadable metadata)"]
    expected = {k: v for k, v in manifest.items() if k not in NOT_IN_SHARD_METADATA}
    facts = {k: v for k, v in facts.items() if k not in NOT_IN_SHARD_METADATA}
    return sorted(k for k in set(facts) | set(expected) if facts.get(k) != expected.get(k))


def _check_data(path: Path, shown: Path, manifest: dict, ids: dict[str, Path], report: VerifyReport) -> int | None:
    """Decode every row group of one shard: node widths and finiteness, ids. Returns the rows decoded (None when
    the data cannot be decoded: a problem is recorded)."""
    dims = {m["name"]: m["dim"] for m in manifest["modalities"]}
    rows = 0
    try:
        parquet = pq.ParquetFile(path)
        for index in range(parquet.num_row_groups):
            group = parquet.read_row_group(index)
            rows += group.num_rows
            if "id" in group.schema.names:
                for sample in group["id"].to_pylist():
                    if sample in ids:
                        report.problems.append(f"{shown}: id {sample!r} is also in {ids[sample]}; ids must be "
                                               f"unique across the dataset")
                    ids.setdefault(sample, shown)
            for name, dim in dims.items():
                if name not in group.schema.names:
                    continue
                inner = group[name].combine_chunks().values
                widths = pc.list_value_length(inner).to_numpy(zero_copy_only=False) \
                    if not pa.types.is_fixed_size_list(inner.type) else np.full(len(inner), inner.type.list_size)
                if len(widths) and (widths != dim).any():
                    report.problems.append(f"{shown}: modality {name!r}: the manifest's dim is {dim} but nodes are "
                                           f"{int(widths[widths != dim][0])} wide")
                    continue
                values = inner.flatten().to_numpy(zero_copy_only=False)
                bad = int(np.count_nonzero(~np.isfinite(values)))
                if bad:
                    report.problems.append(f"{shown}: modality {name!r}: {bad} non-finite feature value(s) "
                                           f"(NaN or infinite)")
    except (pa.ArrowException, OSError) as exc:
        report.problems.append(f"{shown}: its data cannot be decoded ({exc}); the shard is damaged (rebuild the "
                               f"dataset)")
        return None
    return rows


def verify_dataset(root: str | Path, checksums: bool = True, data: bool = True) -> VerifyReport:
    """Check the dataset folder ``root`` against its manifest (the module docstring lists the checks).

    ``checksums=False`` skips the sha256, ``data=False`` the decoding of the column data. Raises DatasetNotFound
    when ``root`` does not exist or holds no manifest (nothing to verify); every other finding is in the report.
    """
    root = Path(root)
    report = VerifyReport(root)
    generation = published_root(root)
    try:
        manifest = read_manifest(generation)
    except DatasetNotFound:
        if generation != root:  # OUT/manifest.json is a link into a generation that is gone
            report.problems.append(f"{root / 'manifest.json'}: a link to a missing manifest; the folder is not a "
                                   f"whole dataset (rebuild it)")
            return report
        raise
    except ValueError as exc:
        report.problems.append(str(exc).replace(str(generation), str(root), 1))
        return report
    first_schema: tuple[pa.Schema, Path] | None = None
    ids: dict[str, Path] = {}
    unchecksummed = []
    statistics = (manifest.get("statistics") or {}).get("splits") or {}
    for split, entries in manifest["shards"].items():
        split_rows = 0
        for entry in entries:
            path, shown = generation / entry["path"], root / entry["path"]
            report.shards += 1
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                report.problems.append(f"{shown}: listed in the manifest but missing")
                continue
            except OSError as exc:
                report.problems.append(f"{shown}: cannot be read ({exc.strerror or exc})")
                continue
            report.bytes += size
            if "bytes" in entry and size != entry["bytes"]:
                report.problems.append(f"{shown}: {size} bytes, the manifest lists {entry['bytes']}")
                continue
            try:
                metadata = pq.ParquetFile(path).metadata
                schema = metadata.schema.to_arrow_schema()
            except (pa.ArrowException, OSError) as exc:
                report.problems.append(f"{shown}: not a readable Parquet file ({exc})")
                continue
            if metadata.num_rows != entry["rows"]:
                report.problems.append(f"{shown}: {metadata.num_rows} rows, the manifest lists {entry['rows']}")
                continue
            if checksums:
                if "sha256" not in entry:
                    unchecksummed.append(entry["path"])
                elif sha256_file(path) != entry["sha256"]:
                    report.problems.append(f"{shown}: sha256 differs from the one in the manifest; the shard is "
                                           f"damaged or was replaced (rebuild the dataset)")
                    continue
            try:
                check_schema(schema, manifest, shown)
            except DatasetMismatch as exc:
                report.problems.append(str(exc))
                continue
            plain = schema.remove_metadata()
            if first_schema is None:
                first_schema = (plain, shown)
            elif not plain.equals(first_schema[0]):
                report.problems.append(f"{shown}: its schema differs from that of {first_schema[1]}")
            differ = _facts_differ(schema, manifest)
            if differ:
                report.problems.append(f"{shown}: the manifest's {', '.join(differ)} differ(s) from the facts this "
                                       f"shard records in its schema metadata (mmer.manifest); the manifest was "
                                       f"edited or belongs to another build (rebuild the dataset, or restore its "
                                       f"manifest.json)")
            decoded = _check_data(path, shown, manifest, ids, report) if data else metadata.num_rows
            if decoded is not None and decoded != entry["rows"]:
                report.problems.append(f"{shown}: {decoded} rows decoded, the manifest lists {entry['rows']}")
            split_rows += entry["rows"]
        report.rows += split_rows
        listed = sum(entry["rows"] for entry in entries)
        if split in statistics and isinstance(statistics[split], int) and statistics[split] != listed:
            report.problems.append(f"{root / 'manifest.json'}: split {split!r}: its shards list {listed} rows, "
                                   f"its statistics {statistics[split]}")
    if unchecksummed:
        report.warnings.append(f"{root}: the manifest records no sha256 for {len(unchecksummed)} shard(s) "
                               f"({unchecksummed[0]}{', ...' if len(unchecksummed) > 1 else ''}): written before "
                               f"checksums; checked by size, rows, schema and data only")
    report.unlisted = unlisted_files(root, manifest)
    for path in report.unlisted:
        report.warnings.append(f"{path}: not listed in the manifest; the toolkit's loaders ignore it, a glob "
                               f"reader would not (move it out of the dataset folder)")
    return report
