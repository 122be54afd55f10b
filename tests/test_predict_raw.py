"""Emotions of new songs from raw files (``hhmpn.predict --raw``, ``--lyrics/--audio/--image``, mmer.inference):
the same probabilities as predicting the built dataset, features made with exactly the dataset's settings
(refused, naming what differs, when they cannot be), the build's quarantine rules, missing modalities."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmer.registry import get, models
from mmer.runner import Cell
from mmer.runner import run_cell
from pipelines import predict, train
from mmer.inference import Predictor
from mmer.predict import load_run
from nemu.featurize import Featurizer, FeatureMismatch
from nemu.loading import load
from nemu.records import RECORDS_FILE

NEURAL = [name for name, spec in models().items() if spec.kind == "neural"]
TOLERANCE = 1e-4  # the bar; features are bit-identical, only batch padding differs


pytestmark = pytest.mark.usefixtures("one_thread")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def raw_records(dataset: Path) -> list[dict]:
    return lines(dataset.parent / "raw" / RECORDS_FILE)


def new_raw_folder(dataset: Path, target: Path, ids: list[str], change=None) -> list[dict]:
    """The raw records of ``ids`` (in that order) copied into a new raw folder, their tags removed, media copied."""
    source = dataset.parent / "raw"
    by_id = {r["id"]: r for r in raw_records(dataset)}
    records = []
    for sample_id in ids:
        record = {k: v for k, v in by_id[sample_id].items() if k != "tags"}
        for relative in ([record["audio"]] if record.get("audio") else []) + list(record.get("images", [])):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target / relative)
        records.append(change(record) if change else record)
    target.mkdir(parents=True, exist_ok=True)
    (target / RECORDS_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                       encoding="utf-8")
    return records


@pytest.fixture(scope="module")
def hhmpn_run(sample_dataset, tmp_path_factory):
    """HHMPN trained on the sample's published split (quick profile, 1 epoch, d = 16)."""
    run_dir = tmp_path_factory.mktemp("hhmpn") / "run"
    assert train.main(["--data", str(sample_dataset), "--out", str(run_dir), "--profile", "quick", "--epochs", "1",
                       "--d", "16", "--no-progress"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def test_ids(sample_dataset) -> list[str]:
    ids = load(sample_dataset, "test", ["id"])["id"].tolist()
    return ids[::-1]  # not the dataset's order: the output must follow RAW's


def test_features_of_new_songs_are_the_builds_bit_for_bit(sample_dataset, test_ids, tmp_path):
    new_raw_folder(sample_dataset, tmp_path / "raw", test_ids)
    featurizer = Featurizer(sample_dataset)
    result = featurizer.featurize_folder(tmp_path / "raw")
    assert result.ids == test_ids and not result.quarantined
    stored = load(sample_dataset, "test").set_index("id")
    for song in result.songs:
        for modality, dim in featurizer.modality_dims.items():
            expected = np.array([np.asarray(node) for node in stored.at[song.id, modality]],
                                dtype=np.float32).reshape(-1, dim)
            assert song.nodes[modality].dtype == np.float32
            np.testing.assert_array_equal(song.nodes[modality], expected, err_msg=f"{song.id} {modality}")
        assert song.texts["lyrics"] == list(stored.at[song.id, "lyrics_text"])


def test_predict_raw_gives_the_datasets_probabilities(sample_dataset, hhmpn_run, test_ids, tmp_path, capsys):
    new_raw_folder(sample_dataset, tmp_path / "raw", test_ids)
    assert predict.main(["--run", str(hhmpn_run), "--data", str(sample_dataset), "--split", "test",
                         "--output", str(tmp_path / "dataset.jsonl")]) == 0
    assert predict.main(["--run", str(hhmpn_run), "--raw", str(tmp_path / "raw"),
                         "--output", str(tmp_path / "raw.jsonl")]) == 0
    reference = {r["id"]: r for r in lines(tmp_path / "dataset.jsonl")}
    ours = lines(tmp_path / "raw.jsonl")
    assert [r["id"] for r in ours] == test_ids  # RAW's order
    for row in ours:
        assert set(row) == {"id", "probabilities", "predicted"}  # no tags, so no true set
        for label, p in row["probabilities"].items():
            assert abs(p - reference[row["id"]]["probabilities"][label]) <= TOLERANCE, (row["id"], label)
        assert row["predicted"] == reference[row["id"]]["predicted"]
    # the probabilities must move with the songs: another song's features give other numbers
    first, second = ours[0]["probabilities"], reference[test_ids[1]]["probabilities"]
    assert max(abs(first[k] - second[k]) for k in first) > 1e-3


@pytest.mark.parametrize("name", [n for n in NEURAL if n != "HHMPN"])
def test_every_neural_run_all_cell_predicts_raw_songs(sample_dataset, name, tmp_path):
    spec = get(name)
    record = run_cell(Cell(name, "nemu", 0, 0), spec, sample_dataset, "quick", overrides={"epochs": 1},
                      out_dir=tmp_path / "cells")
    if record["status"] == "not_applicable":  # MLEE needs MOSEI's dominant emotion
        return
    run = load_run(record["run_dir"])
    dataset = run.dataset(sample_dataset, "test")  # rotation 0's test fold is the published test split
    ids, expected = run.predict_dataset(dataset)
    new_raw_folder(sample_dataset, tmp_path / "raw", list(ids)[::-1])
    result = Predictor.load(record["run_dir"]).predict_raw(tmp_path / "raw")
    assert result.ids == list(ids)[::-1] and not result.quarantined
    np.testing.assert_allclose(result.probabilities, expected[::-1], atol=TOLERANCE, rtol=0)
    frame = result.frame()
    assert list(frame["id"]) == result.ids and list(frame.columns[2:]) == run.label_names


def test_a_run_on_some_modalities_and_another_rotation(sample_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train.main(["--data", str(sample_dataset), "--out", str(run_dir), "--profile", "quick", "--epochs", "1",
                       "--d", "16", "--fold", "3", "--modalities", "lyrics,audio", "--no-progress"]) == 0
    assert predict.main(["--run", str(run_dir), "--data", str(sample_dataset), "--fold", "3", "--split", "test",
                         "--output", str(tmp_path / "dataset.jsonl")]) == 0
    reference = {r["id"]: r for r in lines(tmp_path / "dataset.jsonl")}
    new_raw_folder(sample_dataset, tmp_path / "raw", sorted(reference))
    capsys.readouterr()
    assert predict.main(["--run", str(run_dir), "--raw", str(tmp_path / "raw")]) == 0  # to standard output
    out = capsys.readouterr()
    ours = [json.loads(line) for line in out.out.splitlines()]
    assert [r["id"] for r in ours] == sorted(reference) and "predicted" in out.err
    for row in ours:
        for label, p in row["probabilities"].items():
            assert abs(p - reference[row["id"]]["probabilities"][label]) <= TOLERANCE, (row["id"], label)


def test_a_song_lacking_modalities_is_predicted_and_bad_records_are_reported(sample_dataset, hhmpn_run, test_ids,
                                                                             tmp_path, capsys):
    def change(record):
        if record["id"] == test_ids[0]:  # no audio, no comments, no images
            record.update(audio=None, comments=[], images=[])
        if record["id"] == test_ids[1]:  # a missing image: the build quarantines it
            record["images"] = record["images"] + ["images/not-there.jpg"]
        return record

    new_raw_folder(sample_dataset, tmp_path / "raw", test_ids[:4], change)
    with (tmp_path / "raw" / RECORDS_FILE).open("a", encoding="utf-8") as handle:
        handle.write('{"id": "broken", "lyrics": \n')  # malformed JSON
        handle.write(json.dumps({"id": test_ids[2], "lyrics": "重复"}) + "\n")  # duplicate id
    capsys.readouterr()
    assert predict.main(["--run", str(hhmpn_run), "--raw", str(tmp_path / "raw"),
                         "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = lines(tmp_path / "p.jsonl")
    assert [r["id"] for r in rows] == [test_ids[0], test_ids[2], test_ids[3]]
    err = capsys.readouterr().err
    assert f"id {test_ids[1]!r} field images[" in err and "not-there.jpg" in err and "not found" in err, err
    assert "line 5" in err and "malformed JSON" in err and f"line 6 id {test_ids[2]!r} field id" in err, err
    assert "Traceback" not in err
    # the song without audio, comments and images: its lyrics alone, features of zero nodes elsewhere
    run = Predictor.load(hhmpn_run)
    result = run.predict_raw(tmp_path / "raw")
    assert [q["id"] for q in result.quarantined] == [test_ids[1], None, test_ids[2]]
    assert {"id", "line", "field", "reason"} <= set(result.quarantined[0])
    song = run.featurizer.featurize_folder(tmp_path / "raw").songs[0]
    assert {m: len(v) for m, v in song.nodes.items()} == {"lyrics": len(song.nodes["lyrics"]), "comments": 0,
                                                          "audio": 0, "images": 0}
    assert len(song.nodes["lyrics"]) > 0
    assert all(0.0 <= p <= 1.0 for p in rows[0]["probabilities"].values())
    # the same song with all its modalities (the dataset's) gets other probabilities: the empty ones count
    assert predict.main(["--run", str(hhmpn_run), "--data", str(sample_dataset), "--output",
                         str(tmp_path / "d.jsonl")]) == 0
    with_all = {r["id"]: r for r in lines(tmp_path / "d.jsonl")}[test_ids[0]]["probabilities"]
    assert max(abs(rows[0]["probabilities"][k] - with_all[k]) for k in with_all) > 1e-4


def test_one_song_from_its_files(sample_dataset, hhmpn_run, test_ids, tmp_path):
    record = next(r for r in raw_records(sample_dataset)
                  if r["id"] in test_ids and r.get("audio") and r.get("comments")
                  and not any("\n" in c for c in r["comments"]))
    source = sample_dataset.parent / "raw"
    (tmp_path / "song.lrc").write_text(record["lyrics"], encoding="utf-8")
    (tmp_path / "comments.txt").write_text("\n".join(record["comments"]) + "\n", encoding="utf-8")
    argv = ["--run", str(hhmpn_run), "--lyrics", str(tmp_path / "song.lrc"), "--audio", str(source / record["audio"]),
            "--comments", str(tmp_path / "comments.txt"), "--id", record["id"], "--output", str(tmp_path / "one.jsonl")]
    for image in record["images"]:
        argv += ["--image", str(source / image)]
    assert predict.main(argv) == 0
    [row] = lines(tmp_path / "one.jsonl")
    assert predict.main(["--run", str(hhmpn_run), "--data", str(sample_dataset), "--output",
                         str(tmp_path / "d.jsonl")]) == 0
    reference = {r["id"]: r for r in lines(tmp_path / "d.jsonl")}[record["id"]]
    assert row["id"] == record["id"]
    for label, p in row["probabilities"].items():
        assert abs(p - reference["probabilities"][label]) <= TOLERANCE, label


def copy_dataset(dataset: Path, target: Path) -> Path:
    """A plain copy of a built dataset (links followed), whose manifest and fingerprint are the original's."""
    shutil.copytree(dataset, target, ignore=shutil.ignore_patterns(".builds", ".cache"))
    return target


def refusal(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = predict.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("hhmpn-predict: error: "), err
    return err


def test_refuses_other_or_missing_word_vectors(sample_dataset, hhmpn_run, test_ids, tmp_path, capsys):
    new_raw_folder(sample_dataset, tmp_path / "raw", test_ids[:2])
    copy = copy_dataset(sample_dataset, tmp_path / "copy")
    base = ["--run", str(hhmpn_run), "--raw", str(tmp_path / "raw"), "--output", str(tmp_path / "p.jsonl")]
    assert predict.main(base + ["--data", str(copy)]) == 0  # the copy is the same dataset
    vectors = copy / "word_vectors.bin"
    other = bytearray(vectors.read_bytes())
    other[-5] ^= 0x01  # one bit of one vector
    vectors.write_bytes(bytes(other))
    err = refusal(base + ["--data", str(copy)], capsys)
    assert "word_vectors.bin" in err and "sha256" in err and "differs" in err, err
    err = refusal(base + ["--word-vectors", str(vectors)], capsys)  # the same file, given: matched by sha256
    assert "sha256" in err and "word vectors" in err, err
    vectors.unlink()
    err = refusal(base + ["--data", str(copy)], capsys)
    assert "word_vectors.bin: missing" in err and "restore" in err, err


def test_a_dataset_built_from_a_word_vector_file_needs_that_file(sample_dataset, test_ids, tmp_path):
    copy = copy_dataset(sample_dataset, tmp_path / "copy")
    given = tmp_path / "vectors.bin"
    (copy / "word_vectors.bin").rename(given)  # as if the build had read it with --word-vectors vectors.bin
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    info = manifest["settings"]["text"]["word_vectors"]
    manifest["settings"]["text"]["word_vectors"] = {"source": "file", "file": "vectors.bin", "dim": info["dim"],
                                                    "sha256": info["sha256"], "vocabulary": info["vocabulary"]}
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(FeatureMismatch, match="'vectors.bin'.*do not travel with the dataset: pass --word-vectors"):
        Featurizer(copy)
    new_raw_folder(sample_dataset, tmp_path / "raw", test_ids[:3])
    songs = Featurizer(copy, word_vectors=given).featurize_folder(tmp_path / "raw").songs
    reference = Featurizer(sample_dataset).featurize_folder(tmp_path / "raw").songs
    for ours, theirs in zip(songs, reference, strict=True):
        np.testing.assert_array_equal(ours.nodes["lyrics"], theirs.nodes["lyrics"])
    other = tmp_path / "other.bin"
    other.write_bytes(given.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # the last float changed
    with pytest.raises(FeatureMismatch, match="sha256 .* differs .*pass --word-vectors PATH to that file"):
        Featurizer(copy, word_vectors=other)


def test_refuses_other_image_encoder_or_weights(sample_dataset, hhmpn_run, test_ids, tmp_path, capsys):
    new_raw_folder(sample_dataset, tmp_path / "raw", test_ids[:2])
    other_weights = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(2)}, other_weights)
    err = refusal(["--run", str(hhmpn_run), "--raw", str(tmp_path / "raw"), "--image-weights", str(other_weights)],
                  capsys)
    assert "efficientnet-lite0" in err and "sha256" in err and "--image-weights" in err, err
    # a dataset whose images another encoder made: the featuriser names it (before loading any weights)
    copy = copy_dataset(sample_dataset, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["settings"]["image"] = {"encoder": "resnet50", "dim": 2048, "weights_sha256": "ab" * 32}
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(FeatureMismatch, match="resnet50 with weights sha256 abab.*--image-weights"):
        Featurizer(copy, image_weights=other_weights)


def test_refuses_a_gone_rebuilt_or_relabelled_dataset(sample_dataset, built, hhmpn_run, test_ids, tmp_path, capsys):
    new_raw_folder(sample_dataset, tmp_path / "raw", test_ids[:2])
    base = ["--run", str(hhmpn_run), "--raw", str(tmp_path / "raw")]
    err = refusal(base + ["--data", str(tmp_path / "gone")], capsys)
    assert "gone" in err and "is not there" in err and "--data" in err, err
    err = refusal(base + ["--data", str(built[0] / "out")], capsys)  # another build: same labels and dims
    assert "fingerprint" in err and "retrain" in err, err
    copy = copy_dataset(sample_dataset, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["labels"][0] = "Bored"
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    err = refusal(base + ["--data", str(copy)], capsys)
    assert "labels" in err and "Bored" in err, err


def test_python_entry_point_predicts_dicts(sample_dataset, hhmpn_run, test_ids, tmp_path):
    predictor = Predictor.load(hhmpn_run)
    source = sample_dataset.parent / "raw"
    records = [r | {"tags": []} for r in raw_records(sample_dataset) if r["id"] in test_ids[:3]]
    records.append({"id": "no-such-media", "audio": "missing.wav"})
    result = predictor.predict_records(records, raw_dir=source)
    assert result.ids == [r["id"] for r in records[:3]]
    assert result.quarantined == [{"id": "no-such-media", "line": 4, "field": "audio",
                                   "reason": result.quarantined[0]["reason"]}]
    assert "not found" in result.quarantined[0]["reason"]
    frame = result.frame()
    assert frame.shape == (3, 2 + len(predictor.label_names))
    np.testing.assert_allclose(frame[predictor.label_names].to_numpy(), result.probabilities)
    # records that carry emotion tags get their true set, as predict gives it for a labelled dataset
    tagged = predictor.predict_records([r for r in raw_records(sample_dataset) if r["id"] == test_ids[0]],
                                       raw_dir=source)
    assert "labels" in tagged.records[0]
