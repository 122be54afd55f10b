"""CMU-MOSEI into the shared layout: the three source forms, written here in their exact formats."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import nemu
from nemu.mosei import (
    LABELS, MoseiError, MoseiOptions, UntrustedPickleError, build_mosei, restore_padding,
)
from nemu.shards import sha256_file
from pipelines import build_mosei as cli
from tests.conftest import manifest_from_schema

DIMS = {"text": 300, "audio": 74, "vision": 35}


def options(src, out, **kw) -> MoseiOptions:
    kw.setdefault("progress", False)
    return MoseiOptions(src=Path(src), out_dir=Path(out), **kw)


# ----------------------------------------------------------------------------------------------
# Form 1: SDK computational sequences (h5py, the SDK's group layout)


def write_csd(path: Path, root: str, videos: dict, metadata: bool = True) -> Path:
    """root/data/<video>/{features,intervals} and root/metadata/<key> (vlen str JSON), as the SDK writes."""
    with h5py.File(path, "w") as f:
        group = f.create_group(root)
        data = group.create_group("data")
        for video, (features, intervals) in videos.items():
            v = data.create_group(video)
            v.create_dataset("features", data=features)
            v.create_dataset("intervals", data=intervals)
        if metadata:
            meta = group.create_group("metadata")
            for key, value in {"root name": root, "computational sequence version": "1.0"}.items():
                meta.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
                meta[key][0] = json.dumps(value)
    return path


def frames(duration: float, step: float, dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, duration, step)
    intervals = np.stack([starts, starts + step], axis=1)
    return rng.normal(size=(len(starts), dim)).astype(np.float64) + 0.5, intervals


# Segments per video: (start, end, [sentiment, happy, sad, anger, surprise, disgust, fear])
SDK_VIDEOS = {
    "vidA": [(0.0, 2.0, [1.0, 0.333, 0, 1.0, 0, 0, 0]), (2.0, 4.5, [0.0, 0, 0, 0, 0, 0, 0])],
    "vidB": [(1.0, 3.0, [-1.0, 0, 2.0, 0, 0, 0, 0.666])],
    "vidC": [(0.0, 1.5, [0.5, 1.0, 0, 0, 1.0, 0, 0]), (1.5, 3.0, [0.0, 0, 0, 0, 0, 0.5, 0])],
    "vidD": [(0.5, 2.5, [2.0, 2.0, 0, 0, 0, 0, 0]), (2.5, 4.0, [-2, 0, 1.0, 1.0, 0, 0, 0])],
    "vidE": [(0.0, 2.0, [0.0, 0, 0.333, 0, 0, 0, 0])],
    "vidF": [(0.0, 1.0, [0.0, 0.666, 0, 0, 0, 0, 0]), (1.0, 2.0, [0.0, 0, 0, 0, 0.333, 0, 0])],
    "vidG": [(0.0, 3.0, [1.0, 1.0, 1.0, 0, 0, 0, 0])],
    "vidH": [(0.0, 2.0, [0.0, 0, 0, 0, 0, 0, 1.0])],
    "vidX": [(0.0, 2.0, [0.0, 1.0, 0, 0, 0, 0, 0])],  # in no fold: dropped and counted
}
SDK_FOLDS = {"train": ["vidA", "vidB", "vidC", "vidD", "vidE"], "valid": ["vidF"], "test": ["vidG", "vidH"]}


def sdk_source(root: Path, *, skip_vision: tuple[str, ...] = (), mutate=None, videos: dict | None = None,
               folds_spec: dict | None = None) -> tuple[Path, Path, dict]:
    """A folder of four .csd files (+ an ignored one) and a folds file. Returns (src, folds, features)."""
    videos = SDK_VIDEOS if videos is None else videos
    rng = np.random.default_rng(7)
    src = root / "csd"
    src.mkdir(parents=True)
    seqs = {"labels": {}, "text": {}, "audio": {}, "vision": {}}
    for video, segments in videos.items():
        duration = max(end for _, end, _ in segments)
        seqs["labels"][video] = (np.array([row for _, _, row in segments], np.float64),
                                 np.array([[s, e] for s, e, _ in segments], np.float64))
        words, word_iv = frames(duration, 0.5, 300, rng)
        words[1] = 0.0  # a zero vector (the SDK's silence entry): a node, but not a word
        seqs["text"][video] = (words, word_iv)
        seqs["audio"][video] = frames(duration, 0.1, 74, rng)
        if video not in skip_vision:
            seqs["vision"][video] = frames(duration, 0.25, 35, rng)
    if mutate:
        mutate(seqs)
    write_csd(src / "CMU_MOSEI_Labels.csd", "All Labels", seqs["labels"])
    write_csd(src / "CMU_MOSEI_TimestampedWordVectors.csd", "glove_vectors", seqs["text"])
    write_csd(src / "CMU_MOSEI_COVAREP.csd", "COVAREP", seqs["audio"])
    write_csd(src / "CMU_MOSEI_VisualFacet42.csd", "FACET 4.2", seqs["vision"])
    write_csd(src / "CMU_MOSEI_VisualOpenFace2.csd", "OpenFace_2",
              {v: (np.zeros((2, 5)), np.array([[0, 1], [1, 2]], np.float64)) for v in videos})
    folds = root / "folds.json"
    folds.write_text(json.dumps(SDK_FOLDS if folds_spec is None else folds_spec))
    return src, folds, seqs


def overlap(intervals, start, end):
    return np.nonzero((intervals[:, 0] < end) & (intervals[:, 1] > start))[0]


@pytest.fixture(scope="module")
def sdk_built(tmp_path_factory):
    base = tmp_path_factory.mktemp("sdk")
    src, folds, seqs = sdk_source(base, skip_vision=("vidE",))
    # 8 videos, too few for 10 folds grouped by video: these fixtures use the row-level rule (grouped: below)
    summary = build_mosei(options(src, base / "out", folds_file=folds, folds="official", rows_per_shard=4,
                                  row_group_rows=2))
    return base / "out", seqs, summary


def test_sdk_segments_labels_intervals_and_words(sdk_built):
    out, seqs, summary = sdk_built
    manifest = nemu.read_manifest(out)
    assert manifest["dataset"] == "MOSEI" and manifest["labels"] == list(LABELS)
    assert manifest["settings"]["source"]["form"] == "sdk"
    roles = {f["name"]: f["role"] for f in manifest["settings"]["source"]["files"]}
    assert roles["CMU_MOSEI_VisualOpenFace2.csd"] == "ignored" and roles["CMU_MOSEI_COVAREP.csd"] == "audio"
    assert summary.splits == {"train": 8, "valid": 2, "test": 2}
    assert manifest["counts"]["not_in_folds"] == 1
    assert manifest["counts"]["empty_modality"] == {"text": 0, "audio": 0, "vision": 1}
    frame = nemu.load(out, None).set_index("id")
    assert "vidX[0]" not in frame.index and len(frame) == 12
    for video, segments in SDK_VIDEOS.items():
        if video == "vidX":
            continue
        for i, (start, end, row) in enumerate(segments):
            r = frame.loc[f"{video}[{i}]"]
            expected = [int(v > 0) for v in row[1:]]
            assert list(r["label_vector"]) == expected
            assert list(r["labels"]) == [n for n, v in zip(LABELS, expected) if v]
            np.testing.assert_allclose(list(r["intensities"]), row[1:], rtol=1e-6)
            assert r["sentiment"] == pytest.approx(row[0])
            assert r["duration_seconds"] == pytest.approx(end - start)
            assert r["video_id"] == video and r["source_index"] == i
            dominant = LABELS[int(np.argmax(row[1:]))] if max(row[1:]) > 0 else None
            assert (r["dominant_emotion"] if isinstance(r["dominant_emotion"], str) else None) == dominant
            for m in DIMS:
                if video == "vidE" and m == "vision":
                    assert len(r[m]) == 0
                    continue
                features, intervals = seqs[m][video]
                rows = overlap(intervals, start, end)
                got = np.stack(list(r[m]))
                np.testing.assert_allclose(got, features[rows].astype(np.float32), rtol=1e-6)
                assert r[f"{m}_positions"] is None and np.isnan(r[f"{m}_source_steps"])  # no padding in the SDK
            words, intervals = seqs["text"][video]
            rows = overlap(intervals, start, end)
            assert r["words"] == int(np.any(words[rows] != 0, axis=1).sum())
    # vidA[0] is 0-2 s: 20 COVAREP frames of 0.1 s, 8 FACET frames of 0.25 s, 4 word rows of which one is zero
    first = frame.loc["vidA[0]"]
    assert (len(first["audio"]), len(first["vision"]), len(first["text"]), first["words"]) == (20, 8, 4, 3)
    # the split folders hold the SDK split; the fold column is a separate stratified CV
    for split, videos in SDK_FOLDS.items():
        assert set(nemu.load(out, split)["video_id"]) == set(videos)
    settings = manifest["settings"]["splits"]
    assert settings["rotation_0_is_published_split"] is False
    assert set(frame["fold"]) == set(range(10))
    # one label vs two or more, from the rule intensity > 0
    per_sample = np.array([sum(1 for v in row[1:] if v > 0) for video, segs in SDK_VIDEOS.items()
                           if video != "vidX" for _, _, row in segs])
    stats = manifest["statistics"]
    assert stats["one_label"] == int((per_sample == 1).sum())
    assert stats["two_or_more_labels"] == int((per_sample >= 2).sum())
    assert stats["without_labels"] == int((per_sample == 0).sum()) == 1
    durations = [end - start for v, segs in SDK_VIDEOS.items() if v != "vidX" for start, end, _ in segs]
    assert stats["mean_duration_seconds"] == round(float(np.mean(durations)), 2)
    assert stats["mean_words_per_sentence"] == round(float(frame["words"].mean()), 2)


def test_sdk_standard_folds_are_shipped_and_used_by_default(tmp_path):
    shipped = json.loads((Path(nemu.__file__).parent / "resources" / "mosei_standard_folds.json").read_text())
    assert (len(shipped["train"]), len(shipped["valid"]), len(shipped["test"])) == (2249, 300, 678)
    assert "CMU-MultimodalSDK" in shipped["source"]["repository"] and shipped["license"] == "MIT"
    # rename our tiny videos to real ids of each standard fold: the default folds must place them
    real = {"train": shipped["train"][:5], "valid": shipped["valid"][:1], "test": shipped["test"][:2]}
    rename = {old: new for split in SDK_FOLDS for old, new in zip(SDK_FOLDS[split], real[split])}

    def to_real_ids(seqs):
        for role in seqs:
            seqs[role] = {rename.get(k, k): v for k, v in seqs[role].items()}

    src, _, _ = sdk_source(tmp_path, mutate=to_real_ids)
    summary = build_mosei(options(src, tmp_path / "out", folds="official"))
    assert summary.splits == {"train": 8, "valid": 2, "test": 2}
    assert set(nemu.load(tmp_path / "out", "test")["video_id"]) == set(real["test"])


def test_sdk_drop_incomplete(tmp_path):
    src, folds, _ = sdk_source(tmp_path, skip_vision=("vidE",))
    summary = build_mosei(options(src, tmp_path / "out", folds_file=folds, drop_incomplete=True, folds="official"))
    assert summary.splits["train"] == 7 and summary.counts["dropped_incomplete"] == 1
    assert "vidE[0]" not in set(nemu.load(tmp_path / "out", None)["id"])


# ----------------------------------------------------------------------------------------------
# Form 2: the aligned train_valid_test.pt

SPLIT_SIZES = {"train": 8, "valid": 3, "test": 4}
T = 6


def pt_vocab() -> dict:
    """Specials 0-3 as LaMP writes them, emotions under shuffled ids (not the TAILOR order 4..9)."""
    ids = [9, 6, 4, 8, 5, 7]  # happy, sad, anger, surprise, disgust, fear
    vocab = {"<blank>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    vocab.update({name: i for name, i in zip(LABELS, ids)})
    return dict(sorted(vocab.items(), key=lambda item: item[1]))


def sample_labels(split: str, i: int) -> list[str]:
    k = (sum(map(ord, split)) + 3 * i) % 8
    return [[], [LABELS[i % 6]], [LABELS[i % 6], LABELS[(i + 2) % 6]], ["fear"], ["happy", "sad"],
            ["surprise"], ["anger", "disgust", "fear"], ["disgust"]][k]


def padded_split(split: str, n: int, rng) -> tuple[dict, dict]:
    """Arrays (N, T, dim) with padding: left-padded, right-padded and one all-zero step in the middle."""
    arrays = {m: np.zeros((n, T, d), np.float32) for m, d in DIMS.items()}
    real = np.zeros((n, T), bool)
    for i in range(n):
        length = 2 + i % 4
        steps = list(range(T - length, T)) if i % 2 == 0 else list(range(length))
        if i == 1:
            steps = [0, 2, 3]  # step 1 is all-zero in the middle: padding too
        for m, d in DIMS.items():
            arrays[m][i, steps] = rng.normal(size=(len(steps), d)) + 1.0
        if i == 2:
            arrays["text"][i, steps[0]] = 0.0  # no word at a real step (audio/vision are there): kept, not a word
        real[i, steps] = True
    return arrays, real


def write_pt(path: Path, rng=None, settings=None, mutate=None, sizes=None) -> tuple[dict, dict]:
    rng = rng or np.random.default_rng(3)
    vocab = pt_vocab()
    data = {"settings": settings if settings is not None else argparse.Namespace(
                max_text_seq_len=T, max_visual_seq_len=T, max_audio_seq_len=T),
            "dict": {"src": None, "tgt": vocab}}
    reals = {}
    for split, n in (sizes or SPLIT_SIZES).items():
        arrays, reals[split] = padded_split(split, n, rng)
        tgt = [[2, *[vocab[name] for name in sample_labels(split, i)], 3] for i in range(n)]
        data[split] = {"src-text": arrays["text"], "src-visual": arrays["vision"],
                       "src-audio": torch.from_numpy(arrays["audio"]), "tgt": tgt}
    if mutate:
        mutate(data)
    torch.save(data, path)
    return data, reals


@pytest.fixture(scope="module")
def pt_built(tmp_path_factory):
    base = tmp_path_factory.mktemp("pt")
    data, reals = write_pt(base / "train_valid_test.pt")
    summary = build_mosei(options(base / "train_valid_test.pt", base / "out", rows_per_shard=5, row_group_rows=2))
    return base, data, reals, summary


def test_pt_counts_and_vocabulary_mapping(pt_built):
    base, data, _, summary = pt_built
    out = base / "out"
    assert summary.form == "pt" and summary.splits == SPLIT_SIZES
    manifest = nemu.read_manifest(out)
    assert manifest["statistics"]["splits"] == SPLIT_SIZES
    for split, n in SPLIT_SIZES.items():
        frame = nemu.load(out, split)
        assert list(frame["id"]) == [f"{split}-{i:05d}" for i in range(n)]
        for i in range(n):
            expected = sample_labels(split, i)
            assert list(frame["labels"].iloc[i]) == [name for name in LABELS if name in expected]
            assert list(frame["label_vector"].iloc[i]) == [int(name in expected) for name in LABELS]
        # no intensities, no times in the .pt: null, never invented
        assert frame["intensities"].isna().all() and frame["dominant_emotion"].isna().all()
        assert frame["duration_seconds"].isna().all() and frame["video_id"].isna().all()
    assert manifest["statistics"]["mean_duration_seconds"] is None
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| Train | 8 | 16326 |" in card and "| Test | 4 | 4659 |" in card and "CMU-MOSEI" in card
    assert "pretty_name: MOSEI" in card and "- en" in card


def test_pt_padding_removed_and_restorable(pt_built):
    base, data, reals, _ = pt_built
    frame = nemu.load(base / "out", "train")
    for i in range(SPLIT_SIZES["train"]):
        row = frame.iloc[i]
        positions = np.nonzero(reals["train"][i])[0]
        for m, key in (("text", "src-text"), ("audio", "src-audio"), ("vision", "src-visual")):
            assert list(row[f"{m}_positions"]) == positions.tolist() and row[f"{m}_source_steps"] == T
            source = np.asarray(data["train"][key][i])
            padded, mask = restore_padding(np.stack(list(row[m])), row[f"{m}_positions"], row[f"{m}_source_steps"])
            np.testing.assert_array_equal(padded, source)
            np.testing.assert_array_equal(mask, reals["train"][i])
        assert row["words"] == int(np.any(np.asarray(data["train"]["src-text"][i]) != 0, axis=1).sum())
    assert list(frame["text_positions"].iloc[1]) == [0, 2, 3]  # the all-zero middle step is gone
    assert frame["words"].iloc[2] == len(frame["text"].iloc[2]) - 1  # a real step without a word
    counts = nemu.read_manifest(base / "out")["counts"]
    assert counts["padding_steps_removed"]["text"] == sum(int((~r).sum()) for r in reals.values())


def test_loader_and_collate_read_dims_from_manifest(pt_built):
    base, _, reals, _ = pt_built
    dataset = nemu.MMERDataset(base / "out", "train")
    assert dataset.modality_dims == DIMS and dataset.label_names == list(LABELS)
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=nemu.collate)))
    assert batch["labels"].shape == (4, 6)
    for m, dim in DIMS.items():
        assert batch["features"][m].shape[-1] == dim
        assert batch["masks"][m].sum(1).tolist() == [int(reals["train"][i].sum()) for i in range(4)]
    schema = pq.read_schema(next((base / "out" / "train").glob("*.parquet")))
    facts = manifest_from_schema(schema)
    assert facts["labels"] == list(LABELS) and facts["modalities"] == nemu.read_manifest(base / "out")["modalities"]
    nemu.verify(base / "out")


def test_hhmpn_train_and_run_all_accept_the_result_unchanged(pt_built, tmp_path):
    from pipelines import benchmark
    from pipelines import train

    base = pt_built[0]
    args = ["--data", str(base / "out"), "--profile", "quick", "--epochs", "1", "--d", "16", "--no-progress"]
    assert train.main(args + ["--out", str(tmp_path / "run")]) == 0
    assert train.main(args + ["--out", str(tmp_path / "cv"), "--fold", "3"]) == 0
    code = benchmark.main(["--data", f"mosei={base / 'out'}", "--models", "BR,HHMPN", "--out",
                         str(tmp_path / "results"), "--no-progress"])
    assert code == 0
    table = (tmp_path / "results" / "table2.md").read_text(encoding="utf-8")
    assert "MOSEI miF1(%)" in table and "| Ours | HHMPN |" in table
    assert not (tmp_path / "results" / "table3.md").exists()  # modality subsets are NEMu's Table 3


def test_same_input_same_bytes_and_cli(pt_built, tmp_path, capsys):
    base = pt_built[0]
    assert cli.main(["--raw", str(base / "train_valid_test.pt"), "--out", str(tmp_path / "again"), "--shard-rows", "5",
                     "--row-group-rows", "2", "--no-progress"]) == 0
    assert "train 8, valid 3, test 4" in capsys.readouterr().out
    for path in sorted((base / "out").glob("*/*.parquet")):
        assert sha256_file(path) == sha256_file(tmp_path / "again" / path.relative_to(base / "out"))
    assert cli.main(["--raw", str(base / "train_valid_test.pt"), "--out", str(tmp_path / "s1"), "--seed", "1",
                     "--no-progress"]) == 0


def test_cli_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("SRC", "--out", "--form", "--labels-pt", "--folds-file", "--seed", "--trust-pickle",
                 "--neg-inf-to-zero", "--drop-incomplete", "--shard-rows", "--row-group-rows", "--no-progress"):
        assert flag in text
    assert "auto" in text and "sdk" in text and "pkl" in text


# ----------------------------------------------------------------------------------------------
# Form 3: the unaligned pkl, labels from the .pt


def write_pkl(path: Path, rng=None, mutate=None, sizes=None, video=lambda split, i: f"v{split}{i // 2}") -> dict:
    rng = rng or np.random.default_rng(5)
    data = {}
    lengths = {"text": 5, "audio": 12, "vision": 9}
    for split, n in (sizes or SPLIT_SIZES).items():
        part = {}
        for m, d in DIMS.items():
            array = np.zeros((n, lengths[m], d), np.float32)
            for i in range(n):
                real = 1 + (i + len(m)) % lengths[m]
                array[i, lengths[m] - real:] = rng.normal(size=(real, d)) + 1.0  # left padding, per modality
            part[m] = array
        part["labels"] = (np.arange(n, dtype=np.float32) % 31).reshape(n, 1, 1) / 10  # sentiment in [0, 3]
        part["id"] = np.array([[video(split, i), f"{1.5 * i}", f"{1.5 * i + 1.25}"] for i in range(n)],
                              dtype=object)
        data[split] = part
    if mutate:
        mutate(data)
    with path.open("wb") as f:
        pickle.dump(data, f, protocol=4)
    return data


def test_pkl_paired_with_pt_labels(tmp_path, pt_built):
    base = pt_built[0]
    data = write_pkl(tmp_path / "mosei_senti_data_noalign.pkl")
    summary = build_mosei(options(tmp_path / "mosei_senti_data_noalign.pkl", tmp_path / "out",
                                  labels_pt=base / "train_valid_test.pt", folds="official"))  # 8 videos
    assert summary.form == "pkl" and summary.splits == SPLIT_SIZES
    frame = nemu.load(tmp_path / "out", "valid")
    for i in range(SPLIT_SIZES["valid"]):
        row = frame.iloc[i]
        assert row["id"] == f"vvalid{i // 2}[{1.5 * i!r},{1.5 * i + 1.25!r}]" and row["video_id"] == f"vvalid{i // 2}"
        assert row["duration_seconds"] == pytest.approx(1.25) and row["sentiment"] == pytest.approx(i / 10)
        assert list(row["label_vector"]) == [int(name in sample_labels("valid", i)) for name in LABELS]
        for m in DIMS:
            source = data["valid"][m][i]
            real = np.any(source != 0, axis=1)
            padded, mask = restore_padding(np.stack(list(row[m])), row[f"{m}_positions"], row[f"{m}_source_steps"])
            np.testing.assert_array_equal(padded, source)
            np.testing.assert_array_equal(mask, real)
        assert row["words"] == len(row["text"])
    assert nemu.read_manifest(tmp_path / "out")["statistics"]["mean_duration_seconds"] == 1.25
    # a folder holding the pkl and the .pt is recognised as form 3 with the .pt as labels
    both = tmp_path / "both"
    both.mkdir()
    (both / "mosei_senti_data_noalign.pkl").write_bytes((tmp_path / "mosei_senti_data_noalign.pkl").read_bytes())
    (both / "train_valid_test.pt").write_bytes((base / "train_valid_test.pt").read_bytes())
    assert build_mosei(options(both, tmp_path / "out2", folds="official")).form == "pkl"


def test_pkl_needs_labels_and_matching_counts(tmp_path):
    write_pkl(tmp_path / "x.pkl")
    with pytest.raises(MoseiError, match="--labels-pt"):
        build_mosei(options(tmp_path / "x.pkl", tmp_path / "out"))
    write_pt(tmp_path / "labels.pt", mutate=lambda d: d["test"]["tgt"].pop())
    with pytest.raises(MoseiError, match=r"x\.pkl: test has 4 samples but .*labels\.pt test/tgt has 3"):
        build_mosei(options(tmp_path / "x.pkl", tmp_path / "out", labels_pt=tmp_path / "labels.pt"))


# ----------------------------------------------------------------------------------------------
# Untrusted pickles


class CustomSettings:  # any class outside the allowlist: loading it needs full unpickling
    def __init__(self):
        self.max_text_seq_len = T


def test_pt_needing_full_unpickling_is_refused_without_trust_pickle(tmp_path, capsys):
    path = tmp_path / "train_valid_test.pt"
    write_pt(path, settings=CustomSettings())
    with pytest.raises(UntrustedPickleError, match=r"train_valid_test\.pt: refused.*--trust-pickle"):
        build_mosei(options(path, tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert cli.main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert build_mosei(options(path, tmp_path / "out", trust_pickle=True)).splits == SPLIT_SIZES


def test_plain_pickle_under_a_pt_name_loads_safely(tmp_path):
    data, _ = write_pt(tmp_path / "t.pt")
    for split in SPLIT_SIZES:
        data[split]["src-audio"] = data[split]["src-audio"].numpy()
    with (tmp_path / "plain.pt").open("wb") as f:
        pickle.dump(data, f, protocol=4)  # numpy arrays and an argparse.Namespace: allowed without trust
    assert build_mosei(options(tmp_path / "plain.pt", tmp_path / "out")).splits == SPLIT_SIZES
    data["settings"] = CustomSettings()
    with (tmp_path / "plain.pt").open("wb") as f:
        pickle.dump(data, f, protocol=4)
    with pytest.raises(UntrustedPickleError, match=r"plain\.pt: refused.*CustomSettings.*--trust-pickle"):
        build_mosei(options(tmp_path / "plain.pt", tmp_path / "out"))


def test_pkl_needing_full_unpickling_is_refused_without_trust_pickle(tmp_path, pt_built):
    labels = pt_built[0] / "train_valid_test.pt"
    path = tmp_path / "noalign.pkl"
    write_pkl(path, mutate=lambda d: d.update(meta=CustomSettings()))
    with pytest.raises(UntrustedPickleError, match=r"noalign\.pkl: refused.*CustomSettings.*--trust-pickle"):
        build_mosei(options(path, tmp_path / "out", labels_pt=labels))
    assert build_mosei(options(path, tmp_path / "out", labels_pt=labels, trust_pickle=True,
                               folds="official")).splits == SPLIT_SIZES


# ----------------------------------------------------------------------------------------------
# Bad input: each error names the file, the video/segment (or split and sample) and what was expected


def test_sdk_missing_data_group(tmp_path):
    src, folds, _ = sdk_source(tmp_path)
    with h5py.File(src / "CMU_MOSEI_COVAREP.csd", "w") as f:
        f.create_group("COVAREP").create_group("metadata")
    with pytest.raises(MoseiError, match=r"CMU_MOSEI_COVAREP\.csd: root group 'COVAREP' has no 'data' group"):
        build_mosei(options(src, tmp_path / "out", folds_file=folds))


def test_sdk_video_missing_intervals(tmp_path):
    src, folds, _ = sdk_source(tmp_path)
    with h5py.File(src / "CMU_MOSEI_VisualFacet42.csd", "a") as f:
        del f["FACET 4.2/data/vidC/intervals"]
    with pytest.raises(MoseiError, match=r"VisualFacet42\.csd: video 'vidC' has no 'intervals'"):
        build_mosei(options(src, tmp_path / "out", folds_file=folds))


def test_sdk_missing_sequence(tmp_path):
    src, folds, _ = sdk_source(tmp_path)
    (src / "CMU_MOSEI_COVAREP.csd").unlink()
    with pytest.raises(MoseiError, match=r"no computational sequence for COVAREP \(74-d\)"):
        build_mosei(options(src, tmp_path / "out", folds_file=folds))


def test_sdk_wrong_feature_width(tmp_path):
    def narrow_audio(seqs):
        features, intervals = seqs["audio"]["vidD"]
        seqs["audio"]["vidD"] = (features[:, :70], intervals)

    src, folds, _ = sdk_source(tmp_path, mutate=narrow_audio)
    with pytest.raises(MoseiError,
                       match=r"COVAREP\.csd: video 'vidD' features have shape \(\d+, 70\).*expected \(\d+, 74\)"):
        build_mosei(options(src, tmp_path / "out", folds_file=folds))


def test_sdk_label_length_not_7(tmp_path):
    def six_labels(seqs):
        rows, intervals = seqs["labels"]["vidB"]
        seqs["labels"]["vidB"] = (rows[:, 1:], intervals)

    src, folds, _ = sdk_source(tmp_path, mutate=six_labels)
    with pytest.raises(MoseiError, match=r"Labels\.csd: video 'vidB' label rows have length 6; expected 7 "
                                         r"\(\[sentiment, happy, sad, anger, surprise, disgust, fear\]\)"):
        build_mosei(options(src, tmp_path / "out", folds_file=folds))


@pytest.mark.parametrize("value, kind", [(np.nan, "NaN"), (np.inf, r"\+inf")])
def test_sdk_nan_or_inf_names_segment(tmp_path, value, kind):
    def poison(seqs):
        features, intervals = seqs["audio"]["vidC"]
        features[20, 3] = value  # frame at 2.0 s: inside segment vidC[1] (1.5-3.0 s)

    src, folds, _ = sdk_source(tmp_path, mutate=poison)
    with pytest.raises(MoseiError, match=rf"COVAREP\.csd: video 'vidC' segment vidC\[1\] has {kind}.*expected finite"):
        build_mosei(options(src, tmp_path / "out", folds_file=folds))
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("column, value, named", [(1, -2.0, "happy intensity -2"), (2, 7.5, "sad intensity 7.5"),
                                                   (6, 3.01, "fear intensity 3.01"), (0, 3.5, "sentiment 3.5"),
                                                   (0, -4.0, "sentiment -4")])
def test_sdk_label_outside_its_range_names_file_segment_and_value(tmp_path, capsys, column, value, named):
    """Emotion intensities lie in [0, 3] and sentiment in [-3, 3]: an intensity of -2 was read as "absent" and
    7.5 kept, silently, on main."""
    def out_of_range(seqs):
        seqs["labels"]["vidD"][0][1, column] = value  # the second segment of vidD

    src, folds, _ = sdk_source(tmp_path, mutate=out_of_range)
    expected = "[-3, 3]" if column == 0 else "[0, 3]"
    with pytest.raises(MoseiError) as error:
        build_mosei(options(src, tmp_path / "out", folds_file=folds, folds="official"))
    assert str(error.value) == (f"{src / 'CMU_MOSEI_Labels.csd'}: video 'vidD' segment vidD[1] has {named}; "
                                f"expected a finite value in {expected}")
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "manifest.json").exists()
    assert cli.main(["--raw", str(src), "--out", str(tmp_path / "out"), "--folds-file", str(folds),
                     "--no-progress"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and named in message and "CMU_MOSEI_Labels.csd" in message


@pytest.mark.parametrize("value, named", [(5.0, "sentiment 5"), (-3.5, "sentiment -3.5"), (np.nan, "sentiment nan")])
def test_pkl_sentiment_outside_its_range_names_file_and_sample(tmp_path, pt_built, value, named):
    """The pkl's sentiment was kept at any value on main, and a NaN one silently became null."""
    def poison(data):
        data["valid"]["labels"][2, 0, 0] = value

    write_pkl(tmp_path / "mosei_senti_data_noalign.pkl", mutate=poison)
    with pytest.raises(MoseiError, match=rf"mosei_senti_data_noalign\.pkl: valid sample 2 \(vvalid1\[3\.0,4\.25\]\) "
                                         rf"has {named}; expected a finite value in \[-3, 3\]"):
        build_mosei(options(tmp_path / "mosei_senti_data_noalign.pkl", tmp_path / "out",
                            labels_pt=pt_built[0] / "train_valid_test.pt", folds="official"))


def test_neg_inf_is_an_error_unless_replaced(tmp_path):
    def silence(seqs):
        seqs["audio"]["vidA"][0][3, :] = -np.inf

    src, folds, _ = sdk_source(tmp_path, mutate=silence)
    with pytest.raises(MoseiError, match=r"video 'vidA' segment vidA\[0\] has -inf.*--neg-inf-to-zero"):
        build_mosei(options(src, tmp_path / "out", folds_file=folds))
    summary = build_mosei(options(src, tmp_path / "out", folds_file=folds, neg_inf_to_zero=True, folds="official"))
    assert summary.counts["neg_inf_replaced"]["audio"] == 74
    row = nemu.load(tmp_path / "out", "train").set_index("id").loc["vidA[0]"]
    assert not np.any(np.stack(list(row["audio"]))[3])


def test_pt_wrong_shape(tmp_path):
    def narrow(d):
        d["valid"]["src-audio"] = d["valid"]["src-audio"][:, :, :70]

    write_pt(tmp_path / "t.pt", mutate=narrow)
    with pytest.raises(MoseiError, match=r"t\.pt: valid/src-audio has shape \(3, 6, 70\); expected \(N, T, 74\)"):
        build_mosei(options(tmp_path / "t.pt", tmp_path / "out"))


def test_pt_missing_group(tmp_path):
    write_pt(tmp_path / "t.pt", mutate=lambda d: d.pop("valid"))
    with pytest.raises(MoseiError, match=r"t\.pt: no 'valid' group"):
        build_mosei(options(tmp_path / "t.pt", tmp_path / "out"))
    write_pt(tmp_path / "u.pt", mutate=lambda d: d["dict"].pop("tgt"))
    with pytest.raises(MoseiError, match=r"u\.pt: no dict\['tgt'\]"):
        build_mosei(options(tmp_path / "u.pt", tmp_path / "out"))


def test_pt_nan_names_sample(tmp_path):
    def poison(d):
        d["test"]["src-text"][2, 4, 0] = np.nan

    write_pt(tmp_path / "t.pt", mutate=poison)
    with pytest.raises(MoseiError, match=r"t\.pt: test sample 2 \(test-00002\) src-text has NaN at time step 4"):
        build_mosei(options(tmp_path / "t.pt", tmp_path / "out"))


def test_pkl_inf_names_sample(tmp_path, pt_built):
    def poison(d):
        d["train"]["vision"][5, 8, 1] = np.inf

    write_pkl(tmp_path / "n.pkl", mutate=poison)
    with pytest.raises(MoseiError, match=r"n\.pkl: train sample 5 \(vtrain2\[.*\]\) vision has \+inf at time step 8"):
        build_mosei(options(tmp_path / "n.pkl", tmp_path / "out", labels_pt=pt_built[0] / "train_valid_test.pt"))


def test_pt_vocabulary_errors(tmp_path):
    write_pt(tmp_path / "a.pt", mutate=lambda d: d["dict"]["tgt"].update(neutral=10))
    with pytest.raises(MoseiError, match=r"a\.pt: dict\['tgt'\] word 'neutral' \(id 10\) is neither an emotion"):
        build_mosei(options(tmp_path / "a.pt", tmp_path / "out"))
    write_pt(tmp_path / "b.pt", mutate=lambda d: d["train"]["tgt"][3].insert(1, 42))
    with pytest.raises(MoseiError, match=r"b\.pt: train: sample 3: label id 42 is not in dict\['tgt'\]"):
        build_mosei(options(tmp_path / "b.pt", tmp_path / "out"))
    write_pt(tmp_path / "c.pt", mutate=lambda d: d["dict"]["tgt"].pop("fear"))
    with pytest.raises(MoseiError, match=r"c\.pt: dict\['tgt'\] lacks fear"):
        build_mosei(options(tmp_path / "c.pt", tmp_path / "out"))


def test_positions_beyond_int16_are_stored_exactly(tmp_path, pt_built):
    """A sequence longer than 32767 steps (int16's limit) keeps its true positions; the schema says int32."""
    long_steps = 40_000
    real_steps = {0: [0, 33_000, 39_999], 1: [32_768], 2: [5, 39_000]}

    def lengthen(data):
        n = SPLIT_SIZES["valid"]
        vision = np.zeros((n, long_steps, DIMS["vision"]), np.float32)
        for i, steps in real_steps.items():
            vision[i, steps] = np.arange(1, len(steps) + 1, dtype=np.float32)[:, None]
        data["valid"]["vision"] = vision

    data = write_pkl(tmp_path / "long.pkl", mutate=lengthen)
    build_mosei(options(tmp_path / "long.pkl", tmp_path / "out", labels_pt=pt_built[0] / "train_valid_test.pt",
                        folds="official"))
    frame = nemu.load(tmp_path / "out", "validation")
    for i, steps in real_steps.items():
        row = frame.iloc[i]
        assert list(row["vision_positions"]) == steps and row["vision_source_steps"] == long_steps
        padded, mask = restore_padding(np.stack(list(row["vision"])), row["vision_positions"],
                                       row["vision_source_steps"])
        np.testing.assert_array_equal(padded, data["valid"]["vision"][i])
    schema = nemu.read_table(tmp_path / "out", "valid").schema
    assert schema.field("vision_positions").type == pa.list_(pa.int32())
    assert schema.field("vision_source_steps").type == pa.int32()


def test_a_length_beyond_the_position_type_names_file_and_column():
    from nemu.mosei import POSITION_MAX, _check_positions_fit

    _check_positions_fit(POSITION_MAX, "x.pt: train/vision", "vision")
    with pytest.raises(MoseiError, match=r"x\.pt: train/vision: 2147483648 time steps do not fit the int32 "
                                         r"column vision_positions"):
        _check_positions_fit(POSITION_MAX + 1, "x.pt: train/vision", "vision")


def test_the_built_mosei_folder_is_a_hugging_face_dataset_with_six_class_labels(pt_built, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = pt_built[0] / "out"
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert {s: len(loaded[s]) for s in loaded} == {"train": SPLIT_SIZES["train"],
                                                   "validation": SPLIT_SIZES["valid"], "test": SPLIT_SIZES["test"]}
    names = loaded["train"].features["label_ids"].feature.names
    assert names == list(LABELS) and len(names) == 6
    for row in loaded["test"]:
        assert [names[i] for i in row["label_ids"]] == row["labels"]


# ----------------------------------------------------------------------------------------------
# The output folder: the NEMu build's publish step (lock, staged build, atomic swap)

def _dataset_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.glob("*")) if p.is_file() and not p.name.startswith(".")} | {
        p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*.parquet"))}


def test_a_second_ingestion_into_a_locked_folder_fails_at_once_naming_the_holder(pt_built, tmp_path, capsys):
    from nemu.publish import DatasetPublisher

    out = tmp_path / "out"
    with DatasetPublisher(out):  # another build of OUT holds the lock
        code = cli.main(["--raw", str(pt_built[0] / "train_valid_test.pt"), "--out", str(out), "--no-progress"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "being built by another build" in error and f"pid {__import__('os').getpid()}" in error
    assert not (out / "manifest.json").exists()


def test_an_ingestion_failing_half_way_leaves_the_previous_dataset_whole(pt_built, tmp_path, monkeypatch):
    import nemu.writer

    base = pt_built[0]
    out = tmp_path / "out"
    build_mosei(options(base / "train_valid_test.pt", out, rows_per_shard=5, row_group_rows=2))
    before = _dataset_bytes(out)
    real_write_shard = nemu.writer.write_shard
    written = []

    def full_disk_after_one_shard(*args, **kwargs):
        if written:
            raise OSError(28, "No space left on device")
        written.append(real_write_shard(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(nemu.writer, "write_shard", full_disk_after_one_shard)
    with pytest.raises(OSError):
        build_mosei(options(base / "train_valid_test.pt", out, seed=1, rows_per_shard=3, row_group_rows=2))
    assert written, "the injected fault must strike after a shard of the new ingestion was written"
    assert _dataset_bytes(out) == before
    nemu.verify(out)  # the previous shards, whole and matching their manifest
    assert not [p for p in (out / ".builds").iterdir() if p.name.startswith("staging-")]


# ----------------------------------------------------------------------------------------------
# CV folds grouped by video (--folds grouped, the default) and the row-level rule (--folds official)


def _many_sdk_videos(n: int = 24) -> tuple[dict, dict]:
    """n videos of 1-3 segments (enough for 10 grouped folds), and standard folds placing them."""
    patterns = [[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0.5, 0, 0], [0, 0, 1.0, 0, 0, 1.0], [0.3, 0, 0, 0, 1.0, 0],
                [0, 0, 0, 0, 0, 0], [0, 0.6, 0, 0, 0, 0.3], [1.0, 1.0, 0, 0, 0, 0]]
    videos = {}
    for v in range(n):
        segments = []
        for i in range(1 + v % 3):
            row = patterns[(v + 2 * i) % len(patterns)]
            segments.append((1.0 * i, 1.0 * i + 1.0, [0.0, *row]))
        videos[f"vid{v:02d}"] = segments
    names = sorted(videos)
    return videos, {"train": names[:16], "valid": names[16:19], "test": names[19:]}


def _video_folds(out: Path) -> dict[str, set[int]]:
    frame = nemu.load(out, None)
    assert frame["video_id"].notna().all()
    return {video: set(folds) for video, folds in frame.groupby("video_id")["fold"]}


def _pkl_many_videos(root: Path, sizes=None) -> tuple[Path, Path]:
    """A pkl whose segments belong to sizes/2 videos per split, a video's two segments not adjacent."""
    sizes = sizes or {"train": 40, "valid": 10, "test": 12}
    write_pt(root / "labels.pt", sizes=sizes)
    write_pkl(root / "x.pkl", sizes=sizes, video=lambda split, i: f"{split}-v{(i * 7) % (sizes[split] // 2)}")
    return root / "x.pkl", root / "labels.pt"


def _pt_with_ids(root: Path) -> Path:
    """The aligned .pt carrying ``id`` rows [video, start, end] (the form's own video field)."""
    sizes = {"train": 24, "valid": 6, "test": 8}

    def add_ids(data):
        for split, n in sizes.items():
            data[split]["id"] = np.array([[f"{split}{i % (n // 2)}", f"{i}.0", f"{i}.5"] for i in range(n)],
                                         dtype=object)

    write_pt(root / "ids.pt", sizes=sizes, mutate=add_ids)
    return root / "ids.pt"


@pytest.mark.parametrize("form", ["sdk", "pkl", "pt"])
def test_a_mosei_build_never_splits_a_video_across_folds(tmp_path, form):
    if form == "sdk":
        videos, spec = _many_sdk_videos()
        src, folds_file, _ = sdk_source(tmp_path, videos=videos, folds_spec=spec)
        kw = {"folds_file": folds_file}
    elif form == "pkl":
        src, labels = _pkl_many_videos(tmp_path)
        kw = {"labels_pt": labels}
    else:
        src, kw = _pt_with_ids(tmp_path), {}
    summary = build_mosei(options(src, tmp_path / "grouped", **kw))  # the default rule
    assert summary.form == form and summary.folds == "grouped by video"
    grouped = _video_folds(tmp_path / "grouped")
    assert all(len(folds) == 1 for folds in grouped.values()), grouped
    assert set().union(*grouped.values()) == set(range(10))
    manifest = nemu.read_manifest(tmp_path / "grouped")
    assert manifest["folds"]["option"] == "grouped" and manifest["folds"]["rule"] == "grouped by video"
    assert manifest["folds"]["videos"] == len(grouped) and manifest["folds"]["samples_without_video"] == 0
    # the same source under the row-level rule does split videos: the fixture can tell the rules apart
    build_mosei(options(src, tmp_path / "rows", folds="official", **kw))
    assert any(len(folds) > 1 for folds in _video_folds(tmp_path / "rows").values())
    # and the split folders hold the official split under both rules
    for split in ("train", "valid", "test"):
        assert list(nemu.load(tmp_path / "grouped", split)["id"]) == list(nemu.load(tmp_path / "rows", split)["id"])


def test_grouped_folds_are_stratified_by_the_videos_labels_and_deterministic(tmp_path):
    src, labels = _pkl_many_videos(tmp_path, {"train": 160, "valid": 20, "test": 40})
    build_mosei(options(src, tmp_path / "a", labels_pt=labels, seed=3))
    frame = nemu.load(tmp_path / "a", None)
    videos = frame.groupby("video_id").agg(fold=("fold", "first"),
                                           labels=("label_vector", lambda rows: np.max(np.stack(list(rows)), 0)))
    label_matrix = np.stack(list(videos["labels"]))
    for j, name in enumerate(LABELS):
        per_fold = [int(label_matrix[videos["fold"].to_numpy() == f, j].sum()) for f in range(10)]
        expected = label_matrix[:, j].sum() / 10
        # iterative stratification over videos: every fold within one video of its share of each label
        assert max(abs(c - expected) for c in per_fold) <= 1.5, (name, per_fold)
    sizes = np.bincount(videos["fold"], minlength=10)
    assert sizes.max() - sizes.min() <= 2, sizes
    build_mosei(options(src, tmp_path / "b", labels_pt=labels, seed=3))
    assert list(nemu.load(tmp_path / "b", None)["fold"]) == list(frame["fold"])
    build_mosei(options(src, tmp_path / "c", labels_pt=labels, seed=4))
    assert list(nemu.load(tmp_path / "c", None)["fold"]) != list(frame["fold"])


def test_the_official_rule_reproduces_the_row_level_folds(pt_built, tmp_path):
    from nemu.splits import assign_folds

    src = _pt_with_ids(tmp_path)
    build_mosei(options(src, tmp_path / "out", folds="official", seed=2))
    frame = nemu.load(tmp_path / "out", None)  # train, valid, test in source order: the order folds are drawn in
    expected = assign_folds(np.stack(list(frame["label_vector"])).astype(np.int8), 2)
    assert list(frame["fold"]) == expected.tolist()
    manifest = nemu.read_manifest(tmp_path / "out")
    assert manifest["folds"]["option"] == "official" and manifest["folds"]["rule"].startswith("not grouped")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "Cross-validation folds: not grouped" in card and "`--folds official`" in card
    assert cli.main(["--raw", str(src), "--out", str(tmp_path / "cli"), "--folds", "official", "--seed", "2",
                     "--no-progress"]) == 0
    assert list(nemu.load(tmp_path / "cli", None)["fold"]) == expected.tolist()


def test_the_manifest_records_the_source_and_the_fold_rule(sdk_built, pt_built, tmp_path):
    from nemu.provenance import dataset_title, is_real, source_of

    out = sdk_built[0]
    manifest = nemu.read_manifest(out)
    # the official files read; the ignored OpenFace sequence is not one of them
    assert manifest["source"] == {"kind": "cmu-mosei", "form": "sdk", "files": [
        "CMU_MOSEI_COVAREP.csd", "CMU_MOSEI_Labels.csd", "CMU_MOSEI_TimestampedWordVectors.csd",
        "CMU_MOSEI_VisualFacet42.csd"]}
    assert source_of(manifest)["form"] == "sdk" and is_real(manifest) and dataset_title(manifest) == "MOSEI"
    assert manifest["folds"]["option"] == "official"
    pt_manifest = nemu.read_manifest(pt_built[0] / "out")
    assert pt_manifest["source"] == {"kind": "cmu-mosei", "form": "pt", "files": ["train_valid_test.pt"]}
    # a .pt without ids has no video field: each sample is its own group, and the manifest and card say so
    folds = pt_manifest["folds"]
    assert folds["option"] == "grouped" and folds["videos"] == 0 and folds["samples_without_video"] == 15
    assert "15 sample(s) without a video id" in folds["rule"]
    card = (pt_built[0] / "out" / "README.md").read_text(encoding="utf-8")
    assert f"Cross-validation folds: {folds['rule']} (`--folds grouped`)" in card
    src, labels = _pkl_many_videos(tmp_path)
    build_mosei(options(src, tmp_path / "pkl", labels_pt=labels))
    assert nemu.read_manifest(tmp_path / "pkl")["source"] == {"kind": "cmu-mosei", "form": "pkl",
                                                              "files": ["x.pkl", "labels.pt"]}
    assert "Cross-validation folds: grouped by video (`--folds grouped`)" in \
        (tmp_path / "pkl" / "README.md").read_text(encoding="utf-8")


def test_too_few_videos_for_grouped_folds_names_the_way_out(tmp_path, capsys):
    src, folds, _ = sdk_source(tmp_path)  # 8 videos in the folds
    with pytest.raises(MoseiError, match=r"8 video\(s\).*cannot fill the 10 CV folds grouped by video.*--folds "
                                         r"official"):
        build_mosei(options(src, tmp_path / "out", folds_file=folds))
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--folds {grouped,official}" in text and "(default: grouped)" in text
