"""NEMu construction: schema, manifest, card, bad input, determinism and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nemu
from nemu.build import BuildError, BuildOptions, build
from nemu.shards import sha256_file
from pipelines import build_nemu
from tests.conftest import manifest_from_schema, options, shard_bytes
from tests.rawkit import song, tiny_raw, write_audio, write_records

REPO = Path(__file__).resolve().parents[1]


def test_schema_is_explicit_and_dims_come_from_manifest(built):
    base, _, summary = built
    out = base / "out"
    manifest = nemu.read_manifest(out)
    schema = pq.read_schema(next((out / "train").glob("*.parquet")))
    assert schema.field("id").type == pa.string()
    assert schema.field("labels").type == pa.list_(pa.string())
    assert schema.field("label_vector").type == pa.list_(pa.int8(), 12)
    assert schema.field("fold").type == pa.int8()
    dims = {m["name"]: m["dim"] for m in manifest["modalities"]}
    assert dims == {"lyrics": 300, "comments": 300, "audio": 74, "images": 1280}
    for name, dim in dims.items():
        assert schema.field(name).type == pa.list_(pa.list_(pa.float32(), dim))
    assert schema.field("lyrics_tokens").type == pa.list_(pa.list_(pa.string()))
    # the schema metadata carries the manifest's facts
    facts = manifest_from_schema(schema)
    assert facts["modalities"] == manifest["modalities"] and facts["labels"] == manifest["labels"]
    assert facts["counts"] == manifest["counts"]


def test_shards_named_hashed_and_split_8_1_1_by_fold(built):
    base, _, summary = built
    out = base / "out"
    manifest = nemu.read_manifest(out)
    train = manifest["shards"]["train"]
    assert [Path(e["path"]).name for e in train] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    for entries in manifest["shards"].values():
        for entry in entries:
            assert sha256_file(out / entry["path"]) == entry["sha256"]
            assert pq.ParquetFile(out / entry["path"]).metadata.num_row_groups == -(-entry["rows"] // 3)
    nemu.verify(out)
    frames = {s: nemu.load(out, s) for s in ("train", "valid", "test")}
    assert {s: len(f) for s, f in frames.items()} == {"train": 16, "valid": 2, "test": 2}
    assert set(frames["test"]["fold"]) == {0} and set(frames["valid"]["fold"]) == {1}
    assert set(frames["train"]["fold"]) == set(range(2, 10))


def test_labels_texts_and_tokens_kept(built):
    base, records, _ = built
    frame = nemu.load(base / "out", None)
    by_id = frame.set_index("id")
    record = records[3]  # English label names as tags, plus a non-emotion tag
    row = by_id.loc[record["id"]]
    assert "华语" in list(row["tags"]) and "华语" not in list(row["labels"])
    assert list(row["labels"]) == [n for n, v in zip(nemu.read_manifest(base / "out")["labels"], row["label_vector"]) if v]
    assert len(row["labels"]) == 2
    lyrics = list(row["lyrics_text"])
    assert lyrics and not any("作词" in line or "作曲" in line or "[" in line for line in lyrics)
    assert len(row["lyrics"]) == len(lyrics) == len(row["lyrics_tokens"])
    assert list(row["comments_tokens"][0]) == ["这", "首歌", "太", "好听", "了"]
    # the long comment ("单曲循环一整天。真的很喜欢！还会再听") stays one node: below 64 characters
    assert len(row["comments"]) == len(record["comments"])


def test_card_and_table1_statistics(built):
    base, records, _ = built
    out = base / "out"
    manifest = nemu.read_manifest(out)
    stats = manifest["statistics"]
    n_labels = [len(r["tags"]) - 1 for r in records]
    assert stats["one_label"] == n_labels.count(1) and stats["two_or_more_labels"] == sum(n >= 2 for n in n_labels)
    expected_seconds = np.mean([1.5 + 0.25 * (i % 3) for i in range(20)])
    assert stats["mean_duration_seconds"] == pytest.approx(expected_seconds, abs=0.01)
    card = (out / "README.md").read_text(encoding="utf-8")  # the card datasets.load_dataset reads
    assert card.startswith("---\n") and "config_name: default" in card and "- train/train-00000-of-00003.parquet" in card
    assert "num_examples: 16" in card and "| Train | 16 | 15125 |" in card


def test_bad_inputs_are_quarantined_and_the_rest_kept(tmp_path):
    raw = tmp_path / "raw"
    good = [song(i, raw) for i in range(12)]
    bad = [song(i, raw) for i in range(12, 22)]
    (raw / bad[0]["audio"]).unlink()  # missing audio
    (raw / bad[1]["audio"]).write_bytes(b"RIFF\x00\x00garbage" * 10)  # corrupt audio
    (raw / bad[2]["images"][1]).unlink()  # missing image
    (raw / bad[3]["images"][0]).write_bytes((raw / bad[3]["images"][0]).read_bytes()[:40])  # truncated png
    bad[4]["audio"] = "../outside.wav"  # leaves RAW
    write_audio(tmp_path / "outside.wav", 1.0, 440)
    bad[5]["images"] = ["/etc/hostname.png"]  # absolute
    os.symlink(tmp_path / "outside.wav", raw / "audio" / "link.wav")
    bad[6]["audio"] = "audio/link.wav"  # a symlink pointing out of RAW
    bad[7]["id"] = good[0]["id"]  # duplicate id
    bad[8]["title"] = "\ud800"  # lone surrogate: not encodable as UTF-8
    bad[9]["comments"] = "not a list"
    lines = good + bad + ["{not json", b'{"id": "latin1", "title": "\xe9t\xe9"}']
    no_emotion = song(30, raw)
    no_emotion["tags"] = ["华语", "流行"]
    lines.append(no_emotion)
    write_records(raw, lines)

    summary = build(options(raw, tmp_path / "out"))
    report = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    reasons = {(q["line"], q["field"]): q["reason"] for q in report}
    assert summary.kept == 12 and summary.without_emotion_tag == 1 and summary.quarantined == 12
    assert summary.input == 25 == summary.kept + summary.quarantined + summary.without_emotion_tag
    assert all(set(q) == {"id", "line", "field", "reason"} for q in report)
    assert "not found" in reasons[(13, "audio")]
    assert "cannot decode audio" in reasons[(14, "audio")]
    assert "not found" in reasons[(15, "images[1]")]
    assert "cannot decode image" in reasons[(16, "images[0]")]
    assert "leaves RAW" in reasons[(17, "audio")] and "leaves RAW" in reasons[(18, "images[0]")]
    assert "leaves RAW" in reasons[(19, "audio")]
    assert "duplicate id 's000' (first seen on line 1)" in reasons[(20, "id")]
    assert "UTF-8" in reasons[(21, "title")]
    assert "must be a list" in reasons[(22, "comments")]
    assert "malformed JSON" in reasons[(23, "line")] and "UTF-8" in reasons[(24, "line")]
    ids = {q["line"]: q["id"] for q in report}
    assert ids[13] == "s012" and ids[23] is None
    assert sorted(nemu.load(tmp_path / "out", None)["id"]) == sorted(r["id"] for r in good)

    with pytest.raises(BuildError, match="--strict: 12 record"):
        build(options(raw, tmp_path / "strict", strict=True))
    code = build_nemu.main(["--raw", str(raw), "--out", str(tmp_path / "cli"), "--strict", "--workers", "1",
                            "--image-encoder", "efficientnet-lite0", "--no-progress"])
    assert code == 2


def test_same_input_gives_byte_identical_shards_whatever_line_order_and_workers(tmp_path, built):
    base, records, _ = built
    reference = shard_bytes(base / "out")
    raw = tmp_path / "raw"
    shutil.copytree(base / "raw", raw)
    write_records(raw, list(reversed(records)))
    build(options(raw, tmp_path / "two", workers=2, rows_per_shard=7, row_group_rows=3))
    assert shard_bytes(tmp_path / "two") == reference
    assert (tmp_path / "two" / "word_vectors.bin").read_bytes() == (base / "out" / "word_vectors.bin").read_bytes()
    build(options(raw, tmp_path / "seed1", seed=1, rows_per_shard=7, row_group_rows=3))
    folds = lambda out: nemu.load(out, None).set_index("id")["fold"].sort_index()  # noqa: E731
    assert not folds(tmp_path / "seed1").equals(folds(base / "out"))


def test_resume_redoes_only_missing_features(tmp_path, built):
    base, _, _ = built
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    entries = sorted((out / ".cache").glob("*/*.npz"))
    assert len(entries) == 20
    for entry in entries[:5]:
        entry.unlink()
    entries[5].write_bytes(b"torn")  # a cache entry cut off by a crash is recomputed, not trusted
    summary = build(options(base / "raw", out, rows_per_shard=7, row_group_rows=3))
    assert (summary.extracted, summary.from_cache) == (6, 14)
    assert shard_bytes(out) == shard_bytes(base / "out")


def test_killed_build_resumes_from_cache(tmp_path):
    raw = tmp_path / "raw"
    tiny_raw(raw, 40)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipelines.build_nemu", "--raw", str(raw), "--out", str(out), "--workers", "1",
               "--image-encoder", "efficientnet-lite0", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".cache").glob("*/*.npz"))) < 5:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / ".cache").glob("*/*.npz")))
    assert 5 <= done < 40, "the build should have been killed part-way"
    assert not (out / "manifest.json").exists()
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    extracted = int(finished.stdout.split("features: ")[1].split(" records extracted")[0])
    assert extracted == 40 - done
    assert nemu.read_manifest(out)["counts"]["kept"] == 40


def test_word_vector_files_in_three_formats(tmp_path, built):
    base, _, _ = built
    from gensim.models import KeyedVectors

    trained = KeyedVectors.load_word2vec_format(str(base / "out" / "word_vectors.bin"), binary=True)
    assert trained.vector_size == 300
    words = trained.index_to_key[:50]
    small = KeyedVectors(vector_size=8)
    small.add_vectors(words, np.arange(len(words) * 8, dtype=np.float32).reshape(-1, 8) / 100)
    small.save_word2vec_format(str(tmp_path / "w2v.txt"), binary=False)
    small.save_word2vec_format(str(tmp_path / "w2v.bin"), binary=True)
    glove = "".join(f"{w} {' '.join(f'{x:.2f}' for x in small[w])}\n" for w in words)
    (tmp_path / "glove.txt").write_text(glove, encoding="utf-8")
    results = {}
    for name in ("w2v.txt", "w2v.bin", "glove.txt"):
        out = tmp_path / name.replace(".", "_")
        shutil.copytree(base / "out" / ".cache", out / ".cache")
        build(options(base / "raw", out, word_vectors=tmp_path / name))
        manifest = nemu.read_manifest(out)
        assert {m["name"]: m["dim"] for m in manifest["modalities"]}["lyrics"] == 8
        assert not (out / "word_vectors.bin").exists()
        frame = nemu.load(out, None).sort_values("id")
        results[name] = np.stack([np.asarray(list(x)) for x in frame["lyrics"].iloc[0]])
    np.testing.assert_allclose(results["w2v.txt"], results["w2v.bin"], atol=1e-6)
    np.testing.assert_allclose(results["glove.txt"], results["w2v.bin"], atol=1e-2)


def test_resnet50_weights_from_path_and_one_line_error_without_any_download(tmp_path, monkeypatch, capsys):
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    from nemu.images import RESNET50_WEIGHTS_URL

    raw = tmp_path / "raw"
    tiny_raw(raw, 10)
    weights = tmp_path / "resnet50.pth"
    torch.manual_seed(0)
    torch.save(resnet50(weights=None).state_dict(), weights)
    build(BuildOptions(raw_dir=raw, out_dir=tmp_path / "out", image_encoder="resnet50", image_weights=weights,
                       workers=1, progress=False))
    manifest = nemu.read_manifest(tmp_path / "out")
    assert {m["name"]: m["dim"] for m in manifest["modalities"]}["images"] == 2048
    assert manifest["settings"]["image"]["encoder"] == "resnet50"  # the manifest and the card say which encoder
    assert "one image (resnet50 pooled feature)" in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")

    # Without FILE: one line saying where the weights come from; no download is even tried (the machine is offline).
    downloads = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: downloads.append(a))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: downloads.append(a))
    assert RESNET50_WEIGHTS_URL == ResNet50_Weights.IMAGENET1K_V2.url
    assert build_nemu.main(["--raw", str(raw), "--out", str(tmp_path / "out2"), "--image-encoder", "resnet50",
                            "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--image-weights FILE" in error and RESNET50_WEIGHTS_URL in error
    assert "efficientnet-lite0" in error and downloads == [] and not (tmp_path / "out2").exists()


def test_default_image_encoder_is_the_offline_one():
    """A fresh machine without network builds with the defaults: the encoder whose weights ship in a package."""
    from nemu.images import resolve_image_settings

    assert BuildOptions(raw_dir=Path("r"), out_dir=Path("o")).image_encoder == "efficientnet-lite0"
    args = build_nemu.parser().parse_args(["--raw", "r", "--out", "o"])
    assert args.image_encoder == "efficientnet-lite0" and args.image_weights is None
    assert Path(resolve_image_settings(args.image_encoder).weights_path).is_file()


def _no_model_may_load(monkeypatch):
    """Loading an image encoder, starting a worker or extracting a record fails the test."""
    import nemu.build as nemu_build
    from nemu.images import ImageEncoder

    def forbidden(*args, **kwargs):
        raise AssertionError("the build went past its input checks")

    monkeypatch.setattr(ImageEncoder, "__init__", forbidden)
    monkeypatch.setattr(nemu_build, "WorkerPool", forbidden)
    monkeypatch.setattr(nemu_build, "extract_records", forbidden)
    monkeypatch.setattr(nemu_build, "read_records", forbidden)


@pytest.mark.parametrize("fault", ["missing raw", "raw is a file", "raw without records", "out is a file",
                                   "out under a file", "cache under a file", "missing word vectors",
                                   "word vectors are a folder", "missing image weights", "resnet50 without weights"])
def test_inputs_are_checked_before_any_model_or_write(tmp_path, monkeypatch, capsys, fault):
    """nemu-build checks every input it is given before loading a model or writing anything: each fault is one
    line naming the flag and the path, exit 2, and nothing is created (main's build first tried to download
    ResNet-50 weights, and created OUT, for a mistyped --raw)."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    tiny_raw(raw, 3)
    (tmp_path / "file").write_text("x")
    file = tmp_path / "file"
    flag, path = {"missing raw": ("--raw", tmp_path / "rawx"), "raw is a file": ("--raw", file),
                  "raw without records": ("--raw", tmp_path), "out is a file": ("--out", file),
                  "out under a file": ("--out", file / "sub"), "cache under a file": ("--cache-dir", file / "c"),
                  "missing word vectors": ("--word-vectors", tmp_path / "vectors.txt"),
                  "word vectors are a folder": ("--word-vectors", raw),
                  "missing image weights": ("--image-weights", tmp_path / "weights.pth"),
                  "resnet50 without weights": ("--image-encoder", "resnet50")}[fault]
    argv = {"--raw": str(raw), "--out": str(out)} | {flag: str(path)}
    argv = [part for item in argv.items() for part in item]
    named = f"{flag} {path}" if flag != "--image-encoder" else "--image-weights FILE"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    _no_model_may_load(monkeypatch)
    assert build_nemu.main(argv + ["--workers", "1", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert named in error
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_cli_help_explains_every_flag():
    help_text = build_nemu.parser().format_help()
    for flag in ("--out", "--seed", "--workers", "--word-vectors", "--image-encoder", "--image-weights",
                 "--audio-window", "--max-audio-nodes", "--strict", "--cache-dir", "--shard-rows"):
        assert flag in help_text
