"""NEMu construction: raw records → validated per-record features → Parquet shards with splits.

Stages (each with a progress bar): read and validate records.jsonl; extract per-record features in
``workers`` processes (text nodes and jieba tokens, MFCC windows, CNN image features), each cached
by content hash and settings so a killed build redoes only what is missing; word vectors (given or
trained on the corpus); stratified folds; shards, manifest, dataset card and quarantine report.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from nemu import labels as nemu_labels
from nemu.audio import AudioDecodeError, AudioSettings, extract_audio
from nemu.card import render_dataset_card
from nemu.images import FEATURE_DIMS, ImageDecodeError, ImageEncoder, ImageSettings, resolve_image_settings
from nemu.records import RawRecord, Quarantined, ReadResult, read_records, resolve_media_path, AUDIO_SUFFIXES, IMAGE_SUFFIXES
from nemu.shards import (
    FORMAT_VERSION, Modality, atomic_write_bytes, build_schema, canonical_json, sha256_file, with_manifest,
    write_manifest, write_split,
)
from nemu.splits import N_FOLDS, SPLITS, assign_folds, split_of_fold
from nemu.statistics import table1_statistics
from nemu.text import clean_lyrics, comment_nodes, embed_nodes, load_word_vectors, tokenize, train_word_vectors

CACHE_VERSION = 2  # bump when extraction code changes what it produces
WORD_VECTOR_DIM = 300
TEXT_MODALITIES = ("lyrics", "comments")
QUARANTINE_FILE = "quarantine.jsonl"
TRAINED_VECTORS_FILE = "word_vectors.bin"


class BuildError(RuntimeError):
    pass


@dataclass
class BuildOptions:
    raw_dir: Path
    out_dir: Path
    seed: int = 0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    word_vectors: Path | None = None
    word_vectors_format: str = "auto"
    image_encoder: str = "resnet50"
    image_weights: Path | None = None
    audio: AudioSettings = field(default_factory=AudioSettings)
    max_comment_chars: int = 64
    strict: bool = False
    rows_per_shard: int = 1000
    row_group_rows: int = 100
    cache_dir: Path | None = None  # default OUT/.cache
    progress: bool = True


@dataclass
class BuildSummary:
    input: int
    kept: int
    quarantined: int
    without_emotion_tag: int
    extracted: int
    from_cache: int
    splits: dict[str, int]
    out_dir: Path

    def __str__(self) -> str:
        return (
            f"input {self.input} = kept {self.kept} + quarantined {self.quarantined} + without emotion tag "
            f"{self.without_emotion_tag}\nfeatures: {self.extracted} records extracted, {self.from_cache} from cache\n"
            f"splits: " + ", ".join(f"{s} {n}" for s, n in self.splits.items()) + f"\nwritten to {self.out_dir}"
        )


# ----------------------------------------------------------------------------------------------
# Per-record extraction (runs in worker processes)

_WORKER: dict = {}


def _init_worker(raw_dir: str, cache_dir: str, audio: AudioSettings, image: ImageSettings, max_comment_chars: int):
    import torch

    # One thread per process: parallelism comes from the workers, and single-threaded kernels make
    # the features bit-identical whatever the worker count.
    torch.set_num_threads(1)
    _WORKER.update(raw_dir=Path(raw_dir), cache_dir=Path(cache_dir), audio=audio, image=image,
                   max_comment_chars=max_comment_chars, encoder=None)


def _settings_fingerprint(audio: AudioSettings, image: ImageSettings, max_comment_chars: int) -> dict:
    return {"cache_version": CACHE_VERSION, "audio": audio.to_dict(), "image": image.to_dict(),
            "max_comment_chars": max_comment_chars, "tokenizer": "jieba"}


def _record_key(record: RawRecord, raw_dir: Path, fingerprint: dict) -> str:
    digest = hashlib.sha256()
    content = {"lyrics": record.lyrics, "comments": record.comments, "audio": record.audio, "images": record.images}
    digest.update(canonical_json({"record": content, "settings": fingerprint}).encode("utf-8"))
    for relative in ([record.audio] if record.audio else []) + list(record.images):
        digest.update(sha256_file(raw_dir / relative).encode("ascii"))
    return digest.hexdigest()


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.npz"


def _save_features(path: Path, features: dict) -> None:
    texts = {k: features[k] for k in ("lyrics_text", "lyrics_tokens", "comments_text", "comments_tokens")}
    buffer = io.BytesIO()
    np.savez(buffer, audio=features["audio"], images=features["images"],
             duration=np.float64(features["duration_seconds"] if features["duration_seconds"] is not None else np.nan),
             texts=np.array(json.dumps(texts, ensure_ascii=False)))
    atomic_write_bytes(path, buffer.getvalue())


def _load_features(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            features = json.loads(str(data["texts"]))
            features["audio"] = data["audio"]
            features["images"] = data["images"]
            duration = float(data["duration"])
    except Exception:  # a cache entry torn by a crash is just recomputed
        return None
    features["duration_seconds"] = None if np.isnan(duration) else duration
    return features


def _extract_text(record: RawRecord, max_comment_chars: int) -> dict:
    lyric_lines = clean_lyrics(record.lyrics)
    comments = comment_nodes(record.comments, max_comment_chars)
    return {
        "lyrics_text": lyric_lines,
        "lyrics_tokens": [tokenize(line) for line in lyric_lines],
        "comments_text": comments,
        "comments_tokens": [tokenize(c) for c in comments],
    }


def extract_record(record: RawRecord) -> tuple[str, RawRecord, dict | Quarantined, bool]:
    """("ok", record, features, from_cache) or ("quarantined", record, Quarantined, False)."""
    state = _WORKER
    raw_dir: Path = state["raw_dir"]
    fingerprint = _settings_fingerprint(state["audio"], state["image"], state["max_comment_chars"])
    try:
        key = _record_key(record, raw_dir, fingerprint)
    except OSError as exc:  # the file vanished or is unreadable since validation
        return "quarantined", record, Quarantined(record.id, record.line, "media", f"cannot read: {exc}"), False
    path = _cache_path(state["cache_dir"], key)
    if path.is_file():
        cached = _load_features(path)
        if cached is not None:
            return "ok", record, cached, True
    features = _extract_text(record, state["max_comment_chars"])
    if record.audio is not None:
        try:
            audio_path = resolve_media_path(raw_dir, record.audio, "audio", AUDIO_SUFFIXES)
            features["audio"], features["duration_seconds"] = extract_audio(audio_path, state["audio"])
        except AudioDecodeError as exc:
            return "quarantined", record, Quarantined(record.id, record.line, "audio", f"{record.audio}: {exc}"), False
    else:
        features["audio"] = np.zeros((0, state["audio"].n_mfcc), dtype=np.float32)
        features["duration_seconds"] = None
    if state["encoder"] is None:
        state["encoder"] = ImageEncoder(state["image"])
    try:
        paths = [resolve_media_path(raw_dir, p, f"images[{i}]", IMAGE_SUFFIXES) for i, p in enumerate(record.images)]
        features["images"] = state["encoder"].encode(paths)
    except ImageDecodeError as exc:
        index, reason = exc.args
        return "quarantined", record, Quarantined(
            record.id, record.line, f"images[{index}]", f"{record.images[index]}: {reason}"), False
    _save_features(path, features)
    return "ok", record, features, False


def _run_extraction(records: list[RawRecord], options: BuildOptions, image: ImageSettings, cache_dir: Path):
    init_args = (str(options.raw_dir), str(cache_dir), options.audio, image, options.max_comment_chars)
    bar = dict(total=len(records), desc="extracting features", unit="song", disable=not options.progress,
               file=sys.stderr)
    if options.workers <= 1:
        import torch

        threads = torch.get_num_threads()
        _init_worker(*init_args)
        try:
            yield from tqdm(map(extract_record, records), **bar)
        finally:
            torch.set_num_threads(threads)
        return
    # spawn, not fork: forking a process that has already started torch/OpenMP threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with context.Pool(options.workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from tqdm(pool.imap(extract_record, records, chunksize=1), **bar)


# ----------------------------------------------------------------------------------------------
# Assembling the dataset


def _word_vectors(options: BuildOptions, token_corpus: list[list[str]]):
    """(KeyedVectors, manifest description) from --word-vectors or trained on the corpus."""
    if options.word_vectors is not None:
        vectors = load_word_vectors(options.word_vectors, options.word_vectors_format)
        return vectors, {"source": "file", "file": Path(options.word_vectors).name, "dim": vectors.vector_size,
                         "sha256": sha256_file(options.word_vectors), "vocabulary": len(vectors.key_to_index)}
    sentences = [tokens for tokens in token_corpus if tokens]
    if not sentences:
        raise BuildError("no lyric or comment tokens to train word vectors on; pass --word-vectors PATH")
    vectors = train_word_vectors(sentences, WORD_VECTOR_DIM, options.seed)
    target = options.out_dir / TRAINED_VECTORS_FILE
    tmp = target.with_name(f".{target.name}.tmp")
    vectors.save_word2vec_format(str(tmp), binary=True)
    os.replace(tmp, target)
    return vectors, {"source": "trained on this corpus (gensim Word2Vec skip-gram, window 5, 10 epochs, one "
                               "worker, fixed seed)", "file": TRAINED_VECTORS_FILE, "format": "word2vec-binary",
                     "dim": vectors.vector_size, "vocabulary": len(vectors.key_to_index),
                     "sha256": sha256_file(target)}


def _modalities(text_dim: int, audio: AudioSettings, image: ImageSettings) -> list[Modality]:
    return [
        Modality("lyrics", text_dim, "lyric line (mean of its jieba tokens' word vectors)", sequential=True),
        Modality("comments", text_dim, "comment or comment sentence (mean word vector)", sequential=False),
        Modality("audio", audio.n_mfcc, f"{audio.window_seconds:g} s window of mean-pooled MFCCs", sequential=True),
        Modality("images", image.dim, f"one image ({image.encoder} pooled feature)", sequential=False),
    ]


EXTRA_FIELDS = [
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("lyrics_text", pa.list_(pa.string())),
    pa.field("lyrics_tokens", pa.list_(pa.list_(pa.string()))),
    pa.field("comments_text", pa.list_(pa.string())),
    pa.field("comments_tokens", pa.list_(pa.list_(pa.string()))),
    pa.field("audio_path", pa.string()),
    pa.field("image_paths", pa.list_(pa.string())),
]


def _nodes_array(matrices: list[np.ndarray], dim: int) -> pa.Array:
    lengths = np.array([len(m) for m in matrices], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([m.reshape(-1, dim) for m in matrices]).astype(np.float32).ravel() if matrices else \
        np.zeros(0, np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def _rows_table(rows: list[dict], schema: pa.Schema, modalities: list[Modality]) -> pa.Table:
    columns = {}
    for f in schema:
        if f.name in {m.name for m in modalities}:
            dim = next(m.dim for m in modalities if m.name == f.name)
            columns[f.name] = _nodes_array([r[f.name] for r in rows], dim)
        else:
            columns[f.name] = pa.array([r[f.name] for r in rows], f.type)
    return pa.Table.from_pydict(columns, schema=schema)


def build(options: BuildOptions) -> BuildSummary:
    """Build the dataset described by ``options``; see the module docstring."""
    options.raw_dir, options.out_dir = Path(options.raw_dir), Path(options.out_dir)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(options.cache_dir) if options.cache_dir else options.out_dir / ".cache"
    image = resolve_image_settings(options.image_encoder, options.image_weights)

    read: ReadResult = read_records(options.raw_dir)
    quarantined = list(read.quarantined)
    kept: list[tuple[RawRecord, dict]] = []
    extracted = from_cache = 0
    for status, record, result, cached in _run_extraction(read.records, options, image, cache_dir):
        if status == "ok":
            kept.append((record, result))
            from_cache += cached
            extracted += not cached
        else:
            quarantined.append(result)
    quarantined.sort(key=lambda q: q.line)
    report = "".join(json.dumps(q.to_json(), ensure_ascii=False) + "\n" for q in quarantined)
    atomic_write_bytes(options.out_dir / QUARANTINE_FILE, report.encode("utf-8"))
    if options.strict and quarantined:
        first = quarantined[0]
        raise BuildError(f"--strict: {len(quarantined)} record(s) quarantined, see {options.out_dir / QUARANTINE_FILE}; "
                         f"first: line {first.line} id {first.id!r} field {first.field}: {first.reason}")

    kept.sort(key=lambda item: item[0].id)  # shard content does not depend on line order
    corpus = [tokens for _, f in kept for m in TEXT_MODALITIES for tokens in f[f"{m}_tokens"]]
    vectors, vectors_info = _word_vectors(options, corpus)
    label_matrix = np.array([[name in r.labels for name in nemu_labels.LABEL_NAMES] for r, _ in kept], dtype=np.int8)
    folds = assign_folds(label_matrix, options.seed)

    modalities = _modalities(vectors.vector_size, options.audio, image)
    rows_by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    nodes_without_vectors = 0
    for (record, features), label_row, fold in tqdm(zip(kept, label_matrix, folds), total=len(kept),
                                                    desc="embedding text", disable=not options.progress,
                                                    file=sys.stderr):
        row = {"id": record.id, "labels": list(record.labels),
               "label_ids": np.flatnonzero(label_row).tolist(), "label_vector": label_row.tolist(),
               "fold": int(fold), "title": record.title, "artist": record.artist, "tags": list(record.tags),
               "audio": features["audio"], "images": features["images"],
               "duration_seconds": features["duration_seconds"], "audio_path": record.audio,
               "image_paths": list(record.images)}
        for modality in TEXT_MODALITIES:
            row[f"{modality}_text"] = features[f"{modality}_text"]
            row[f"{modality}_tokens"] = features[f"{modality}_tokens"]
            row[modality], without = embed_nodes(features[f"{modality}_tokens"], vectors)
            nodes_without_vectors += without
        rows_by_split[split_of_fold(int(fold))].append(row)

    counts = {"input": read.input_count, "kept": len(kept), "quarantined": len(quarantined),
              "without_emotion_tag": len(read.without_emotion), "text_nodes_without_word_vectors": nodes_without_vectors}
    assert counts["input"] == counts["kept"] + counts["quarantined"] + counts["without_emotion_tag"]
    facts = {
        "format_version": FORMAT_VERSION,
        "dataset": "NEMu",
        "labels": list(nemu_labels.LABEL_NAMES),
        "label_names_zh": list(nemu_labels.CHINESE_NAMES),
        "modalities": [m.to_dict() for m in modalities],
        "text_columns": {m: {"text": f"{m}_text", "tokens": f"{m}_tokens"} for m in TEXT_MODALITIES},
        "settings": {
            "seed": options.seed,
            "audio": options.audio.to_dict() | {"library": "librosa"},
            "image": image.to_dict(),
            "text": {"tokenizer": "jieba (accurate mode, punctuation dropped)", "node_feature": "mean word vector",
                     "max_comment_chars": options.max_comment_chars, "word_vectors": vectors_info},
            "splits": {"n_folds": N_FOLDS, "method": "iterative stratification (iterative-stratification "
                       "MultilabelStratifiedKFold, shuffled with the seed)",
                       "rule": "test = fold 0, valid = fold 1, train = folds 2-9 (rotation 0 of 10-fold CV)"},
        },
        "counts": counts,
    }
    schema = build_schema(len(nemu_labels.LABEL_NAMES), modalities, EXTRA_FIELDS)
    tables = {split: _rows_table(rows, schema, modalities) for split, rows in rows_by_split.items()}
    facts["statistics"] = table1_statistics(tables, nemu_labels.LABEL_NAMES, [f"{m}_tokens" for m in TEXT_MODALITIES])
    schema = with_manifest(schema, facts)
    shards = {}
    for split in tqdm(SPLITS, desc="writing shards", disable=not options.progress, file=sys.stderr):
        shards[split] = write_split(tables[split].cast(schema), options.out_dir, split, options.rows_per_shard,
                                    options.row_group_rows)
    manifest = facts | {"shards": shards}
    (options.out_dir / "DATASET_CARD.md").write_text(render_dataset_card(manifest), encoding="utf-8")
    write_manifest(options.out_dir, manifest)
    return BuildSummary(input=counts["input"], kept=len(kept), quarantined=len(quarantined),
                        without_emotion_tag=len(read.without_emotion), extracted=extracted, from_cache=from_cache,
                        splits={s: t.num_rows for s, t in tables.items()}, out_dir=options.out_dir)
