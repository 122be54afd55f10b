"""CMU-MOSEI into the toolkit's Parquet layout (the one NEMu uses): ``python -m pipelines.build_mosei``.

CMU-MOSEI (Zadeh et al., ACL 2018) is the paper's second dataset: YouTube monologue segments, six
emotions, three modalities. Users bring the files in one of the three forms researchers hold:

1. ``sdk``: CMU-MultimodalSDK computational sequences, a folder of ``.csd`` (HDF5) files. Each has one
   root group named after the sequence, holding ``data/<video_id>/features`` (n × dim) and
   ``data/<video_id>/intervals`` (n × 2, seconds) and a ``metadata`` group. Used: GloVe word vectors
   (300, root ``glove_vectors``), COVAREP (74, ``COVAREP``), FACET 4.2 (35, ``FACET 4.2``) and the
   labels (``All Labels``: one row per labelled segment, [sentiment, happy, sad, anger, surprise,
   disgust, fear]). A file is recognised by its root group's name, else by its feature width; other
   sequences (OpenFace, TimestampedWords, ...) are ignored and listed in the manifest.
2. ``pt``: the aligned ``train_valid_test.pt`` that HHMPN, TAILOR and CARAT load: ``train``/``valid``/
   ``test`` each with ``src-text`` (N×T×300), ``src-visual`` (N×T×35), ``src-audio`` (N×T×74) and
   ``tgt`` (label-id lists ``[BOS, ids..., EOS]``), plus ``dict['tgt']`` (word → id) and ``settings``.
3. ``pkl``: the unaligned ``mosei_senti_data_noalign.pkl`` (``train``/``valid``/``test`` with ``text``,
   ``audio``, ``vision``, ``labels`` (sentiment), ``id``), paired by position with the labels of the
   form-2 ``.pt`` given by ``--labels-pt``, as TAILOR does.

Decisions (also recorded in ``manifest.json`` under ``settings``):

* **Samples and ids.** One sample per labelled segment. ``sdk``: id ``<video>[<i>]``, the i-th row of the
  video in the labels sequence (a labels key that already names one segment, ``vid[3]``, is kept as
  is); ``pkl`` (and a ``.pt`` that carries ``id``): ``<video>[<start>,<end>]`` from the ``id`` rows; a
  ``.pt`` without ids: ``<split>-<index:05d>``. ``source_index`` is the row in the source split (the
  segment index within the video for ``sdk``). Samples without any emotion are kept (the paper's
  Table 1 counts them in the split sizes), unlike NEMu, whose songs need an emotion tag.
* **Labels.** Order ``happy, sad, anger, surprise, disgust, fear`` (the SDK's order without
  sentiment), recorded as ``manifest['labels']``. ``sdk``: present iff intensity > 0; ``intensities``
  (6 × float32) and ``sentiment`` keep the raw values and ``dominant_emotion`` is the label of highest
  intensity (ties: first in label order; null when every intensity is 0). ``pt``/``pkl``: ids are
  mapped to names through ``dict['tgt']`` only (never by an assumed order; BOS/EOS/PAD/UNK are skipped);
  those files have no intensities, so ``intensities`` and ``dominant_emotion`` are null (never
  invented). ``sentiment`` comes from the pkl's ``labels`` where present.
* **Columns.** Modalities ``text`` (300), ``audio`` (74), ``vision`` (35); time steps are nodes, in
  source order (``sequential``). Extra columns: ``video_id``, ``segment_start``, ``segment_end``
  (seconds; null where unknown), ``source_index``, ``sentiment``, ``intensities``,
  ``dominant_emotion``, ``words``, and per modality ``<m>_positions`` list<int32> and
  ``<m>_source_steps`` int32 (see padding).
* **Padding.** ``pt``: a time step is padding when it is all-zero in all three modalities (the aligned
  steps are shared); ``pkl``: per modality, a step that is all-zero in that modality (lengths differ:
  50 words vs 500 frames). Padding steps are dropped; ``<m>_positions`` holds the source step of each
  kept node and ``<m>_source_steps`` the padded length, so the source tensor and its mask come back
  exactly with :func:`restore_padding` (dropped steps were all zeros). ``sdk`` has no padding: the
  nodes are the feature rows whose interval overlaps the segment's ([start, end)), positions and
  source steps are null.
* **Bad input** raises :class:`MoseiError` naming the file, the video/segment (or split and sample)
  and what was expected: a missing group or dataset, a wrong shape or width, a label row whose length
  is not 7, NaN or ±inf in features or labels, a label outside its range (sentiment in [-3, 3], an emotion's
  intensity in [0, 3]: ``SENTIMENT_RANGE``, ``INTENSITY_RANGE``), a label id outside the vocabulary, mismatched
  counts.
  COVAREP is known to hold -inf (log of silence); ``neg_inf_to_zero`` (``--neg-inf-to-zero``)
  replaces -inf by 0, as MulT and TAILOR do, and counts the replacements; NaN and +inf always fail.
  Everything is validated before the first shard is written.
* **Missing modalities** (``sdk``: a video absent from a feature sequence, or no row inside a segment):
  the sample keeps zero nodes for that modality (the loader and HHMPN handle empty modalities) and is
  counted under ``counts['empty_modality']``; ``drop_incomplete`` (``--drop-incomplete``) drops such
  segments instead, as the SDK's ``hard_unify`` does.
* **Splits and folds.** The published split is the source's: ``sdk`` the SDK's standard folds
  (``nemu/resources/mosei_standard_folds.json``, copied from CMU-MultimodalSDK with attribution; every
  segment follows its video; videos in no fold are dropped and counted) or ``--folds-file``;
  ``pt``/``pkl`` their own train/valid/test. The split folders hold this published split. Separately,
  ``fold`` (0–9) is assigned over *all* samples by :func:`nemu.splits.assign_folds` (iterative
  stratification, ``seed``), i.e. a stratified 10-fold CV with 8:1:1 rotations, by one of two rules
  (``folds``, ``--folds``): ``grouped`` (default) keeps every segment of a video in one fold, the videos
  stratified as units on the union of their segments' labels (segments of one video share speaker and
  topic: split across folds they would put the same person in train and test); ``official`` is the
  row-level stratification of earlier releases (a video's segments may sit in different folds), for
  reproducing older numbers, with the published split as the leak-free evaluation. The video of a
  segment is the form's own video field (``sdk``: the labels key without its ``[i]``; ``pkl`` and a
  ``.pt`` with ids: the first column of ``id``); a sample with none (a ``.pt`` without ``id``) is its
  own group, and the manifest counts them. The rule is recorded in ``manifest['folds']`` and stated on
  the card. For MOSEI, rotation 0 of ``cv_rotation`` is *not* the published split (the source split is
  about 71:8:20 and cannot be one fold each); ``settings['splits']`` says so.
* **Table 1.** Split sizes, one vs two-or-more labels, mean duration per utterance (``sdk``: interval
  length; ``pkl``: end − start from its ids; ``pt``: unknown, null), and mean words per sentence
  (each sample is one sentence): the number of its word vectors that are not all zero: for ``sdk`` the
  word-vector rows inside the segment (the SDK's silence entries are zero vectors), for ``pt``/``pkl``
  the non-padding text steps. ``settings['words_per_sentence']`` says which.
* **Untrusted files.** ``.pt``: ``torch.load(weights_only=True)``, allowing only numpy arrays and
  ``argparse.Namespace`` (HHMPN stores its preprocessing options there) besides tensors and
  containers; ``.pkl``: a restricted unpickler with the same numpy allowlist. A file that needs more
  (arbitrary classes or functions) is refused with :class:`UntrustedPickleError` unless
  ``trust_pickle`` (``--trust-pickle``) is given.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from nemu import unpickler
from nemu.provenance import CMU_MOSEI
from nemu.publish import DatasetPublisher, FolderConflict, FolderLocked
from nemu.shards import FORMAT_VERSION, LABEL_IDS, Modality, build_schema, label_ids, with_manifest
from nemu.splits import N_FOLDS, SPLITS, assign_folds
from nemu.statistics import table1_statistics
from nemu.unpickler import load_pickle_file, load_torch_file
from nemu.writer import shard_chunks, table_from_columns, write_dataset

DATASET = "MOSEI"
LABELS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
SDK_LABEL_ROW = ("sentiment",) + LABELS  # one row of the SDK's "All Labels" sequence
#: The ranges of CMU-MOSEI's annotations (Zadeh et al., 2018): sentiment on the Likert scale -3..3, each emotion's
#: intensity 0..3 (0: absent). A value outside is a broken or mislabelled file, refused naming file, sample, value.
SENTIMENT_RANGE = (-3.0, 3.0)
INTENSITY_RANGE = (0.0, 3.0)
MODALITY_DIMS = {"text": 300, "audio": 74, "vision": 35}
MODALITY_SOURCES = {"text": "GloVe word vectors", "audio": "COVAREP", "vision": "FACET 4.2"}
FORMS = ("auto", "sdk", "pt", "pkl")
#: How the fold column is assigned (``--folds``): by video (default) or row-level as in earlier releases.
FOLD_RULES = ("grouped", "official")
PT_KEYS = {"text": "src-text", "audio": "src-audio", "vision": "src-visual"}
PKL_KEYS = {"text": "text", "audio": "audio", "vision": "vision"}
STANDARD_FOLDS_FILE = Path(__file__).with_name("resources") / "mosei_standard_folds.json"

# Root group names of the SDK's sequences (compared lower-case with non-alphanumerics removed).
CSD_ROOT_NAMES = {
    "labels": {"alllabels", "labels"},
    "text": {"glovevectors", "glove", "timestampedwordvectors"},
    "audio": {"covarep"},
    "vision": {"facet42", "facet", "visualfacet42"},
}
CSD_WIDTHS = {"labels": len(SDK_LABEL_ROW), **MODALITY_DIMS}

# Label words of the .pt vocabulary (lower-case) and the special tokens that are not labels.
LABEL_ALIASES = {
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "anger": "anger", "angry": "anger",
    "surprise": "surprise", "surprised": "surprise",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
}
SPECIAL_TOKENS = {"<blank>", "<pad>", "<unk>", "<s>", "</s>", "<bos>", "<eos>", "pad", "unk", "bos", "eos",
                  "<mask>", "<null>"}

# Source time steps (positions and padded lengths): int32 holds any sequence a file can hold in memory (2**31 - 1
# steps of even one float32 is 8 GiB); a longer one is refused naming the file and the column.
POSITION_TYPE = pa.int32()
POSITION_MAX = int(np.iinfo(np.int32).max)


def _check_positions_fit(steps: int, where: str, modality: str) -> None:
    if steps > POSITION_MAX:
        raise MoseiError(f"{where}: {steps} time steps do not fit the {POSITION_TYPE} column {modality}_positions "
                         f"(at most {POSITION_MAX})")


EXTRA_FIELDS = [
    pa.field("video_id", pa.string()),
    pa.field("segment_start", pa.float64()),
    pa.field("segment_end", pa.float64()),
    pa.field("source_index", pa.int32()),
    pa.field("sentiment", pa.float32()),
    pa.field("intensities", pa.list_(pa.float32(), len(LABELS))),
    pa.field("dominant_emotion", pa.string()),
    pa.field("words", pa.int32()),
    *(pa.field(f"{m}_positions", pa.list_(POSITION_TYPE)) for m in MODALITY_DIMS),
    *(pa.field(f"{m}_source_steps", POSITION_TYPE) for m in MODALITY_DIMS),
]


class MoseiError(ValueError):
    """Bad MOSEI input; the message names the file, the video/segment and what was expected."""


class UntrustedPickleError(MoseiError, unpickler.UntrustedPickleError):
    """The file needs full unpickling (it could run code) and ``trust_pickle`` was not given."""


@dataclass
class MoseiOptions:
    src: Path
    out_dir: Path
    form: str = "auto"
    labels_pt: Path | None = None  # form 3: the aligned .pt whose labels are paired with the pkl
    folds_file: Path | None = None  # form 1: JSON {"train": [video ids], "valid": [...], "test": [...]}
    seed: int = 0
    folds: str = "grouped"  # FOLD_RULES: the fold column grouped by video, or row-level ("official")
    trust_pickle: bool = False
    neg_inf_to_zero: bool = False
    drop_incomplete: bool = False
    rows_per_shard: int = 1000
    row_group_rows: int = 100
    progress: bool = True


@dataclass
class MoseiSummary:
    form: str
    splits: dict[str, int]
    counts: dict
    out_dir: Path
    folds: str = ""  # the fold column's rule (manifest['folds']['rule'])

    def __str__(self) -> str:
        extra = f"\nCV folds: {self.folds}" if self.folds else ""
        if self.counts.get("not_in_folds"):
            extra += f"\nsegments of videos in no fold (dropped): {self.counts['not_in_folds']}"
        if self.counts.get("dropped_incomplete"):
            extra += f"\nsegments missing a modality (dropped): {self.counts['dropped_incomplete']}"
        return (f"MOSEI ({self.form} form): " + ", ".join(f"{s} {n}" for s, n in self.splits.items())
                + f" samples{extra}\nwritten to {self.out_dir}")


@dataclass
class Sample:
    """One segment's metadata; its features are read when its shard is written (``ref``)."""

    id: str
    split: str
    label_vector: list[int]
    source_index: int
    words: int | None
    video_id: str | None = None
    segment_start: float | None = None
    segment_end: float | None = None
    sentiment: float | None = None
    intensities: list[float] | None = None
    ref: tuple = ()
    fold: int = -1

    @property
    def duration(self) -> float | None:
        if self.segment_start is None or self.segment_end is None:
            return None
        return self.segment_end - self.segment_start

    @property
    def dominant_emotion(self) -> str | None:
        if self.intensities is None or max(self.intensities) <= 0:
            return None
        return LABELS[int(np.argmax(self.intensities))]  # argmax: first of equal maxima


def restore_padding(nodes: np.ndarray, positions, source_steps) -> tuple[np.ndarray, np.ndarray]:
    """The source's padded (source_steps, dim) tensor and its bool mask (True = real step).

    ``nodes``, ``positions`` and ``source_steps`` are one sample's ``<m>``, ``<m>_positions`` and
    ``<m>_source_steps``. Rows without padding (``sdk``: null positions) come back as they are.
    """
    nodes = np.asarray(nodes, dtype=np.float32).reshape(len(nodes), -1)
    if positions is None or source_steps is None:
        return nodes, np.ones(len(nodes), dtype=bool)
    positions = np.asarray(positions, dtype=np.int64)
    padded = np.zeros((int(source_steps), nodes.shape[1]), dtype=np.float32)
    mask = np.zeros(int(source_steps), dtype=bool)
    padded[positions] = nodes
    mask[positions] = True
    return padded, mask


# ----------------------------------------------------------------------------------------------
# Safe loading (nemu.unpickler), its errors said as MOSEI's


def _load_source(load, path: Path, *args, **kwargs):
    try:
        return load(path, *args, **kwargs)
    except unpickler.UntrustedPickleError as exc:
        raise UntrustedPickleError(str(exc)) from None
    except unpickler.UnreadablePickleError as exc:
        raise MoseiError(str(exc)) from exc.__cause__


# ----------------------------------------------------------------------------------------------
# Validation helpers


def _as_array(value, where: str, ndim: int | None = None) -> np.ndarray:
    """A float32 array (copied only when needed) from a numpy array, tensor or list of arrays."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged
        raise MoseiError(f"{where}: not a rectangular array ({exc})") from exc
    if array.dtype.kind not in "fiub":
        raise MoseiError(f"{where}: dtype {array.dtype} (shape {array.shape}); expected numeric features")
    if ndim is not None and array.ndim != ndim:
        raise MoseiError(f"{where}: shape {array.shape}; expected {ndim} dimensions")
    array = np.asarray(array, dtype=np.float32)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array).copy()
    return array


def _describe_bad(values: np.ndarray) -> str:
    return "NaN" if np.isnan(values).any() else ("+inf" if np.isposinf(values).any() else "-inf")


def _check_label_ranges(values, names, where: str) -> None:
    """Every label value finite and within its range (sentiment :data:`SENTIMENT_RANGE`, the emotions'
    intensities :data:`INTENSITY_RANGE`); MoseiError naming ``where``, the label and the value otherwise."""
    for name, value in zip(names, values):
        low, high = SENTIMENT_RANGE if name == "sentiment" else INTENSITY_RANGE
        if not (np.isfinite(value) and low <= value <= high):
            what = "sentiment" if name == "sentiment" else f"{name} intensity"
            raise MoseiError(f"{where} has {what} {float(value):g}; expected a finite value in [{low:g}, {high:g}]")


def _fix_and_check_finite(array: np.ndarray, neg_inf_to_zero: bool, describe) -> int:
    """Replace -inf by 0 when asked (counted); raise for any NaN/inf left. ``describe(i, t)`` names sample i."""
    replaced = 0
    chunk = 1024
    for start in range(0, len(array), chunk):
        block = array[start:start + chunk]
        if neg_inf_to_zero:
            neg = np.isneginf(block)
            count = int(neg.sum())
            if count:
                block[neg] = 0.0
                replaced += count
        bad = ~np.isfinite(block)
        if bad.any():
            sample, step = (int(v) for v in np.argwhere(bad.reshape(len(block), -1, block.shape[-1]).any(-1))[0])
            kind = _describe_bad(block[sample][step])
            hint = " (COVAREP's -inf for silence can be replaced by 0 with --neg-inf-to-zero)" \
                if kind == "-inf" and not neg_inf_to_zero else ""
            raise MoseiError(f"{describe(start + sample, step)} has {kind} at time step {step}; "
                             f"expected finite features{hint}")
    return replaced


def _nonzero_steps(array: np.ndarray) -> np.ndarray:
    """(N, T) bool: which time steps of an (N, T, D) array are not all zero."""
    out = np.zeros(array.shape[:2], dtype=bool)
    for start in range(0, len(array), 1024):
        out[start:start + 1024] = np.any(array[start:start + 1024] != 0, axis=2)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _time_text(value) -> str:
    return repr(float(_text(value)))


# ----------------------------------------------------------------------------------------------
# Forms 2 and 3: arrays in memory


@dataclass
class _ArraySource:
    """Per split: modality → (N, T_m, dim) float32 arrays and (N, T_m) masks of real (kept) steps."""

    arrays: dict[str, dict[str, np.ndarray]]
    keep: dict[str, dict[str, np.ndarray]]

    def nodes(self, sample: Sample) -> dict:
        split, index = sample.ref
        row = {}
        for m in MODALITY_DIMS:
            keep = self.keep[split][m][index]
            positions = np.nonzero(keep)[0]
            row[m] = self.arrays[split][m][index][positions]
            row[f"{m}_positions"] = positions.astype(np.int32).tolist()
            row[f"{m}_source_steps"] = int(len(keep))
        return row

    def close(self) -> None:
        pass


def _label_map(vocab, where: str) -> dict[int, int | None]:
    """id → label index (None for special tokens) from the .pt's dict['tgt'] (word → id)."""
    if not isinstance(vocab, dict) or not vocab:
        raise MoseiError(f"{where}: dict['tgt'] is {type(vocab).__name__}; expected the label vocabulary, "
                         f"a dict word -> id")
    mapping: dict[int, int | None] = {}
    found: dict[str, str] = {}
    for word, index in vocab.items():
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise MoseiError(f"{where}: dict['tgt'][{word!r}] = {index!r}; expected an integer id") from None
        if index in mapping:
            raise MoseiError(f"{where}: dict['tgt'] gives id {index} to more than one word; expected unique ids")
        key = _text(word).strip().lower()
        if key in LABEL_ALIASES:
            label = LABEL_ALIASES[key]
            if label in found:
                raise MoseiError(f"{where}: dict['tgt'] has both {found[label]!r} and {word!r} for {label}")
            found[label] = _text(word)
            mapping[index] = LABELS.index(label)
        elif key in SPECIAL_TOKENS:
            mapping[index] = None
        else:
            raise MoseiError(f"{where}: dict['tgt'] word {word!r} (id {index}) is neither an emotion "
                             f"({', '.join(LABELS)}) nor a special token (PAD, UNK, BOS, EOS)")
    missing = [label for label in LABELS if label not in found]
    if missing:
        raise MoseiError(f"{where}: dict['tgt'] lacks {', '.join(missing)}; expected all six emotions "
                         f"({', '.join(LABELS)}) besides the special tokens")
    return mapping


def _label_vectors(tgt, mapping: dict[int, int | None], where: str, n: int) -> np.ndarray:
    if not isinstance(tgt, (list, tuple)) and not hasattr(tgt, "__len__"):
        raise MoseiError(f"{where}: 'tgt' is {type(tgt).__name__}; expected one label-id list per sample")
    if len(tgt) != n:
        raise MoseiError(f"{where}: 'tgt' has {len(tgt)} label lists but the features have {n} samples; "
                         f"expected one per sample")
    vectors = np.zeros((n, len(LABELS)), dtype=np.int8)
    for i, ids in enumerate(tgt):
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise MoseiError(f"{where}: sample {i}: 'tgt' entry is {type(ids).__name__}; expected a list of "
                             f"label ids [BOS, ids..., EOS]")
        for value in ids:
            try:
                index = int(value)
            except (TypeError, ValueError):
                raise MoseiError(f"{where}: sample {i}: label id {value!r} is not an integer") from None
            if index not in mapping:
                raise MoseiError(f"{where}: sample {i}: label id {index} is not in dict['tgt'] "
                                 f"(ids {sorted(mapping)}); expected ids of the vocabulary")
            if mapping[index] is not None:
                vectors[i, mapping[index]] = 1
    return vectors


def _split_dict(data, split: str, path: Path, keys) -> dict:
    if not isinstance(data, dict):
        raise MoseiError(f"{path}: holds a {type(data).__name__}; expected a dict with 'train', 'valid', 'test'")
    if split not in data:
        raise MoseiError(f"{path}: no '{split}' group (found {sorted(map(str, data))}); expected 'train', "
                         f"'valid' and 'test'")
    part = data[split]
    if not isinstance(part, dict):
        raise MoseiError(f"{path}: '{split}' is a {type(part).__name__}; expected a dict")
    missing = [k for k in keys if k not in part]
    if missing:
        raise MoseiError(f"{path}: '{split}' has no {', '.join(repr(k) for k in missing)} (found "
                         f"{sorted(map(str, part))}); expected {', '.join(repr(k) for k in keys)}")
    return part


def _ids_from_meta(meta, path: Path, split: str, n: int) -> list[tuple[str, str | None, float | None, float | None]]:
    """(id, video, start, end) per sample from an ``id`` array: rows [video, start, end] or plain strings."""
    array = np.asarray(meta.detach().cpu().numpy() if hasattr(meta, "detach") else meta, dtype=object)
    if len(array) != n:
        raise MoseiError(f"{path}: {split}/id has {len(array)} rows but the features have {n} samples")
    out = []
    if array.ndim == 2 and array.shape[1] >= 3:
        for i, row in enumerate(array):
            video = _text(row[0]).strip()
            try:
                start, end = float(_text(row[1])), float(_text(row[2]))
            except ValueError:
                raise MoseiError(f"{path}: {split}/id row {i} is {list(map(_text, row))}; expected "
                                 f"[video id, start seconds, end seconds]") from None
            out.append((f"{video}[{_time_text(row[1])},{_time_text(row[2])}]", video, start, end))
    elif array.ndim == 1:
        for value in array:
            key = _text(value).strip()
            # VIDEO[SEGMENT]: the segment part may be an index or times ("vid[3]", "vid[1.5,4.0]")
            out.append((key, re.sub(r"\[[^\[\]]*\]$", "", key), None, None))
    else:
        raise MoseiError(f"{path}: {split}/id has shape {array.shape}; expected (N, 3) rows "
                         f"[video id, start, end] or (N,) strings")
    return out


def _read_pt_labels(path: Path, trust_pickle: bool) -> tuple[dict, dict[int, int | None]]:
    data = _load_source(load_torch_file, path, trust_pickle)
    if not isinstance(data, dict):
        raise MoseiError(f"{path}: holds a {type(data).__name__}; expected the dict of train_valid_test.pt")
    if not isinstance(data.get("dict"), dict) or "tgt" not in data["dict"]:
        raise MoseiError(f"{path}: no dict['tgt'] group; expected the label vocabulary (word -> id) there")
    return data, _label_map(data["dict"]["tgt"], str(path))


def _read_pt(path: Path, options: MoseiOptions, counts: dict, bar) -> tuple[dict[str, list[Sample]], _ArraySource]:
    data, mapping = _read_pt_labels(path, options.trust_pickle)
    samples: dict[str, list[Sample]] = {}
    arrays, keep = {}, {}
    for split in SPLITS:
        part = _split_dict(data, split, path, [*PT_KEYS.values(), "tgt"])
        arrays[split] = {}
        for m, key in PT_KEYS.items():
            where = f"{path}: {split}/{key}"
            array = _as_array(part[key], where, ndim=3)
            if array.shape[2] != MODALITY_DIMS[m]:
                raise MoseiError(f"{where} has shape {tuple(array.shape)}; expected (N, T, {MODALITY_DIMS[m]}) "
                                 f"({MODALITY_SOURCES[m]})")
            _check_positions_fit(array.shape[1], where, m)
            part[key] = None  # free the source copy as we go
            arrays[split][m] = array
        shapes = {PT_KEYS[m]: a.shape[:2] for m, a in arrays[split].items()}
        if len(set(shapes.values())) != 1:
            raise MoseiError(f"{path}: {split} modalities have (N, T) {shapes}; expected the same N and the same "
                             f"T (aligned sequences)")
        n = len(arrays[split]["text"])
        labels = _label_vectors(part["tgt"], mapping, f"{path}: {split}", n)
        metas = _ids_from_meta(part["id"], path, split, n) if part.get("id") is not None else \
            [(f"{split}-{i:05d}", None, None, None) for i in range(n)]
        for m, key in PT_KEYS.items():
            counts["neg_inf_replaced"][m] += _fix_and_check_finite(
                arrays[split][m], options.neg_inf_to_zero,
                lambda i, t, key=key: f"{path}: {split} sample {i} ({metas[i][0]}) {key}")
        text_steps = _nonzero_steps(arrays[split]["text"])
        real = text_steps | _nonzero_steps(arrays[split]["audio"]) | _nonzero_steps(arrays[split]["vision"])
        keep[split] = {m: real for m in MODALITY_DIMS}
        for m in MODALITY_DIMS:
            counts["padding_steps_removed"][m] += int((~real).sum())
        words = text_steps.sum(axis=1)
        samples[split] = [
            Sample(id=ident, split=split, label_vector=labels[i].tolist(), source_index=i, words=int(words[i]),
                   video_id=video, segment_start=start, segment_end=end, ref=(split, i))
            for i, (ident, video, start, end) in enumerate(metas)]
        bar.update(1)
    return samples, _ArraySource(arrays, keep)


def _read_pkl(path: Path, options: MoseiOptions, counts: dict, bar) -> tuple[dict[str, list[Sample]], _ArraySource]:
    if options.labels_pt is None:
        raise MoseiError(f"{path}: the pkl form needs --labels-pt train_valid_test.pt: its labels come from the "
                         f"aligned .pt, paired by position within each split (as TAILOR does)")
    labels_data, mapping = _read_pt_labels(Path(options.labels_pt), options.trust_pickle)
    data = _load_source(load_pickle_file, path, options.trust_pickle)
    samples: dict[str, list[Sample]] = {}
    arrays, keep = {}, {}
    for split in SPLITS:
        part = _split_dict(data, split, path, list(PKL_KEYS.values()))
        arrays[split] = {}
        for m, key in PKL_KEYS.items():
            where = f"{path}: {split}/{key}"
            array = _as_array(part[key], where, ndim=3)
            if array.shape[2] != MODALITY_DIMS[m]:
                raise MoseiError(f"{where} has shape {tuple(array.shape)}; expected (N, T, {MODALITY_DIMS[m]}) "
                                 f"({MODALITY_SOURCES[m]})")
            _check_positions_fit(array.shape[1], where, m)
            part[key] = None
            arrays[split][m] = array
        sizes = {PKL_KEYS[m]: len(a) for m, a in arrays[split].items()}
        if len(set(sizes.values())) != 1:
            raise MoseiError(f"{path}: {split} modalities have N {sizes}; expected the same number of samples")
        n = len(arrays[split]["text"])
        label_part = _split_dict(labels_data, split, Path(options.labels_pt), ["tgt"])
        if len(label_part["tgt"]) != n:
            raise MoseiError(f"{path}: {split} has {n} samples but {options.labels_pt} {split}/tgt has "
                             f"{len(label_part['tgt'])}; expected the same count (samples are paired by position)")
        labels = _label_vectors(label_part["tgt"], mapping, f"{options.labels_pt}: {split}", n)
        metas = _ids_from_meta(part["id"], path, split, n) if part.get("id") is not None else \
            [(f"{split}-{i:05d}", None, None, None) for i in range(n)]
        sentiment = [None] * n
        if part.get("labels") is not None:
            values = np.asarray(part["labels"], dtype=np.float64)
            if values.size == n:
                for i, value in enumerate(values.reshape(n)):
                    _check_label_ranges([value], ["sentiment"], f"{path}: {split} sample {i} ({metas[i][0]})")
                sentiment = [float(v) for v in values.reshape(n)]
        for m, key in PKL_KEYS.items():
            counts["neg_inf_replaced"][m] += _fix_and_check_finite(
                arrays[split][m], options.neg_inf_to_zero,
                lambda i, t, key=key: f"{path}: {split} sample {i} ({metas[i][0]}) {key}")
        keep[split] = {m: _nonzero_steps(arrays[split][m]) for m in MODALITY_DIMS}
        for m in MODALITY_DIMS:
            counts["padding_steps_removed"][m] += int((~keep[split][m]).sum())
        words = keep[split]["text"].sum(axis=1)
        samples[split] = [
            Sample(id=ident, split=split, label_vector=labels[i].tolist(), source_index=i, words=int(words[i]),
                   video_id=video, segment_start=start, segment_end=end, sentiment=sentiment[i], ref=(split, i))
            for i, (ident, video, start, end) in enumerate(metas)]
        bar.update(1)
    return samples, _ArraySource(arrays, keep)


# ----------------------------------------------------------------------------------------------
# Form 1: CMU-MultimodalSDK computational sequences


@dataclass
class _Csd:
    path: Path
    root: str
    role: str | None
    handle: object  # h5py.File
    data: object  # h5py.Group

    def video(self, key: str):
        """(features dataset, intervals dataset) of a video after shape checks, or None when absent."""
        h5py = _import_h5py()
        group = self.data.get(key)
        if group is None:
            return None
        if not isinstance(group, h5py.Group):
            raise MoseiError(f"{self.path}: video '{key}' is not a group; expected data/{key}/features and "
                             f"data/{key}/intervals")
        for name in ("features", "intervals"):
            if name not in group:
                raise MoseiError(f"{self.path}: video '{key}' has no '{name}' (missing group member); expected "
                                 f"data/{key}/features and data/{key}/intervals as the SDK writes them")
        features, intervals = group["features"], group["intervals"]
        width = CSD_WIDTHS[self.role]
        if len(intervals.shape) != 2 or intervals.shape[1] != 2:
            raise MoseiError(f"{self.path}: video '{key}' intervals have shape {intervals.shape}; expected (n, 2) "
                             f"[start, end] seconds")
        if self.role == "labels" and len(features.shape) == 2 and features.shape[1] != width:
            raise MoseiError(f"{self.path}: video '{key}' label rows have length {features.shape[1]}; expected "
                             f"{width} ([{', '.join(SDK_LABEL_ROW)}])")
        if len(features.shape) != 2 or features.shape[1] != width or features.shape[0] != intervals.shape[0]:
            raise MoseiError(f"{self.path}: video '{key}' features have shape {features.shape} with "
                             f"{intervals.shape[0]} intervals; expected ({intervals.shape[0]}, {width}) "
                             f"({'labels' if self.role == 'labels' else MODALITY_SOURCES[self.role]})")
        if features.dtype.kind not in "fiu":
            raise MoseiError(f"{self.path}: video '{key}' features have dtype {features.dtype}; expected numbers")
        return features, intervals


def _import_h5py():
    try:
        import h5py  # here, not at the top: only the sdk form reads HDF5, and h5py is the "mosei" extra
    except ImportError:
        raise MoseiError("the sdk form (.csd files) needs h5py: pip install 'nemu-hhmpn[mosei]' (or pip install "
                         "h5py)") from None
    return h5py


def _open_csds(src: Path) -> tuple[dict[str, _Csd], list[dict]]:
    h5py = _import_h5py()

    paths = sorted(p for p in Path(src).iterdir() if p.suffix == ".csd" and p.is_file())
    if not paths:
        raise MoseiError(f"{src}: no .csd files; expected the SDK's computational sequences (GloVe vectors, "
                         f"COVAREP, FACET 4.2, All Labels)")
    opened: list[_Csd] = []
    try:
        for path in paths:
            try:
                handle = h5py.File(path, "r")
            except OSError as exc:
                raise MoseiError(f"{path}: not an HDF5 computational sequence ({exc})") from exc
            roots = list(handle.keys())
            if len(roots) != 1:
                handle.close()
                raise MoseiError(f"{path}: {len(roots)} root groups {roots}; expected exactly one, named after "
                                 f"the sequence")
            root = handle[roots[0]]
            if not isinstance(root, h5py.Group) or "data" not in root:
                handle.close()
                raise MoseiError(f"{path}: root group '{roots[0]}' has no 'data' group (missing group); expected "
                                 f"'{roots[0]}/data/<video_id>/features|intervals' and '{roots[0]}/metadata'")
            role = next((r for r, names in CSD_ROOT_NAMES.items() if _norm(roots[0]) in names), None)
            opened.append(_Csd(path, roots[0], role, handle, root["data"]))
        # A file whose root name is unknown is recognised by its feature width, if that role is still free.
        taken = {c.role for c in opened if c.role}
        for csd in opened:
            if csd.role is None:
                first = next(iter(csd.data.values()), None)
                width = first["features"].shape[-1] if isinstance(first, h5py.Group) and "features" in first \
                    else None
                role = next((r for r, w in CSD_WIDTHS.items() if w == width), None)
                if role is not None and role not in taken:
                    csd.role = role
        by_role: dict[str, _Csd] = {}
        for csd in opened:
            if csd.role is None:
                continue
            if csd.role in by_role:
                raise MoseiError(f"{src}: both {by_role[csd.role].path.name} ('{by_role[csd.role].root}') and "
                                 f"{csd.path.name} ('{csd.root}') look like the {csd.role} sequence; keep one")
            by_role[csd.role] = csd
        for role in ("labels", *MODALITY_DIMS):
            if role not in by_role:
                what = "the labels ('All Labels', rows of 7)" if role == "labels" else \
                    f"{MODALITY_SOURCES[role]} ({MODALITY_DIMS[role]}-d)"
                raise MoseiError(f"{src}: no computational sequence for {what}; found "
                                 f"{', '.join(f'{c.path.name} ({c.root!r})' for c in opened)}")
    except BaseException:
        for csd in opened:
            csd.handle.close()
        raise
    files = [{"name": c.path.name, "root": c.root, "role": c.role or "ignored", "bytes": c.path.stat().st_size}
             for c in opened]
    for csd in opened:
        if csd.role is None:
            csd.handle.close()
    return by_role, files


def _read_folds(path: Path) -> dict[str, str]:
    """video id → split from a JSON {"train": [...], "valid": [...], "test": [...]}."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise MoseiError(f"{path}: not a JSON folds file ({exc}); expected "
                         f'{{"train": [video ids], "valid": [...], "test": [...]}}') from exc
    if not isinstance(spec, dict) or any(not isinstance(spec.get(s), list) for s in SPLITS):
        raise MoseiError(f'{path}: expected a JSON object {{"train": [video ids], "valid": [...], "test": [...]}}')
    folds: dict[str, str] = {}
    for split in SPLITS:
        for video in spec[split]:
            video = str(video)
            if video in folds and folds[video] != split:
                raise MoseiError(f"{path}: video '{video}' is in both {folds[video]} and {split}; expected one fold")
            folds[video] = split
    return folds


def _segment_rows(intervals: np.ndarray, start: float, end: float) -> np.ndarray:
    return np.nonzero((intervals[:, 0] < end) & (intervals[:, 1] > start))[0]


class _SdkSource:
    def __init__(self, csds: dict[str, _Csd], neg_inf_to_zero: bool):
        self.csds = csds
        self.neg_inf_to_zero = neg_inf_to_zero
        self._cache: dict[str, tuple[str, tuple | None]] = {}

    def video_arrays(self, role: str, key: str):
        cached = self._cache.get(role)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = self.csds[role].video(key)
        arrays = None if found is None else (np.asarray(found[0][()], dtype=np.float32),
                                              np.asarray(found[1][()], dtype=np.float64))
        self._cache[role] = (key, arrays)
        return arrays

    def cut(self, m: str, key: str, start: float, end: float, segment: str) -> tuple[np.ndarray, int]:
        """The segment's nodes of modality m (checked finite) and the number of -inf replaced."""
        arrays = self.video_arrays(m, key)
        if arrays is None:
            return np.zeros((0, MODALITY_DIMS[m]), np.float32), 0
        features, intervals = arrays
        if not np.isfinite(intervals).all():
            raise MoseiError(f"{self.csds[m].path}: video '{key}' has non-finite intervals; expected seconds")
        nodes = features[_segment_rows(intervals, start, end)]
        replaced = 0
        if self.neg_inf_to_zero:
            neg = np.isneginf(nodes)
            replaced = int(neg.sum())
            nodes[neg] = 0.0
        bad = ~np.isfinite(nodes)
        if bad.any():
            step = int(np.argwhere(bad.any(axis=1))[0][0])
            kind = _describe_bad(nodes[step])
            hint = " (COVAREP's -inf for silence can be replaced by 0 with --neg-inf-to-zero)" \
                if kind == "-inf" and not self.neg_inf_to_zero else ""
            raise MoseiError(f"{self.csds[m].path}: video '{key}' segment {segment} has {kind} in node {step}; "
                             f"expected finite features{hint}")
        return nodes, replaced

    def nodes(self, sample: Sample) -> dict:
        key, _, start, end = sample.ref
        row = {}
        for m in MODALITY_DIMS:
            row[m], _ = self.cut(m, key, start, end, sample.id)
            row[f"{m}_positions"] = None
            row[f"{m}_source_steps"] = None
        return row

    def close(self) -> None:
        for csd in self.csds.values():
            csd.handle.close()


def _read_sdk(src: Path, options: MoseiOptions, counts: dict, files_out: list, progress: bool
              ) -> tuple[dict[str, list[Sample]], _SdkSource]:
    folds_path = Path(options.folds_file) if options.folds_file else STANDARD_FOLDS_FILE
    folds = _read_folds(folds_path)
    csds, files = _open_csds(src)
    files_out.extend(files)
    source = _SdkSource(csds, options.neg_inf_to_zero)
    try:
        labels = csds["labels"]
        samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
        keys = sorted(labels.data.keys())
        for key in tqdm(keys, desc="reading segments", unit="video", disable=not progress, file=sys.stderr):
            found = labels.video(key)
            rows = np.asarray(found[0][()], dtype=np.float64)
            intervals = np.asarray(found[1][()], dtype=np.float64)
            video = re.sub(r"\[\d+\]$", "", key)
            split = folds.get(video)
            if split is None:
                counts["not_in_folds"] += len(rows)
                continue
            single = len(rows) == 1 and video != key
            for i, (row, (start, end)) in enumerate(zip(rows, intervals)):
                segment = key if single else f"{key}[{i}]"
                if not np.isfinite(row).all():
                    raise MoseiError(f"{labels.path}: video '{key}' segment {segment} has {_describe_bad(row)} in its "
                                     f"labels; expected finite [{', '.join(SDK_LABEL_ROW)}]")
                _check_label_ranges(row, SDK_LABEL_ROW, f"{labels.path}: video '{key}' segment {segment}")
                if not (np.isfinite(start) and np.isfinite(end)) or end < start:
                    raise MoseiError(f"{labels.path}: video '{key}' segment {segment} has interval [{start}, {end}]; "
                                     f"expected finite seconds with start <= end")
                sizes, words = {}, 0
                for m in MODALITY_DIMS:
                    nodes, replaced = source.cut(m, key, float(start), float(end), segment)
                    counts["neg_inf_replaced"][m] += replaced
                    sizes[m] = len(nodes)
                    if m == "text":
                        words = int(np.any(nodes != 0, axis=1).sum())
                empty = [m for m, size in sizes.items() if size == 0]
                if empty and options.drop_incomplete:
                    counts["dropped_incomplete"] += 1
                    continue
                for m in empty:
                    counts["empty_modality"][m] += 1
                intensities = [float(v) for v in row[1:]]
                samples[split].append(Sample(
                    id=segment, split=split, label_vector=[int(v > 0) for v in intensities], source_index=i,
                    words=words, video_id=video, segment_start=float(start), segment_end=float(end),
                    sentiment=float(row[0]), intensities=intensities, ref=(key, i, float(start), float(end))))
    except BaseException:
        source.close()
        raise
    counts["folds_file"] = folds_path.name
    return samples, source


# ----------------------------------------------------------------------------------------------
# Building


def resolve_form(src: Path, form: str, labels_pt: Path | None) -> tuple[str, Path, Path | None]:
    """(form, the file or folder to read, labels .pt for the pkl form) from SRC and --form."""
    src = Path(src)
    if form not in FORMS:
        raise MoseiError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if src.is_dir():
        csd = sorted(src.glob("*.csd"))
        pkl = sorted(src.glob("*.pkl"))
        pt = sorted(src.glob("*.pt"))
        if form == "auto":
            form = "sdk" if csd else "pkl" if len(pkl) == 1 else "pt" if len(pt) == 1 else ""
            if not form:
                raise MoseiError(f"{src}: cannot tell the form: expected .csd files (sdk), one .pkl (pkl, with "
                                 f"--labels-pt) or one .pt (pt); found {len(csd)} .csd, {len(pkl)} .pkl, "
                                 f"{len(pt)} .pt. Pass SRC as the file, or --form")
        if form == "sdk":
            return form, src, labels_pt
        chosen = pkl if form == "pkl" else pt
        if len(chosen) != 1:
            raise MoseiError(f"{src}: expected exactly one .{form} file for --form {form}; found {len(chosen)}")
        if form == "pkl" and labels_pt is None and len(pt) == 1:
            labels_pt = pt[0]
        return form, chosen[0], labels_pt
    if form == "auto":
        form = {".pt": "pt", ".pkl": "pkl", ".pth": "pt"}.get(src.suffix)
        if form is None:
            raise MoseiError(f"{src}: cannot tell the form from the suffix {src.suffix!r}; expected a .pt or .pkl "
                             f"file, or the folder of .csd files (or pass --form)")
    if form == "sdk":
        raise MoseiError(f"{src}: the sdk form reads a folder of .csd files; pass that folder as SRC")
    return form, src, labels_pt


def _modalities(form: str) -> list[Modality]:
    if form == "sdk":
        nodes = {"text": "one timestamped word inside the segment (GloVe 840B 300-d vector)",
                 "audio": "one COVAREP frame inside the segment", "vision": "one FACET 4.2 frame inside the segment"}
    elif form == "pt":
        nodes = {"text": "one word-aligned time step (GloVe vector of the word)",
                 "audio": "one word-aligned time step (COVAREP averaged over the word)",
                 "vision": "one word-aligned time step (FACET 4.2 averaged over the word)"}
    else:
        nodes = {"text": "one word (GloVe vector)", "audio": "one unaligned COVAREP time step",
                 "vision": "one unaligned FACET 4.2 time step"}
    return [Modality(m, dim, nodes[m], sequential=True) for m, dim in MODALITY_DIMS.items()]


def _chunk_table(chunk: list[Sample], source, schema: pa.Schema) -> pa.Table:
    rows = [source.nodes(s) for s in chunk]
    columns = {
        "id": [s.id for s in chunk],
        "labels": [[name for name, v in zip(LABELS, s.label_vector) if v] for s in chunk],
        LABEL_IDS: [label_ids(s.label_vector) for s in chunk],
        "label_vector": [s.label_vector for s in chunk],
        "fold": [s.fold for s in chunk],
        "duration_seconds": [s.duration for s in chunk],
        "video_id": [s.video_id for s in chunk],
        "segment_start": [s.segment_start for s in chunk],
        "segment_end": [s.segment_end for s in chunk],
        "source_index": [s.source_index for s in chunk],
        "sentiment": [s.sentiment for s in chunk],
        "intensities": [s.intensities for s in chunk],
        "dominant_emotion": [s.dominant_emotion for s in chunk],
        "words": [s.words for s in chunk],
    }
    for m in MODALITY_DIMS:
        columns[f"{m}_positions"] = [r[f"{m}_positions"] for r in rows]
        columns[f"{m}_source_steps"] = [r[f"{m}_source_steps"] for r in rows]
        columns[m] = [r[m] for r in rows]
    return table_from_columns(columns, schema, MODALITY_DIMS)


def _shard_parts(chunk: list[Sample], source, schema: pa.Schema, bar):
    """One shard's table, its features read only when the writer comes to it (one shard's features in memory)."""
    yield _chunk_table(chunk, source, schema)
    bar.update(len(chunk))


def _statistics(samples: dict[str, list[Sample]], words_rule: str) -> dict:
    tables = {}
    for split in SPLITS:
        tables[split] = pa.table({
            "label_vector": pa.array([s.label_vector for s in samples[split]], pa.list_(pa.int8(), len(LABELS))),
            "duration_seconds": pa.array([s.duration for s in samples[split]], pa.float32()),
        })
    stats = table1_statistics(tables, LABELS, [])
    words = np.array([s.words for split in SPLITS for s in samples[split] if s.words is not None], dtype=np.float64)
    stats["mean_words_per_sentence"] = round(float(words.mean()), 2) if len(words) else None
    stats["sentences"] = int(len(words))
    stats["words_per_sentence_rule"] = words_rule
    stats["duration_unit"] = "utterance (segment)"
    stats["without_labels"] = int(sum(1 for split in SPLITS for s in samples[split] if not any(s.label_vector)))
    return stats


WORDS_RULES = {
    "sdk": "per segment, the GloVe word-vector rows inside its interval that are not all zero (the SDK's silence "
           "entries are zero vectors); one segment = one sentence",
    "pt": "per sample, the non-padding text time steps whose word vector is not all zero (word-aligned steps; "
          "the .pt has no words); one sample = one sentence",
    "pkl": "per sample, the non-padding text time steps (word vectors not all zero); one sample = one sentence",
}
DURATION_RULES = {
    "sdk": "segment end - start from the labels sequence's intervals",
    "pt": "unknown: the aligned .pt carries no times (null)",
    "pkl": "end - start from the pkl's id rows [video, start, end]",
}
PADDING_RULES = {
    "sdk": "none: nodes are the feature rows whose interval overlaps the segment [start, end); "
           "<m>_positions and <m>_source_steps are null",
    "pt": "a time step that is all-zero in text, audio and vision together is padding and dropped; "
          "<m>_positions = source step of each kept node (the same for the three modalities), "
          "<m>_source_steps = padded length; nemu.mosei.restore_padding gives back the tensor and mask",
    "pkl": "per modality, a time step that is all-zero in that modality is padding and dropped; "
           "<m>_positions = source step of each kept node, <m>_source_steps = padded length; "
           "nemu.mosei.restore_padding gives back the tensor and mask",
}
SPLIT_SOURCES = {
    "sdk": "the SDK's standard folds by video (or --folds-file); every segment follows its video",
    "pt": "the .pt's own train/valid/test",
    "pkl": "the pkl's own train/valid/test (the same as the labels .pt's)",
}


GROUPED_RULE = "grouped by video"
OFFICIAL_RULE = ("not grouped: row-level, as in earlier releases (segments of one video may sit in different folds, "
                 "so a CV rotation can put one speaker and topic in train and test; evaluate on the published "
                 "split for a leak-free number)")


def _assign_cv_folds(ordered: list[Sample], label_matrix: np.ndarray, options: MoseiOptions, src: Path) -> dict:
    """Set every sample's ``fold`` by the rule ``options.folds``; returns the manifest's ``folds`` record."""
    stratifier = ("iterative stratification (iterative-stratification MultilabelStratifiedKFold, shuffled with "
                  "the seed)")
    if options.folds == "official":
        for s, fold in zip(ordered, assign_folds(label_matrix, options.seed)):
            s.fold = int(fold)
        return {"option": "official", "rule": OFFICIAL_RULE, "n_folds": N_FOLDS, "seed": options.seed,
                "method": f"{stratifier} over the samples"}
    # A sample without a video (a .pt without ids) is its own group: nothing says which segments share a video.
    groups = np.array([s.video_id if s.video_id else f"\0sample:{s.id}" for s in ordered], dtype=object)
    without_video = sum(1 for s in ordered if not s.video_id)
    videos = len({s.video_id for s in ordered if s.video_id})
    units = videos + without_video
    if units < N_FOLDS:
        raise MoseiError(f"{src}: {videos} video(s) (and {without_video} sample(s) without a video id) cannot fill "
                         f"the {N_FOLDS} CV folds grouped by video; at least {N_FOLDS} are needed (or pass "
                         f"--folds official for row-level folds)")
    for s, fold in zip(ordered, assign_folds(label_matrix, options.seed, groups=groups)):
        s.fold = int(fold)
    rule = GROUPED_RULE if not without_video else (
        f"{GROUPED_RULE} ({without_video} sample(s) without a video id in the source, each its own group)")
    return {"option": "grouped", "rule": rule, "n_folds": N_FOLDS, "seed": options.seed, "group_key": "video_id",
            "videos": videos, "samples_without_video": without_video,
            "method": f"{stratifier} over videos as units, each carrying the union of its segments' labels; "
                      f"every segment takes its video's fold"}


def build_mosei(options: MoseiOptions) -> MoseiSummary:
    """Read MOSEI in any of the three forms and write the toolkit's layout; see the module docstring."""
    form, src, labels_pt = resolve_form(Path(options.src), options.form, options.labels_pt)
    options.labels_pt = labels_pt
    if options.folds_file is not None and form != "sdk":
        raise MoseiError(f"--folds-file applies to the sdk form only; the {form} form keeps its own "
                         f"train/valid/test")
    if options.folds not in FOLD_RULES:
        raise MoseiError(f"unknown fold rule {options.folds!r}; expected one of {', '.join(FOLD_RULES)}")
    if options.rows_per_shard < 1 or options.row_group_rows < 1:
        raise MoseiError("--shard-rows and --row-group-rows must be at least 1")
    out_dir = Path(options.out_dir)
    counts: dict = {"neg_inf_replaced": {m: 0 for m in MODALITY_DIMS},
                    "padding_steps_removed": {m: 0 for m in MODALITY_DIMS}}
    files: list[dict] = []
    if form == "sdk":
        counts.update(not_in_folds=0, dropped_incomplete=0, empty_modality={m: 0 for m in MODALITY_DIMS})
        samples, source = _read_sdk(src, options, counts, files, options.progress)
    else:
        with tqdm(total=len(SPLITS), desc=f"reading {src.name}", unit="split", disable=not options.progress,
                  file=sys.stderr) as bar:
            reader = _read_pt if form == "pt" else _read_pkl
            samples, source = reader(src, options, counts, bar)
        files.append({"name": src.name, "role": "features and labels" if form == "pt" else "features",
                      "bytes": src.stat().st_size})
        if form == "pkl":
            files.append({"name": Path(labels_pt).name, "role": "labels (tgt, dict['tgt'])",
                          "bytes": Path(labels_pt).stat().st_size})
    try:
        ordered = [s for split in SPLITS for s in samples[split]]
        seen: dict[str, str] = {}
        for s in ordered:
            if s.id in seen:
                raise MoseiError(f"{src}: sample id '{s.id}' occurs twice ({seen[s.id]} and {s.split}); expected "
                                 f"unique segments")
            seen[s.id] = s.split
        if len(ordered) < N_FOLDS:
            raise MoseiError(f"{src}: {len(ordered)} samples; at least {N_FOLDS} are needed for the 10 CV folds")
        label_matrix = np.array([s.label_vector for s in ordered], dtype=np.int8)
        fold_record = _assign_cv_folds(ordered, label_matrix, options, src)

        counts.update(samples=len(ordered), per_split={s: len(samples[s]) for s in SPLITS},
                      without_labels=int((label_matrix.sum(axis=1) == 0).sum()))
        modalities = _modalities(form)
        facts = {
            "format_version": FORMAT_VERSION,
            "dataset": DATASET,
            # nemu.provenance's schema: the official files read (the sdk's ignored sequences are not read)
            "source": {"kind": CMU_MOSEI, "form": form,
                       "files": [f["name"] for f in files if f.get("role") != "ignored"]},
            "folds": fold_record,
            "labels": list(LABELS),
            "modalities": [m.to_dict() for m in modalities],
            "settings": {
                "seed": options.seed,
                "source": {"form": form, "files": files, "trust_pickle": options.trust_pickle},
                "labels": {"order": list(LABELS),
                           "rule": "sdk: an emotion is present when its intensity is > 0 (row [sentiment, happy, "
                                   "sad, anger, surprise, disgust, fear]); pt/pkl: the label ids of 'tgt' mapped "
                                   "to names through dict['tgt'] (special tokens skipped)",
                           "samples_without_emotion": "kept (the paper's Table 1 counts them)"},
                "features": {"neg_inf_to_zero": options.neg_inf_to_zero, "drop_incomplete": options.drop_incomplete,
                             "padding": PADDING_RULES[form]},
                "ids": {"sdk": "<video>[<segment index>]", "pt": "<split>-<index:05d> (or the .pt's ids)",
                        "pkl": "<video>[<start>,<end>] from the pkl's id rows"}[form],
                "duration": DURATION_RULES[form],
                "words_per_sentence": WORDS_RULES[form],
                "splits": {
                    "n_folds": N_FOLDS,
                    "method": fold_record["method"],
                    "rule": f"the published split is the source's ({SPLIT_SOURCES[form]}), kept in the split "
                            f"folders; the fold column is a separate stratified 10-fold CV over all samples, "
                            f"{fold_record['rule']} (cv_rotation(k): test = fold k, valid = fold k+1, train = the "
                            f"rest), so rotation 0 is NOT the published split",
                    "published_split": SPLIT_SOURCES[form],
                    "rotation_0_is_published_split": False,
                },
            },
            "counts": counts,
            "statistics": _statistics(samples, WORDS_RULES[form]),
        }
        schema = with_manifest(build_schema(len(LABELS), modalities, EXTRA_FIELDS), facts)
        # The NEMu build's writer and publish step: the lock on OUT, everything staged beside the previous
        # dataset and swapped in at once, so a kill, a second ingestion or a full disk leaves OUT whole.
        try:
            with DatasetPublisher(out_dir) as publisher, \
                    tqdm(total=len(ordered), desc="writing shards", unit="sample", disable=not options.progress,
                         file=sys.stderr) as bar:
                shards = {split: [_shard_parts(chunk, source, schema, bar)
                                  for chunk in shard_chunks(samples[split], options.rows_per_shard)]
                          for split in SPLITS}
                write_dataset(publisher, facts, schema, shards, options.row_group_rows)
        except (FolderLocked, FolderConflict) as exc:
            raise MoseiError(str(exc)) from None
    finally:
        source.close()
    return MoseiSummary(form=form, splits={s: len(samples[s]) for s in SPLITS}, counts=counts, out_dir=out_dir,
                        folds=fold_record["rule"])
