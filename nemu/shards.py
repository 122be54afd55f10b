"""The one Parquet layout every MMER dataset in this toolkit uses (NEMu, CMU-MOSEI, ...).

``OUT/{train,valid,test}/{split}-{i:05d}-of-{n:05d}.parquet`` with an explicit Arrow schema:

- ``id`` string, ``labels`` list<string>, ``label_vector`` fixed_size_list<int8, L>, ``fold`` int8,
- one column per modality: list<fixed_size_list<float32, dim>> (a sample's nodes; may be empty),
- ``duration_seconds`` float32, plus dataset-specific columns (texts, tokens, source paths, ...).

``label_ids`` list<int64> holds the same labels as ``labels``, as indices into the label names: Hugging Face
``datasets`` reads it as a list of ``ClassLabel`` (the names travel in each shard's schema metadata under
``huggingface``, datasets' own key), while ``labels`` stays plain strings for pandas, polars and DuckDB users.

``OUT/manifest.json`` lists the label names (the order of ``label_vector``), the modalities and their
dims, the extractor settings, the counts and the sha256 of every shard; the same facts (all but the
shard digests, which cannot contain themselves) are in each shard's schema metadata under
``mmer.manifest``. Consumers read dimensions from there, never from code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nemu.atomic import atomic_write_bytes

MANIFEST_FILE = "manifest.json"
SCHEMA_METADATA_KEY = b"mmer.manifest"
HF_METADATA_KEY = b"huggingface"  # the key datasets reads its features from (Features.from_arrow_schema)
LABEL_IDS = "label_ids"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Modality:
    name: str  # also the feature column's name
    dim: int
    node: str  # what one node is, e.g. "lyric line" or "1 s audio window"
    sequential: bool  # whether node order is meaningful (time series) or the nodes are a set

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "node": self.node, "sequential": self.sequential}


def node_features_type(dim: int) -> pa.DataType:
    return pa.list_(pa.list_(pa.float32(), dim))


def build_schema(num_labels: int, modalities: list[Modality], extra_fields: list[pa.Field]) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        # nullable (never null in practice): datasets applies its metadata features only to a field equal to
        # the one they describe, and datasets' fields are nullable
        pa.field(LABEL_IDS, pa.list_(pa.int64())),
        pa.field("label_vector", pa.list_(pa.int8(), num_labels), nullable=False),
        pa.field("fold", pa.int8(), nullable=False),
        *(pa.field(m.name, node_features_type(m.dim), nullable=False) for m in modalities),
        pa.field("duration_seconds", pa.float32()),
        *extra_fields,
    ]
    return pa.schema(fields)


def label_ids(label_vector) -> list[int]:
    """The ``label_ids`` value of one sample: the indices of the labels present in its 0/1 ``label_vector``."""
    return [index for index, present in enumerate(label_vector) if present]


# Arrow value types and the names datasets' ``Value`` gives them
_HF_DTYPES = {pa.string(): "string", pa.large_string(): "large_string", pa.bool_(): "bool", pa.int8(): "int8",
              pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64", pa.uint8(): "uint8",
              pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}


def _hf_feature(arrow_type: pa.DataType) -> dict | None:
    """datasets' serialised feature (``Features.to_dict`` form) for an Arrow type; None where it has none.

    Lists are written as ``Sequence`` (with ``length`` for a fixed size), which every datasets release reads
    (datasets >= 4 turns it into ``List``), so the fixed feature sizes survive ``load_dataset``."""
    if arrow_type in _HF_DTYPES:
        return {"dtype": _HF_DTYPES[arrow_type], "_type": "Value"}
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        inner = _hf_feature(arrow_type.value_type)
        if inner is None:
            return None
        sized = {"length": arrow_type.list_size} if pa.types.is_fixed_size_list(arrow_type) else {}
        return {"feature": inner, **sized, "_type": "Sequence"}
    return None


def hf_features(schema: pa.Schema, label_names: list[str]) -> dict:
    """The Hugging Face ``datasets`` features of a shard schema: every column as datasets would infer it from
    the Arrow types (fixed-size lists keep their length), and ``label_ids`` a list of ``ClassLabel`` with the
    label names, in column order."""
    features = {}
    for field in schema:
        if field.name == LABEL_IDS:
            features[field.name] = {"feature": {"names": list(label_names), "_type": "ClassLabel"}, "_type": "Sequence"}
        elif (feature := _hf_feature(field.type)) is not None:
            features[field.name] = feature
    return features


def with_manifest(schema: pa.Schema, facts: dict) -> pa.Schema:
    """The schema carrying the manifest's facts as metadata, so a plain pyarrow read keeps them, and datasets'
    own features metadata (key ``huggingface``), so ``datasets`` reads ``label_ids`` as ``ClassLabel``s."""
    huggingface = {"info": {"features": hf_features(schema, facts["labels"])}}
    return schema.with_metadata({SCHEMA_METADATA_KEY: canonical_json(facts).encode("utf-8"),
                                 HF_METADATA_KEY: json.dumps(huggingface, ensure_ascii=False).encode("utf-8")})


def canonical_json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


KILL_AT_ENV = "NEMU_TEST_KILL_AT"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook: with NEMU_TEST_KILL_AT=<name> (or <name>:<k>, the k-th time) this process SIGKILLs itself here,
    as a power cut or the OOM killer would. Inert when the variable is unset (tests/test_build_integrity.py)."""
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if wanted in (name, f"{name}:{_fault_hits[name]}"):
        os.kill(os.getpid(), signal.SIGKILL)


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def shard_name_pattern(split: str) -> re.Pattern:
    return re.compile(rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}\.parquet")


def shard_count(rows: int, rows_per_shard: int) -> int:
    """How many shards a split of ``rows`` rows is written as (one, possibly empty, at least)."""
    return max(1, -(-rows // rows_per_shard))


def write_shard(parts: pa.Table | Iterable[pa.Table], out_dir: Path, split: str, index: int, count: int,
                row_group_rows: int) -> dict:
    """Write shard ``index`` of ``count`` of one split atomically into ``out_dir/split``; its manifest entry.

    ``parts`` is the shard's table, or its row groups one table at a time (each ``row_group_rows`` rows but the
    last, all with the shard's schema): a streaming writer (nemu.writer) holds one row group of features, not
    a shard's. Both give the same bytes."""
    split_dir = Path(out_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    name = shard_name(split, index, count)
    sink = pa.BufferOutputStream()
    writer = None
    rows = 0
    for part in [parts] if isinstance(parts, pa.Table) else parts:
        if writer is None:
            writer = pq.ParquetWriter(sink, part.schema, compression="zstd", write_statistics=["id", "fold"])
        # Small row groups so readers can stream a shard without holding all of it in memory.
        writer.write_table(part, row_group_size=row_group_rows)
        rows += part.num_rows
    if writer is None:
        raise ValueError(f"{split}/{name}: no table to write")
    writer.close()
    data = sink.getvalue().to_pybytes()
    atomic_write_bytes(split_dir / name, data)
    fault_point("shard-written")
    return {"path": f"{split}/{name}", "rows": rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(out_dir: Path, manifest: dict) -> None:
    atomic_write_bytes(Path(out_dir) / MANIFEST_FILE, (canonical_json(manifest) + "\n").encode("utf-8"))


def dataset_fingerprint(manifest: dict) -> str:
    """The identity of one build: sha256 of the canonical manifest (labels, modalities, settings, counts and
    every shard's sha256), so a rebuild with other input, seed or settings gets another fingerprint and a
    byte-identical rebuild the same one. Results and runs record it; they are never reused across fingerprints."""
    return hashlib.sha256(canonical_json(manifest).encode("utf-8")).hexdigest()


class DatasetNotFound(FileNotFoundError):
    """A dataset folder that does not exist, or a folder that exists but holds no built dataset (no manifest).
    The message says which: "does not exist" only for a path that is not there."""


class DatasetMismatch(ValueError):
    """A dataset folder whose shards are not the ones its manifest lists (missing, other size, rows, checksum or
    schema), or whose manifest contradicts its shards (a modality's dim, the number of labels)."""


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_problem(manifest) -> str | None:
    """What makes ``manifest`` (parsed JSON) unusable as a dataset's manifest, or None."""
    if not isinstance(manifest, dict):
        return f"not a JSON object but {type(manifest).__name__}"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"format_version {manifest.get('format_version')} is not {FORMAT_VERSION}"
    labels = manifest.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(name, str) for name in labels):
        return "'labels' is not a non-empty list of label names"
    if len(set(labels)) != len(labels):
        return f"'labels' names {sorted({n for n in labels if labels.count(n) > 1})[0]!r} twice"
    modalities = manifest.get("modalities")
    if not isinstance(modalities, list) or not all(isinstance(m, dict) for m in modalities):
        return "'modalities' is not a list of {name, dim} objects"
    names = [m.get("name") for m in modalities]
    for modality in modalities:
        if not isinstance(modality.get("name"), str) or not modality["name"]:
            return f"a modality without a name: {modality}"
        dim = modality.get("dim")
        if not _is_count(dim) or dim == 0:
            return f"modality {modality['name']!r}: dim {dim!r} is not a positive integer"
        if names.count(modality["name"]) > 1:
            return f"modality {modality['name']!r} is listed twice"
    shards = manifest.get("shards")
    if not isinstance(shards, dict) or not all(isinstance(v, list) for v in shards.values()):
        return "'shards' is not an object of split -> list of shard entries"
    seen = set()
    for split, entries in shards.items():
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                return f"split {split!r}: a shard entry without a path: {entry!r}"
            path = entry["path"]
            parts = path.split("/")
            if path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in parts) \
                    or len(parts) < 2:
                return f"shard path {path!r} is not a file inside a split folder of the dataset"
            if path in seen:
                return f"shard {path!r} is listed twice"
            seen.add(path)
            if not _is_count(entry.get("rows")):
                return f"{path}: rows {entry.get('rows')!r} is not a count"
            if "bytes" in entry and not _is_count(entry["bytes"]):
                return f"{path}: bytes {entry['bytes']!r} is not a count"
            if "sha256" in entry and not (isinstance(entry["sha256"], str) and _SHA256.fullmatch(entry["sha256"])):
                return f"{path}: sha256 {entry['sha256']!r} is not a sha256 digest"
    return None


def read_manifest(root: Path) -> dict:
    """The manifest of the dataset folder ``root``.

    A path that is not there: DatasetNotFound "ROOT: does not exist"; a folder (or file) that is there but holds
    no manifest: DatasetNotFound "not a built dataset folder"; a manifest that is not valid JSON or not a
    manifest (labels, modalities with positive dims, shard entries with relative paths and counts): ValueError
    naming the file and what is wrong."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        if not root.exists() and not root.is_symlink():
            raise DatasetNotFound(f"{root}: does not exist (no such dataset folder); pass the OUT folder of "
                                  f"nemu-build or nemu-build-mosei")
        if not root.is_dir():
            raise DatasetNotFound(f"{root}: is a file, not a built dataset folder (a folder holding "
                                  f"{MANIFEST_FILE})")
        if path.is_symlink():
            raise DatasetNotFound(f"{path}: a link to {os.readlink(path)}, which is missing; the folder is not a "
                                  f"whole dataset (rebuild it)")
        raise DatasetNotFound(f"{root}: not a built dataset folder (no {MANIFEST_FILE} in it); build it first")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not a valid manifest ({type(exc).__name__}: {exc}); the file is damaged "
                         f"(rebuild the dataset)") from None
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    return manifest


def published_root(root: Path) -> Path:
    """The folder holding the manifest and shards that ``root`` shows now.

    ``root`` itself for a plain folder; for one published by a build (OUT/manifest.json a link into
    OUT/.builds/, see nemu.publish) the generation folder behind the link, so a reader that resolves once
    reads one build's manifest and shards even while a rebuild swaps in another."""
    manifest = Path(root) / MANIFEST_FILE
    return Path(os.path.realpath(manifest)).parent if manifest.is_symlink() else Path(root)


def _modality_width(arrow_type: pa.DataType) -> int | None | str:
    """The node width a modality column's type fixes (list<fixed_size_list<float, w>>: w), None for a
    list<list<float>> (the width is in the data), or a description of a type that holds no node matrices."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner = arrow_type.value_type
        if pa.types.is_fixed_size_list(inner) and pa.types.is_floating(inner.value_type):
            return inner.list_size
        if (pa.types.is_list(inner) or pa.types.is_large_list(inner)) and pa.types.is_floating(inner.value_type):
            return None
    return f"{arrow_type}, not a list of node vectors"


def check_schema(schema: pa.Schema, manifest: dict, shown: Path) -> None:
    """The shard's Arrow schema against the manifest: a column per manifest modality whose node width is the
    manifest's dim, and ``label_vector`` as wide as the manifest's labels. Raises DatasetMismatch naming the
    shard, the modality (or column), the manifest's value and the shard's."""
    names = set(schema.names)
    for modality in manifest["modalities"]:
        name, dim = modality["name"], modality["dim"]
        if name not in names:
            raise DatasetMismatch(f"{shown}: the manifest lists modality {name!r} (dim {dim}) but the shard has no "
                                  f"column {name!r}; the manifest does not describe these shards (rebuild the "
                                  f"dataset, or restore its {MANIFEST_FILE})")
        width = _modality_width(schema.field(name).type)
        if isinstance(width, str):
            raise DatasetMismatch(f"{shown}: modality {name!r}: column type {width}")
        if width is not None and width != dim:
            raise DatasetMismatch(f"{shown}: modality {name!r}: the manifest's dim is {dim} but the shard's nodes "
                                  f"are {width} wide; the manifest does not describe these shards (was it edited? "
                                  f"rebuild the dataset, or restore its {MANIFEST_FILE})")
    if "label_vector" in names:
        kind = schema.field("label_vector").type
        if pa.types.is_fixed_size_list(kind) and kind.list_size != len(manifest["labels"]):
            raise DatasetMismatch(f"{shown}: label_vector is {kind.list_size} wide but the manifest lists "
                                  f"{len(manifest['labels'])} labels; the manifest does not describe these shards "
                                  f"(rebuild the dataset, or restore its {MANIFEST_FILE})")


def check_shard(path: Path, entry: dict, shown_as: Path | None = None, manifest: dict | None = None) -> None:
    """Cheap check of one shard against its manifest entry: it exists, has the listed size in bytes (when the
    manifest records it) and the listed row count in its Parquet footer, and (given the ``manifest``) its
    schema agrees with the manifest's modality dims and labels (``check_schema``). No column data is read.
    Raises DatasetMismatch naming it."""
    shown = shown_as or path
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        raise DatasetMismatch(f"{shown}: listed in the manifest but missing; the folder is not one whole "
                              f"dataset (rebuild it)") from None
    if "bytes" in entry and size != entry["bytes"]:
        raise DatasetMismatch(f"{shown}: {size} bytes, the manifest lists {entry['bytes']}; the folder is not "
                              f"the dataset its manifest describes (rebuild it)")
    try:
        metadata = pq.ParquetFile(path).metadata
        schema = metadata.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:
        raise DatasetMismatch(f"{shown}: not a readable Parquet file ({exc}); rebuild the dataset") from None
    if metadata.num_rows != entry["rows"]:
        raise DatasetMismatch(f"{shown}: {metadata.num_rows} rows, the manifest lists {entry['rows']}; the folder "
                              f"is not the dataset its manifest describes (rebuild it)")
    if manifest is not None:
        check_schema(schema, manifest, shown)


#: sha256 digests computed in this process, by file identity and state (device, inode, size, mtime, ctime):
#: a shard read again unchanged is not hashed again; any write to it (which changes its ctime) is.
_DIGESTS: dict[tuple, str] = {}


def shard_digest(path: Path) -> str:
    """The sha256 of the file at ``path``, computed once per state of the file in this process."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = sha256_file(path)
        if len(_DIGESTS) > 4096:
            _DIGESTS.clear()
        _DIGESTS[key] = digest
    return digest


def check_digest(path: Path, entry: dict, shown_as: Path | None = None) -> bool:
    """The shard's sha256 against its manifest entry; False when the entry records none (a manifest written
    before checksums: nothing to compare). Raises DatasetMismatch naming the shard when they differ."""
    if "sha256" not in entry:
        return False
    if shard_digest(path) != entry["sha256"]:
        raise DatasetMismatch(f"{shown_as or path}: sha256 differs from the one in the manifest; the shard is "
                              f"damaged or was replaced (rebuild the dataset)")
    return True
