"""Node features of new, unlabelled songs, made exactly as a built NEMu dataset made its own.

    from nemu.featurize import Featurizer
    featurizer = Featurizer("data/nemu")               # settings read from data/nemu/manifest.json
    songs = featurizer.featurize_folder("RAW")         # RAW in the raw format; records may carry no tags
    songs.songs[0].nodes["audio"]                      # (windows, 74) float32, as the shards store them
    songs.quarantined                                  # records that could not be used: id, line, field, reason

Everything that decides a feature comes from the dataset's manifest, and the extraction is the build's
own code (``nemu.records.read_record_lines`` for validation, ``nemu.workers.extract_records`` with the
dataset's ``nemu.extraction.ExtractionSettings`` for text nodes and tokens, MFCC windows and CNN image
features, ``nemu.text.embed_nodes`` for the text nodes),
called without labels and folds; nothing here is a second copy of it:

- audio: the manifest's ``settings.audio`` (sample rate, MFCCs, hop, window, max nodes, max seconds);
- images: the manifest's encoder, with weights whose sha256 is the manifest's ``weights_sha256`` (found as
  the build finds them: ``image_weights``, torchvision's cache, or the efficientnet-lite0 package);
- text: the manifest's comment splitting (``max_comment_chars``), jieba, and the same word vectors: the
  vectors the build trained travel with the dataset as ``DATA/word_vectors.bin``; a file given to the build
  (``--word-vectors``) must be given again and is matched by its sha256;
- per-record limits: the manifest's ``limits.per_record``.

Whatever would make the features differ (the word-vector file missing or another one, another encoder or
other weights, a dataset of another layout) raises :class:`FeatureMismatch`, a one-line ValueError naming
what differs and how to fix it. A record follows the build's quarantine rules (malformed, wrong types,
duplicate id, a path leaving the folder, media that cannot be read or decoded, no node in any modality):
it is reported with id, line, field and reason, and the others are featurised; a song that lacks a
modality (no audio, no comments) has zero nodes there, as the models allow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from nemu.audio import AudioSettings
from nemu.build import TRAINED_VECTORS_FILE
from nemu.extraction import TEXT_MODALITIES, ExtractionSettings, RecordLimits
from nemu.images import (IMAGE_ENCODERS, ImageEncoder, ImageSettings, ImageWeightsUnavailable,
                         resolve_image_settings)
from nemu.records import Quarantined, RawRecord, read_record_lines, read_records
from nemu.shards import read_manifest, sha256_file
from nemu.text import embed_nodes, load_word_vectors
from nemu.workers import extract_records

NEMU_MODALITIES = ("lyrics", "comments", "audio", "images")


class FeatureMismatch(ValueError):
    """The features of new songs cannot be made exactly as the dataset's; the message says what differs and
    how to fix it (one line)."""


@dataclass
class Song:
    """One featurised song: its validated record and its node features, modality -> (nodes, dim) float32."""

    id: str
    line: int
    record: RawRecord
    nodes: dict[str, np.ndarray]
    texts: dict[str, list[str]] = field(default_factory=dict)  # lyrics / comments node texts


@dataclass
class Featurized:
    """The songs featurised (in input order) and the records that could not be, with the build's reasons."""

    songs: list[Song]
    quarantined: list[Quarantined]
    input_count: int
    text_nodes_without_word_vectors: int = 0  # nodes none of whose tokens the dataset's vectors know (zeros)

    @property
    def ids(self) -> list[str]:
        return [song.id for song in self.songs]


def _settings(manifest: dict, where: Path) -> dict:
    """The manifest's feature settings, checked to be a NEMu build this toolkit can reproduce."""
    names = [m.get("name") for m in manifest.get("modalities", [])]
    if tuple(names) != NEMU_MODALITIES:
        raise FeatureMismatch(
            f"{where}: a {manifest.get('dataset', 'dataset')} build with modalities {', '.join(map(str, names))}; "
            f"features of songs from raw files can only be made with a NEMu build's settings "
            f"({', '.join(NEMU_MODALITIES)}): pass the NEMu dataset the run was trained on")
    try:
        settings = manifest["settings"]
        return {"audio": settings["audio"], "image": settings["image"], "text": settings["text"],
                "word_vectors": settings["text"]["word_vectors"]}
    except (KeyError, TypeError) as exc:
        raise FeatureMismatch(f"{where}/manifest.json: no feature setting {exc} (not written by this toolkit's "
                              f"nemu-build; rebuild the dataset)") from None


def _audio_settings(audio: dict, where: Path) -> AudioSettings:
    known = {f.name for f in fields(AudioSettings)}
    unknown = sorted(set(audio) - known - {"library"})
    if unknown:
        raise FeatureMismatch(f"{where}/manifest.json: audio setting(s) {', '.join(unknown)} unknown to this "
                              f"version of the toolkit; predict with the version that built the dataset")
    if audio.get("library", "librosa") != "librosa":
        raise FeatureMismatch(f"{where}: audio features made with {audio['library']!r}, this toolkit makes them "
                              f"with librosa")
    return AudioSettings(**{k: v for k, v in audio.items() if k in known})


def _limits(manifest: dict) -> RecordLimits:
    per_record = (manifest.get("limits") or {}).get("per_record") or {}
    known = {f.name for f in fields(RecordLimits)}
    return RecordLimits(**{k: v for k, v in per_record.items() if k in known})


def _image_settings(image: dict, where: Path, image_weights: Path | None) -> ImageSettings:
    encoder, expected = image.get("encoder"), image.get("weights_sha256")
    if encoder not in IMAGE_ENCODERS:
        raise FeatureMismatch(f"{where}: images were encoded by {encoder!r}, which this toolkit does not have "
                              f"(it has {', '.join(IMAGE_ENCODERS)})")
    try:
        settings = resolve_image_settings(encoder, Path(image_weights) if image_weights is not None else None)
    except ImageWeightsUnavailable as exc:
        raise FeatureMismatch(f"{where}: images were encoded by {encoder} with weights sha256 {expected}, which "
                              f"are not available here ({str(exc).splitlines()[0]}); pass --image-weights PATH "
                              f"to that file") from None
    if settings.weights_sha256 != expected:
        given = "the given --image-weights" if image_weights is not None else "the weights found here"
        raise FeatureMismatch(
            f"{where}: images were encoded by {encoder} with weights sha256 {expected}, but {given} "
            f"({settings.weights_path}) have sha256 {settings.weights_sha256}: other weights give other features; "
            f"pass --image-weights PATH to the file the dataset was built with")
    if settings.dim != image.get("dim", settings.dim):
        raise FeatureMismatch(f"{where}: image features of dim {image.get('dim')}, {encoder} gives {settings.dim}")
    return settings


def _word_vectors(info: dict, data: Path, given: Path | None, text_dim: int):
    """The dataset's word vectors, from DATA/word_vectors.bin (trained by the build) or the given file, each
    checked against the manifest's sha256."""
    expected = info.get("sha256")
    trained = info.get("source") != "file"
    if given is not None:
        path, fmt = Path(given), info.get("format", "auto") if trained else "auto"
        if not path.is_file():
            raise FeatureMismatch(f"--word-vectors: {path} does not exist")
    elif trained:
        path, fmt = data / TRAINED_VECTORS_FILE, info.get("format", "word2vec-binary")
        if not path.is_file():
            raise FeatureMismatch(
                f"{path}: missing; it holds the word vectors {data} was built with (sha256 {expected}), without "
                f"which text features cannot be reproduced: restore the file from the build, or rebuild the "
                f"dataset and retrain the run")
    else:
        raise FeatureMismatch(
            f"{data} was built with the word vectors of {info.get('file')!r} (sha256 {expected}), which do not "
            f"travel with the dataset: pass --word-vectors PATH to that file")
    digest = sha256_file(path)
    if digest != expected:
        what = "the dataset's own " + TRAINED_VECTORS_FILE if trained and given is None else str(path)
        raise FeatureMismatch(
            f"{path}: sha256 {digest} differs from the word vectors {data} was built with "
            f"({info.get('file')!r}, sha256 {expected}): {what} would give other text features; "
            + ("pass --word-vectors PATH to that file" if not trained else
               f"restore {TRAINED_VECTORS_FILE} from the build, or rebuild the dataset and retrain the run"))
    vectors = load_word_vectors(path, fmt)
    if vectors.vector_size != text_dim or ("vocabulary" in info and len(vectors.key_to_index) != info["vocabulary"]):
        raise FeatureMismatch(f"{path}: read as {fmt}, {len(vectors.key_to_index)} words of dim {vectors.vector_size}; "
                              f"the dataset's vectors have {info.get('vocabulary')} of dim {text_dim}")
    return vectors


def _json_default(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


class Featurizer:
    """Featurises raw records with exactly the settings of the built NEMu dataset ``data`` (see the module).

    ``word_vectors``: the file the dataset was built from with ``--word-vectors`` (required then; for a
    dataset with trained vectors, an optional copy of DATA/word_vectors.bin). ``image_weights``: the image
    encoder's weights file, where the build's own search does not find the dataset's. ``workers``: extraction
    processes (the build's); ``cache_dir``: the build's per-record feature cache (None: none).
    """

    def __init__(self, data: str | Path, *, word_vectors: str | Path | None = None,
                 image_weights: str | Path | None = None, workers: int = 1, progress: bool = False,
                 cache_dir: str | Path | None = None):
        self.data = Path(data)
        if not (self.data / "manifest.json").is_file():
            raise FeatureMismatch(f"{self.data}: not a built dataset folder (no manifest.json); its manifest holds "
                                  f"the feature settings: pass the dataset the run was trained on")
        self.manifest = read_manifest(self.data)
        settings = _settings(self.manifest, self.data)
        self.modality_dims = {m["name"]: int(m["dim"]) for m in self.manifest["modalities"]}
        self.audio = _audio_settings(settings["audio"], self.data)
        if self.audio.n_mfcc != self.modality_dims["audio"]:
            raise FeatureMismatch(f"{self.data}: audio dim {self.modality_dims['audio']} is not the manifest's "
                                  f"{self.audio.n_mfcc} MFCCs")
        self.image = _image_settings(settings["image"], self.data, image_weights)
        if self.image.dim != self.modality_dims["images"]:
            raise FeatureMismatch(f"{self.data}: image dim {self.modality_dims['images']} is not "
                                  f"{self.image.encoder}'s {self.image.dim}")
        self.max_comment_chars = int(settings["text"]["max_comment_chars"])
        self.limits = _limits(self.manifest)
        text_dim = self.modality_dims["lyrics"]
        self.vectors = _word_vectors(settings["word_vectors"], self.data,
                                     Path(word_vectors) if word_vectors is not None else None, text_dim)
        self.workers, self.progress = workers, progress
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._encoder = None

    # ------------------------------------------------------------------------------------------
    # Inputs: a raw folder, raw-format dicts, or one song's files

    def featurize_folder(self, raw_dir: str | Path) -> Featurized:
        """Every record of ``raw_dir/records.jsonl``, in its order; records need no ``tags``."""
        raw_dir = Path(raw_dir)
        return self._featurize(read_records(raw_dir, require_labels=False), raw_dir)

    def featurize_records(self, records: Iterable[dict], raw_dir: str | Path = ".") -> Featurized:
        """Raw-format dicts (media paths relative to ``raw_dir``), validated exactly as records.jsonl lines;
        the n-th dict is "line" n in the reports."""
        raw_dir = Path(raw_dir)
        lines, unserialisable = [], []
        for number, record in enumerate(records, start=1):
            try:
                lines.append((number, json.dumps(record, default=_json_default).encode("ascii")))
            except (TypeError, ValueError) as exc:
                record_id = record.get("id") if isinstance(record, dict) and isinstance(record.get("id"), str) else None
                unserialisable.append(Quarantined(record_id, number, "record", f"not a raw-format record ({exc})"))
        read = read_record_lines(lines, raw_dir, require_labels=False)
        read.quarantined.extend(unserialisable)
        read.input_count += len(unserialisable)
        return self._featurize(read, raw_dir)

    def featurize_files(self, *, lyrics: str | Path | None = None, audio: str | Path | None = None,
                        images: Sequence[str | Path] = (), comments: str | Path | Sequence[str] | None = None,
                        song_id: str | None = None) -> Featurized:
        """One song from its files: ``lyrics`` a UTF-8 text file (LRC or plain), ``audio`` and ``images`` media
        files anywhere, ``comments`` a UTF-8 file of one comment per line (or a list of comments). The id is
        ``song_id``, or the stem of the first file given ("song" when only a list of comments is)."""
        given = [Path(p) for p in ([lyrics] if lyrics else []) + ([audio] if audio else []) + list(images)]
        if isinstance(comments, (str, os.PathLike)):
            given.append(Path(comments))
        if not given and not comments:
            raise ValueError("give at least one of lyrics, audio, images or comments")
        for path in given:
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file")
            if not path.is_file():
                raise ValueError(f"{path}: not a regular file")
        song_id = song_id if song_id is not None else given[0].stem if given else "song"
        # The media stay where they are: RAW is their common folder and their paths are relative to it, so
        # the build's path checks (type, regular file, readable) apply to them unchanged.
        media = [p.resolve() for p in ([Path(audio)] if audio else []) + [Path(p) for p in images]]
        root = Path(os.path.commonpath([p.parent for p in media])) if media else Path.cwd()
        record = {"id": song_id, "title": "", "artist": "",
                  "lyrics": _read_text(lyrics, "lyrics") if lyrics else "",
                  "comments": ([line for line in _read_text(comments, "comments").splitlines() if line.strip()]
                               if isinstance(comments, (str, os.PathLike)) else list(comments or [])),
                  "audio": os.path.relpath(media[0], root) if audio else None,
                  "images": [os.path.relpath(p, root) for p in media[1 if audio else 0:]]}
        return self.featurize_records([record], root)

    # ------------------------------------------------------------------------------------------

    def _image_encoder(self):
        """The CNN, loaded once per featuriser for in-process extraction (workers load their own)."""
        if self.workers > 1:
            return None
        if self._encoder is None:
            self._encoder = ImageEncoder(self.image)
        return self._encoder

    def _featurize(self, read, raw_dir: Path) -> Featurized:
        quarantined = list(read.quarantined)
        extracted: dict[int, tuple[RawRecord, dict]] = {}
        settings = ExtractionSettings(raw_dir, self.audio, self.image, self.max_comment_chars, self.limits,
                                      self.cache_dir)
        for status, record, result, _ in extract_records(read.records, settings, workers=self.workers,
                                                         progress=self.progress, encoder=self._image_encoder()):
            if status == "ok":
                extracted[record.line] = (record, result)
            else:
                quarantined.append(result)
        songs, without = [], 0
        for line in sorted(extracted):  # input order, whatever order the workers finished in
            record, features = extracted[line]
            nodes = {"audio": features["audio"], "images": features["images"]}
            for modality in TEXT_MODALITIES:  # as the build embeds them (nemu.build._row)
                nodes[modality], missing = embed_nodes(features[f"{modality}_tokens"], self.vectors)
                without += missing
            songs.append(Song(record.id, line, record, {m: nodes[m] for m in NEMU_MODALITIES},
                              {m: list(features[f"{m}_text"]) for m in TEXT_MODALITIES}))
        quarantined.sort(key=lambda q: q.line)
        return Featurized(songs, quarantined, read.input_count, without)


def _read_text(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: the {what} file is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
