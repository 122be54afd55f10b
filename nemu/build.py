"""NEMu construction: raw records → validated per-record features → Parquet shards with splits.

Stages (each with a progress bar): read and validate records.jsonl; extract per-record features
(nemu.extraction) in ``workers`` local processes (nemu.workers) or on Ray (nemu.ray_engine), each cached by
content hash and settings so a killed build redoes only what is missing; word vectors (given or trained on
the corpus); stratified folds; shards, manifest, dataset card and quarantine report, written and published
by nemu.writer. The build streams (see ``SPOOL_FILE``): its memory does not grow with the number of songs.

A record's failure is that record's (quarantined with a specific reason, see nemu.extraction);
``RecordLimits`` bound what one record may cost, and what they cut is counted in the summary and the
manifest. Songs whose media are byte-identical under different ids are reported and kept in one fold.

The manifest's ``source`` is ``RAW/provenance.json`` (the synthetic sample's generator, seed and size) or, for a
raw folder without one, ``{"kind": "raw-records"}`` (nemu.provenance); the shards do not carry it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from nemu import labels as nemu_labels
from nemu.atomic import atomic_write_bytes
from nemu.audio import AudioSettings
from nemu.extraction import (
    CUT_COUNTS, TEXT_MODALITIES, BuildError, ExtractionSettings, RecordLimits, cache_path_of, load_features,
)
from nemu.images import DEFAULT_IMAGE_ENCODER, ImageSettings, ImageWeightsUnavailable, resolve_image_settings
from nemu.provenance import PROVENANCE_FILE, RAW_RECORDS, SYNTHETIC_SAMPLE, ProvenanceError, read_raw_provenance
from nemu.publish import DatasetPublisher, FolderConflict, FolderLocked
from nemu.ray_engine import RaySession, RayUnavailable, import_ray, ray_extraction
from nemu.records import RECORDS_FILE, Quarantined, RawRecord, ReadResult, read_records
from nemu.shards import FORMAT_VERSION, Modality, build_schema, sha256_file, with_manifest
from nemu.splits import N_FOLDS, SPLITS, assign_folds, split_of_fold
from nemu.statistics import Table1Statistics
from nemu.text import embed_nodes, load_word_vectors, train_word_vectors
from nemu.workers import WorkerPool, extract_records
from nemu.writer import rows_table, shard_chunks, write_dataset

__all__ = ["BuildError", "BuildOptions", "BuildSummary", "ENGINES", "RecordLimits", "build", "check_inputs"]

WORD_VECTOR_DIM = 300
QUARANTINE_FILE = "quarantine.jsonl"
TRAINED_VECTORS_FILE = "word_vectors.bin"


@dataclass
class BuildOptions:
    raw_dir: Path
    out_dir: Path
    seed: int = 0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    word_vectors: Path | None = None
    word_vectors_format: str = "auto"
    image_encoder: str = DEFAULT_IMAGE_ENCODER  # efficientnet-lite0, offline; "resnet50" needs image_weights
    image_weights: Path | None = None
    audio: AudioSettings = field(default_factory=AudioSettings)
    max_comment_chars: int = 64
    strict: bool = False
    rows_per_shard: int = 1000
    row_group_rows: int = 100
    cache_dir: Path | None = None  # default OUT/.cache
    progress: bool = True
    limits: RecordLimits = field(default_factory=RecordLimits)
    engine: str = "local"  # ENGINES: where extraction runs (the output does not depend on it)
    ray_address: str | None = None  # engine "ray": the cluster to join (None: RAY_ADDRESS, else a local instance)
    ray_gpu: str = "auto"  # engine "ray": "auto" encodes images on the cluster's GPUs where it has them, "never"


ENGINES = ("local", "ray")


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
    cut_by_limits: dict[str, float] = field(default_factory=dict)  # CUT_COUNTS, summed over kept records
    duplicate_media: list[list[str]] = field(default_factory=list)  # ids of songs with byte-identical media
    extraction_seconds: float | None = None  # wall-clock from the start of the build to the last record extracted
    # ... to the first record extracted: the start-up (imports, warm-up) that the work waited for
    first_record_seconds: float | None = None

    def __str__(self) -> str:
        text = (
            f"input {self.input} = kept {self.kept} + quarantined {self.quarantined} + without emotion tag "
            f"{self.without_emotion_tag}\nfeatures: {self.extracted} records extracted, {self.from_cache} from cache\n"
            f"splits: " + ", ".join(f"{s} {n}" for s, n in self.splits.items()) + f"\nwritten to {self.out_dir}"
        )
        cut = {name: n for name, n in self.cut_by_limits.items() if n}
        if cut:
            text += "\ncut by limits: " + ", ".join(f"{name.replace('_', ' ')} {n:g}" for name, n in cut.items())
        if self.duplicate_media:
            text += ("\nbyte-identical media under different ids (each group kept in one fold): "
                     + "; ".join(", ".join(group) for group in self.duplicate_media[:5])
                     + (f"; and {len(self.duplicate_media) - 5} more groups" if len(self.duplicate_media) > 5 else ""))
        return text


def _duplicate_media(kept: list[tuple[RawRecord, dict]]) -> tuple[list[list[str]], np.ndarray]:
    """Groups of ids whose media are byte-identical, and a group index per kept record (for the folds).

    Two songs are the same recording when their audio files are byte-identical, or, for songs
    without audio, when their sets of images are; text alone does not group. Such songs stay in one
    fold, so one recording cannot sit in train and in test.
    """
    first_of: dict[tuple, int] = {}
    group_of = np.arange(len(kept))
    members: dict[int, list[str]] = {}
    for position, (record, features) in enumerate(kept):
        digests = features["media_digests"]
        signature = ("audio", digests["audio"]) if digests["audio"] else \
            ("images", tuple(sorted(digests["images"]))) if digests["images"] else None
        if signature is None:
            continue
        if signature in first_of:
            group_of[position] = first_of[signature]
            members[first_of[signature]].append(record.id)
        else:
            first_of[signature] = position
            members[position] = [record.id]
    groups = [ids for ids in members.values() if len(ids) > 1]
    return groups, group_of


def _extraction_settings(options: BuildOptions, image: ImageSettings, cache_dir: Path) -> ExtractionSettings:
    return ExtractionSettings(options.raw_dir, options.audio, image, options.max_comment_chars, options.limits,
                              cache_dir)


def _run_extraction(records: list[RawRecord], options: BuildOptions, settings: ExtractionSettings,
                    ray_session: RaySession | None = None, pool: WorkerPool | None = None):
    """Pass 1's extraction on the chosen engine: local worker processes (``pool``, started ahead by the
    build, or in this process), or Ray tasks."""
    bar = dict(total=len(records), unit="song", disable=not options.progress, file=sys.stderr)
    if ray_session is not None:
        yield from tqdm(ray_extraction(records, settings, ray_session), desc="extracting features (Ray)", **bar)
    elif pool is not None:
        yield from tqdm(pool.extract(records), desc="extracting features", **bar)
    else:
        yield from extract_records(records, settings, workers=options.workers, progress=options.progress)


# ----------------------------------------------------------------------------------------------
# Assembling the dataset


def _word_vectors(options: BuildOptions, corpus: _TokenCorpus, out_dir: Path):
    """(KeyedVectors, manifest description) from --word-vectors or trained on the corpus (non-empty token lists
    of the kept songs in id order, lyrics before comments)."""
    if options.word_vectors is not None:
        vectors = load_word_vectors(options.word_vectors, options.word_vectors_format)
        return vectors, {"source": "file", "file": Path(options.word_vectors).name, "dim": vectors.vector_size,
                         "sha256": sha256_file(options.word_vectors), "vocabulary": len(vectors.key_to_index)}
    if not corpus.sentences:
        raise BuildError("no lyric or comment tokens to train word vectors on; pass --word-vectors PATH")
    vectors = train_word_vectors(corpus, WORD_VECTOR_DIM, options.seed)
    target = out_dir / TRAINED_VECTORS_FILE  # the build's staging folder: published with the shards
    try:
        vectors.save_word2vec_format(str(target), binary=True)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
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


def _os_error_message(exc: OSError, out_dir: Path) -> str:
    """One line naming the path: "OUT/.builds/staging-…/train/train-00000-of-00001.parquet: No space left on
    device" (OUT itself when the library that failed did not say which file)."""
    if exc.filename is None:
        return str(exc) if exc.errno is None else f"{out_dir}: {exc.strerror or exc}"
    paths = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    return f"{paths}: {exc.strerror or exc}"


def build(options: BuildOptions) -> BuildSummary:
    """Build the dataset described by ``options`` into OUT; see the module docstring.

    OUT is always one whole dataset (nemu.publish): the build holds OUT's lock, writes into a staging folder
    and publishes shards, manifest, card and report in one atomic swap, so a failure or a kill at any moment
    leaves the previous dataset (or the new one). Faults of the environment (a read-only or full disk,
    permission denied) and a second build into the same OUT raise BuildError with one line naming the path.
    """
    options.raw_dir, options.out_dir = Path(options.raw_dir), Path(options.out_dir)
    image = check_inputs(options)  # before any model is loaded, any process started or anything written
    if options.engine not in ENGINES:
        raise BuildError(f"unknown engine {options.engine!r}; choose one of {', '.join(ENGINES)}")
    if options.engine == "ray":
        try:
            import_ray()
        except RayUnavailable as exc:
            raise BuildError(str(exc)) from None
    source = _raw_source(options.raw_dir)  # before the lock and the extraction: a broken file fails at once
    try:
        with contextlib.ExitStack() as stack:
            publisher = stack.enter_context(DatasetPublisher(options.out_dir))  # the lock first: fail at once
            ray_session = None
            if options.engine == "ray":
                try:
                    ray_session = stack.enter_context(RaySession(options.ray_address, options.workers,
                                                                 options.ray_gpu))
                except RayUnavailable as exc:
                    raise BuildError(str(exc)) from None
            return _build_staged(options, publisher, source, image, ray_session)
    except (FolderLocked, FolderConflict) as exc:
        raise BuildError(str(exc)) from exc
    except OSError as exc:
        raise BuildError(_os_error_message(exc, options.out_dir)) from exc


def _check_output_folder(path: Path, flag: str) -> None:
    """``path`` can be an output folder: it is one, or its nearest existing ancestor is a writable folder."""
    for existing in (path, *path.parents):
        if not existing.exists():
            if existing.is_symlink():
                raise BuildError(f"{flag} {path}: {existing} is a broken symbolic link")
            continue
        if not existing.is_dir():
            what = "exists and is not a folder" if existing == path else f"{existing} is a file, not a folder"
            raise BuildError(f"{flag} {path}: {what}")
        if not os.access(existing, os.W_OK | os.X_OK):
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
            reason = os.strerror(errno.EROFS if read_only else errno.EACCES)
            raise BuildError(f"{flag} {path}: " + (f"{existing}: " if existing != path else "") + reason)
        return


def check_inputs(options: BuildOptions) -> ImageSettings:
    """Every input of a build checked before any model is loaded, process started or file written; each fault is
    a BuildError of one line naming the flag and the path: the raw folder exists and holds records.jsonl, OUT
    (and --cache-dir) can be output folders, --word-vectors is a file, and the image encoder's weights are there
    (returned, resolved: nemu.images.resolve_image_settings)."""
    raw = Path(options.raw_dir)
    if not raw.exists():
        raise BuildError(f"--raw {raw}: no such folder")
    if not raw.is_dir():
        raise BuildError(f"--raw {raw}: not a folder (a raw folder holds {RECORDS_FILE} and the media it names)")
    if not (raw / RECORDS_FILE).is_file():
        raise BuildError(f"--raw {raw}: no {RECORDS_FILE} in the folder (the raw format is in README.md)")
    _check_output_folder(Path(options.out_dir), "--out")
    if options.cache_dir is not None:
        _check_output_folder(Path(options.cache_dir), "--cache-dir")
    if options.word_vectors is not None:
        vectors = Path(options.word_vectors)
        if not vectors.is_file():
            raise BuildError(f"--word-vectors {vectors}: " + ("not a file" if vectors.exists() else "no such file"))
    try:
        return resolve_image_settings(options.image_encoder, options.image_weights)
    except (ImageWeightsUnavailable, ValueError) as exc:
        raise BuildError(str(exc)) from None


# The build streams: its memory does not grow with the number of songs' features. Pass 1 extracts every
# record (features go to the per-record cache, which the build always has) and keeps per kept song only what
# the whole dataset needs before any shard can be written: its id, labels, cache key and media digests in
# memory, its tokens, limit counts and duration in a spool file. Word vectors, folds, Table 1 and the counts
# that every shard's metadata carries come from those; pass 2 then reads each song's features back from the
# cache, embeds its text and writes the shards one at a time.
SPOOL_FILE = ".spool-songs.jsonl"  # in the staging folder; removed before publishing
CORPUS_FILE = ".spool-corpus.jsonl"  # the word-vector corpus in shard order, one token list per line


@dataclass
class _KeptSong:
    """What the build holds of one kept record between its two passes (its features stay in the cache)."""

    record: RawRecord  # without lyrics and comments once extracted (their nodes are in the cache entry)
    cache_path: Path
    media_digests: dict
    spool_offset: int
    needs_record: bool = False  # the cache slot could not take the features: pass 2 extracts it again


class _TokenCorpus:
    """The lyric and comment token lists of the kept songs, in id order, read from a file on each pass.

    gensim's Word2Vec iterates its corpus once for the vocabulary and once per epoch; a list of every token
    would grow with the corpus, this does not."""

    def __init__(self, path: Path, sentences: int):
        self.path, self.sentences = path, sentences

    def __iter__(self):
        with self.path.open("rb") as handle:
            for line in handle:
                yield json.loads(line)


def _extract_pass(records: list[RawRecord], options: BuildOptions, settings: ExtractionSettings, spool,
                  ray_session=None, pool=None) -> tuple[list[_KeptSong], list[Quarantined], int, int, float | None]:
    """Pass 1: extract every record; per kept song its small facts in memory and its spool line. Also returns
    when (time.perf_counter) the first record's result came, None when there were no records."""
    kept: list[_KeptSong] = []
    quarantined: list[Quarantined] = []
    extracted = from_cache = 0
    first_record_at = None
    for status, record, result, cached in _run_extraction(records, options, settings, ray_session, pool):
        if first_record_at is None:
            first_record_at = time.perf_counter()
        if status != "ok":
            quarantined.append(result)
            continue
        from_cache += cached
        extracted += not cached
        offset = spool.tell()
        line = {"tokens": {m: result[f"{m}_tokens"] for m in TEXT_MODALITIES}, "cut": result["cut"],
                "duration": result["duration_seconds"]}
        spool.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
        path = cache_path_of(record, result, settings)
        needs_record = not path.is_file()  # a directory or link in the slot is left alone by extract_record
        kept.append(_KeptSong(record if needs_record else replace(record, lyrics="", comments=()), path,
                              result["media_digests"], offset, needs_record))
    return kept, quarantined, extracted, from_cache, first_record_at


def _spool_line(spool, offset: int) -> dict:
    spool.seek(offset)
    return json.loads(spool.readline())


def _song_features(song: _KeptSong, settings: ExtractionSettings) -> dict:
    """Pass 2: a kept song's features from the cache entry pass 1 wrote (or extracted again where it could not)."""
    if not song.needs_record:
        features = load_features(song.cache_path, settings.audio.n_mfcc, settings.image.dim)
        if features is not None and features["media_digests"] == song.media_digests:
            return features
        raise BuildError(f"{song.cache_path}: the feature cache entry of record {song.record.id!r} (line "
                         f"{song.record.line}) changed or vanished during the build; build again")
    results = list(extract_records([song.record], settings, workers=1))
    status, _, features, _ = results[0]
    if status != "ok" or features["media_digests"] != song.media_digests:
        raise BuildError(f"record {song.record.id!r} (line {song.record.line}): its media changed during the "
                         f"build; build again")
    return features


def _raw_source(raw_dir: Path) -> dict:
    """The manifest's ``source``: RAW/provenance.json, or raw records where the folder has none."""
    try:
        source = read_raw_provenance(raw_dir)
    except ProvenanceError as exc:
        raise BuildError(str(exc)) from None
    if source["kind"] not in (SYNTHETIC_SAMPLE, RAW_RECORDS):  # e.g. cmu-mosei: nemu-build-mosei's input, not this
        raise BuildError(f"{Path(raw_dir) / PROVENANCE_FILE}: kind {source['kind']!r} is not a NEMu raw folder's "
                         f"({SYNTHETIC_SAMPLE} or {RAW_RECORDS})")
    return source


def _build_staged(options: BuildOptions, publisher: DatasetPublisher, source: dict, image: ImageSettings,
                  ray_session=None) -> BuildSummary:
    staging = publisher.path  # everything the build writes goes here until publisher.commit()
    cache_dir = Path(options.cache_dir) if options.cache_dir else options.out_dir / ".cache"
    image_settings = image.to_dict()
    if ray_session is not None and ray_session.use_gpu:  # GPU features round differently: cached and said apart
        cache_dir, image_settings = cache_dir / "cuda", image_settings | {"device": "cuda"}
    settings = _extraction_settings(options, image, cache_dir)
    started = time.perf_counter()

    with (staging / SPOOL_FILE).open("w+b") as spool:
        # Local workers start now, so their imports and warm-up overlap with reading and validating the records.
        pool = WorkerPool(options.workers, settings) if ray_session is None and options.workers > 1 else None
        try:
            read: ReadResult = read_records(options.raw_dir)
            input_count, without_emotion_tag = read.input_count, len(read.without_emotion)
            kept, extraction_quarantined, extracted, from_cache, first_record_at = _extract_pass(
                read.records, options, settings, spool, ray_session, pool)
        finally:
            if pool is not None:
                pool.close()
        extraction_seconds = time.perf_counter() - started
        first_record_seconds = first_record_at - started if first_record_at is not None else None
        quarantined = read.quarantined + extraction_quarantined
        del read  # the records' texts: kept songs hold what pass 2 needs
        quarantined.sort(key=lambda q: q.line)
        report = "".join(json.dumps(q.to_json(), ensure_ascii=False) + "\n" for q in quarantined)
        atomic_write_bytes(staging / QUARANTINE_FILE, report.encode("utf-8"))
        if options.strict and quarantined:
            first = quarantined[0]
            spool.close()
            (staging / SPOOL_FILE).unlink()
            rejected = publisher.reject()  # the previous dataset stays as it was, report and all
            raise BuildError(f"--strict: {len(quarantined)} record(s) quarantined, see {rejected / QUARANTINE_FILE}; "
                             f"first: line {first.line} id {first.id!r} field {first.field}: {first.reason}")

        kept.sort(key=lambda song: song.record.id)  # shard content does not depend on line order
        spooled = _read_spool(kept, spool, staging / CORPUS_FILE)
    (staging / SPOOL_FILE).unlink()
    corpus = _TokenCorpus(staging / CORPUS_FILE, spooled.sentences)
    vectors, vectors_info = _word_vectors(options, corpus, staging)
    # nodes without any in-vocabulary token get zeros (embed_nodes); every shard's metadata counts them
    nodes_without_vectors = spooled.empty_nodes + sum(1 for tokens in corpus
                                                      if not any(t in vectors.key_to_index for t in tokens))
    (staging / CORPUS_FILE).unlink()

    label_matrix = np.array([[name in song.record.labels for name in nemu_labels.LABEL_NAMES] for song in kept],
                            dtype=np.int8).reshape(len(kept), len(nemu_labels.LABEL_NAMES))
    duplicate_media, media_group = _duplicate_media([(song.record, {"media_digests": song.media_digests})
                                                     for song in kept])  # byte-identical media: one song
    folds = assign_folds(label_matrix, options.seed, groups=media_group)
    split_of = [split_of_fold(int(fold)) for fold in folds]
    members = {split: [p for p in range(len(kept)) if split_of[p] == split] for split in SPLITS}
    statistics = Table1Statistics(nemu_labels.LABEL_NAMES)
    for split, positions in members.items():  # the order of the shards' rows
        statistics.add(split, label_matrix[positions], spooled.durations[positions],
                       int(spooled.words_of[positions].sum()), int(spooled.sentences_of[positions].sum()))

    modalities = _modalities(vectors.vector_size, options.audio, image)
    counts = {"input": input_count, "kept": len(kept), "quarantined": len(quarantined),
              "without_emotion_tag": without_emotion_tag, "text_nodes_without_word_vectors": nodes_without_vectors}
    assert counts["input"] == counts["kept"] + counts["quarantined"] + counts["without_emotion_tag"]
    facts = _facts(options, image_settings, modalities, vectors_info, counts, spooled.cut_totals, duplicate_media,
                   statistics.result())
    schema = with_manifest(build_schema(len(nemu_labels.LABEL_NAMES), modalities, EXTRA_FIELDS), facts)

    node_dims = {m.name: m.dim for m in modalities}
    bar = tqdm(total=len(kept), desc="writing shards", unit="song", disable=not options.progress, file=sys.stderr)

    def row_groups(in_shard: list[int]):  # one row group of features at a time
        for start in range(0, max(1, len(in_shard)), options.row_group_rows):
            rows = []
            for position in in_shard[start:start + options.row_group_rows]:
                song = kept[position]
                rows.append(_row(song.record, _song_features(song, settings), label_matrix[position],
                                 int(folds[position]), vectors))
                bar.update()
            yield rows_table(rows, schema, node_dims)

    with bar:
        write_dataset(publisher, facts, schema, {split: [row_groups(chunk) for chunk in
                                                         shard_chunks(positions, options.rows_per_shard)]
                                                 for split, positions in members.items()}, options.row_group_rows,
                      source)
    return BuildSummary(input=input_count, kept=len(kept), quarantined=len(quarantined),
                        without_emotion_tag=without_emotion_tag, extracted=extracted, from_cache=from_cache,
                        splits={s: len(p) for s, p in members.items()}, out_dir=options.out_dir,
                        cut_by_limits=facts["limits"]["cut"], duplicate_media=duplicate_media,
                        extraction_seconds=extraction_seconds, first_record_seconds=first_record_seconds)


@dataclass
class _Spooled:
    """What pass 1's spool gives for the whole dataset, per kept song in id order."""

    cut_totals: dict[str, float]
    durations: np.ndarray  # float32, as the shards' duration column; NaN where unknown
    words_of: np.ndarray
    sentences_of: np.ndarray
    empty_nodes: int  # text nodes without a token
    sentences: int  # text nodes with tokens: the word-vector corpus's sentences


def _read_spool(kept: list[_KeptSong], spool, corpus_path: Path) -> _Spooled:
    """One sequential pass over the spool in id order: the word-vector corpus (written to ``corpus_path``), the
    limit counts (summed in id order: float sums depend on the order), durations and sentence lengths for
    Table 1."""
    spooled = _Spooled(dict.fromkeys(CUT_COUNTS, 0), np.full(len(kept), np.nan, dtype=np.float32),
                       np.zeros(len(kept), dtype=np.int64), np.zeros(len(kept), dtype=np.int64), 0, 0)
    with corpus_path.open("wb") as corpus_file:
        for position, song in enumerate(kept):
            line = _spool_line(spool, song.spool_offset)
            for name in CUT_COUNTS:
                spooled.cut_totals[name] += line["cut"][name]
            if line["duration"] is not None:
                spooled.durations[position] = line["duration"]
            for modality in TEXT_MODALITIES:
                for tokens in line["tokens"][modality]:
                    spooled.words_of[position] += len(tokens)
                    spooled.sentences_of[position] += 1
                    if tokens:
                        corpus_file.write(json.dumps(tokens, ensure_ascii=False).encode("utf-8") + b"\n")
                        spooled.sentences += 1
                    else:
                        spooled.empty_nodes += 1
    return spooled


def _facts(options: BuildOptions, image_settings: dict, modalities: list[Modality], vectors_info: dict,
           counts: dict, cut_totals: dict, duplicate_media: list[list[str]], statistics: dict) -> dict:
    """The manifest without its shard entries (also every shard's schema metadata)."""
    return {
        "format_version": FORMAT_VERSION,
        "dataset": "NEMu",
        "labels": list(nemu_labels.LABEL_NAMES),
        "label_names_zh": list(nemu_labels.CHINESE_NAMES),
        "modalities": [m.to_dict() for m in modalities],
        "text_columns": {m: {"text": f"{m}_text", "tokens": f"{m}_tokens"} for m in TEXT_MODALITIES},
        "settings": {
            "seed": options.seed,
            "audio": options.audio.to_dict() | {"library": "librosa"},
            "image": image_settings,
            "text": {"tokenizer": "jieba (accurate mode, punctuation dropped)", "node_feature": "mean word vector",
                     "max_comment_chars": options.max_comment_chars, "word_vectors": vectors_info},
            "splits": {"n_folds": N_FOLDS, "method": "iterative stratification (iterative-stratification "
                       "MultilabelStratifiedKFold, shuffled with the seed)",
                       "rule": "test = fold 0, valid = fold 1, train = folds 2-9 (rotation 0 of 10-fold CV)"},
        },
        "counts": counts,
        "limits": {"per_record": options.limits.to_dict() | {"max_audio_seconds": options.audio.max_seconds,
                                                              "max_audio_nodes": options.audio.max_nodes},
                   "cut": {name: round(total, 3) for name, total in cut_totals.items()}},
        "duplicate_media": {"rule": "same audio bytes, or for songs without audio the same image bytes; "
                                    "each group is kept in one fold", "groups": duplicate_media},
        "statistics": statistics,
    }


def _row(record: RawRecord, features: dict, label_row: np.ndarray, fold: int, vectors) -> dict:
    """One shard row: the record's fields, its labels and fold, its features with text nodes embedded."""
    row = {"id": record.id, "labels": list(record.labels),
           "label_ids": np.flatnonzero(label_row).tolist(), "label_vector": label_row.tolist(),
           "fold": fold, "title": record.title, "artist": record.artist, "tags": list(record.tags),
           "audio": features["audio"], "images": features["images"],
           "duration_seconds": features["duration_seconds"], "audio_path": record.audio,
           "image_paths": list(features["image_paths"])}
    for modality in TEXT_MODALITIES:
        row[f"{modality}_text"] = features[f"{modality}_text"]
        row[f"{modality}_tokens"] = features[f"{modality}_tokens"]
        row[modality], _ = embed_nodes(features[f"{modality}_tokens"], vectors)
    return row
