"""A built dataset says where it came from, and a synthetic sample is never called NEMu."""

from __future__ import annotations

import json

import pytest

from nemu.provenance import (PROVENANCE_FILE, ProvenanceError, dataset_title, is_real, is_synthetic,
                             read_raw_provenance)


def test_a_raw_folder_without_provenance_is_real_records(tmp_path):
    assert read_raw_provenance(tmp_path) == {"kind": "raw-records"}
    (tmp_path / PROVENANCE_FILE).write_text(json.dumps({"kind": "synthetic-sample", "seed": 3, "songs": 50}))
    assert read_raw_provenance(tmp_path)["seed"] == 3
    (tmp_path / PROVENANCE_FILE).write_text("[1, 2]")
    with pytest.raises(ProvenanceError, match=PROVENANCE_FILE):
        read_raw_provenance(tmp_path)


def test_titles_name_the_synthetic_sample_and_only_real_data_is_real():
    sample = {"dataset": "NEMu", "counts": {"kept": 228}, "source": {"kind": "synthetic-sample", "seed": 0}}
    assert dataset_title(sample) == "NEMu sample (synthetic, 228 songs)"
    assert is_synthetic(sample) and not is_real(sample)
    real = {"dataset": "NEMu", "source": {"kind": "raw-records"}}
    assert dataset_title(real) == "NEMu" and is_real(real)
    assert is_real({"dataset": "MOSEI", "source": {"kind": "cmu-mosei", "form": "sdk"}})
    unknown = {"dataset": "NEMu"}  # built before sources were recorded: never presented as real NEMu
    assert not is_real(unknown) and dataset_title(unknown) == "NEMu (source not recorded)"


# --- the sample, the build and the card ---------------------------------------------------------------------

SAMPLE_SONGS, SAMPLE_SEED = 24, 3


def _card(out) -> str:
    return (out / "README.md").read_text(encoding="utf-8")


def _pretty_name(card: str) -> str:
    import yaml

    return yaml.safe_load(card.split("---\n")[1])["pretty_name"]


def _captions(card: str) -> list[str]:
    """Every line that names the dataset as a caption: the headings and the YAML's pretty_name."""
    return [line for line in card.splitlines() if line.startswith("#") or line.startswith("pretty_name:")]


@pytest.fixture(scope="module")
def sample_builds(tmp_path_factory):
    """A small sample built three ways over one feature cache: as generated (provenance.json), the same files
    without provenance.json, and as generated with a word-vector file (the first build's trained vectors)."""
    import shutil

    from nemu.build import build
    from nemu.sample import make_sample
    from tests.conftest import options

    base = tmp_path_factory.mktemp("provenance")
    make_sample(base / "raw", songs=SAMPLE_SONGS, seed=SAMPLE_SEED, progress=False)
    cache = base / "cache"
    build(options(base / "raw", base / "sample", cache_dir=cache))
    shutil.copytree(base / "raw", base / "plain", ignore=shutil.ignore_patterns(PROVENANCE_FILE))
    build(options(base / "plain", base / "plain-out", cache_dir=cache))
    shutil.copy(base / "sample" / "word_vectors.bin", base / "vectors.bin")
    build(options(base / "raw", base / "file-out", cache_dir=cache, word_vectors=base / "vectors.bin"))
    return base


def test_the_sample_writes_its_provenance_deterministically(sample_builds, tmp_path):
    from nemu.sample import make_sample

    written = (sample_builds / "raw" / PROVENANCE_FILE).read_bytes()
    record = json.loads(written)
    assert {key: record[key] for key in ("kind", "generator", "seed", "songs", "probe")} == {
        "kind": "synthetic-sample", "generator": "nemu.sample", "seed": SAMPLE_SEED, "songs": SAMPLE_SONGS,
        "probe": "mixture"}
    assert set(record["ceiling"]) == set(record["constant_baseline"]) == {"micro_f1", "macro_f1", "accuracy",
                                                                          "hamming_loss"}
    assert read_raw_provenance(sample_builds / "raw")["seed"] == SAMPLE_SEED
    # --overwrite replaces a stale record (here one that would make the sample build as real records)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / PROVENANCE_FILE).write_text(json.dumps({"kind": "raw-records"}))
    make_sample(raw, songs=2, seed=SAMPLE_SEED, overwrite=True, progress=False)
    make_sample(tmp_path / "again", songs=2, seed=SAMPLE_SEED, progress=False)
    assert (raw / PROVENANCE_FILE).read_bytes() == (tmp_path / "again" / PROVENANCE_FILE).read_bytes()
    assert json.loads((raw / PROVENANCE_FILE).read_text())["songs"] == 2


def test_an_interrupted_overwrite_leaves_no_stale_provenance(tmp_path, monkeypatch):
    from nemu import sample

    raw = tmp_path / "raw"
    sample.make_sample(raw, songs=1, seed=SAMPLE_SEED, progress=False)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "_song", killed)
    with pytest.raises(KeyboardInterrupt):
        sample.make_sample(raw, songs=1, seed=SAMPLE_SEED + 1, overwrite=True, progress=False)
    assert not (raw / PROVENANCE_FILE).exists() and not (raw / "records.jsonl").exists()


def test_a_build_of_the_sample_is_captioned_as_the_synthetic_sample(sample_builds):
    from nemu.card import DESCRIPTIONS
    from nemu.shards import read_manifest

    out = sample_builds / "sample"
    manifest = read_manifest(out)
    assert manifest["source"] == json.loads((sample_builds / "raw" / PROVENANCE_FILE).read_text(encoding="utf-8"))
    assert manifest["source"]["seed"] == SAMPLE_SEED and manifest["source"]["songs"] == SAMPLE_SONGS
    title = f"NEMu sample (synthetic, {manifest['counts']['kept']} songs, probe 'mixture')"
    assert dataset_title(manifest) == title and is_synthetic(manifest)
    card = _card(out)
    assert _pretty_name(card) == title
    assert f"# Dataset Card for {title} (this build)" in card
    assert f"### Statistics of {title}, in the layout of the paper's Table 1" in card
    assert "## Source" in card and f"generator seed {SAMPLE_SEED}, {SAMPLE_SONGS} songs generated" in card
    # never captioned as NEMu, never described as NetEase songs; the paper's column is marked as real NEMu
    assert _captions(card) and all(title in line for line in _captions(card) if "NEMu" in line)
    assert DESCRIPTIONS["NEMu"] not in card and "NetEase Cloud Music" not in card
    assert "| paper (Table 1, real NEMu) |" in card and "not comparable" in card


def test_a_raw_folder_without_provenance_builds_as_real_nemu_with_the_same_shards(sample_builds):
    from nemu.shards import read_manifest
    from tests.conftest import shard_bytes

    out = sample_builds / "plain-out"
    manifest = read_manifest(out)
    assert manifest["source"] == {"kind": "raw-records"} and dataset_title(manifest) == "NEMu" and is_real(manifest)
    card = _card(out)
    assert _pretty_name(card) == "NEMu" and "# Dataset Card for NEMu (this build)" in card
    assert "Raw records: a raw folder of real records" in card and "| paper (Table 1) |" in card
    assert "synthetic" not in card and "not comparable" not in card
    # the source is in the manifest and the card only: the same records give the same shard bytes
    assert shard_bytes(out) == shard_bytes(sample_builds / "sample")


@pytest.mark.parametrize("text, why", [
    ("{not json", "unreadable"),
    ("[1, 2]", "not a provenance record"),
    ('{"kind": "synthetic-sample", "seed": "3", "songs": 24}', "seed"),
    ('{"kind": "cmu-mosei", "form": "sdk"}', "not a NEMu raw folder"),
])
def test_a_broken_provenance_file_stops_the_build_naming_the_file(tmp_path, capsys, text, why):
    from nemu.build import BuildError, build
    from pipelines import build_nemu
    from tests.conftest import options
    from tests.rawkit import tiny_raw

    raw = tmp_path / "raw"
    tiny_raw(raw, 12)
    (raw / PROVENANCE_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(BuildError) as failure:
        build(options(raw, tmp_path / "out"))
    message = str(failure.value)
    assert message.startswith(f"{raw / PROVENANCE_FILE}: ") and why in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # refused before the lock and the extraction
    assert build_nemu.main(["--raw", str(raw), "--out", str(tmp_path / "out2"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"nemu-build: error: {message}"


def test_the_card_says_transductive_exactly_when_the_build_trained_its_word_vectors(sample_builds):
    from nemu.shards import read_manifest

    trained, given = _card(sample_builds / "sample"), _card(sample_builds / "file-out")
    assert read_manifest(sample_builds / "file-out")["settings"]["text"]["word_vectors"]["source"] == "file"
    assert "### Word vectors" in trained and "### Word vectors" in given
    assert "validation and test included" in trained and "the text features are transductive" in trained
    assert "not transductive" not in trained
    assert "not transductive" in given and "`vectors.bin`" in given
    assert "validation and test included" not in given and "features are transductive" not in given
    # MOSEI's settings have no word vectors the build chose: no note
    from nemu.card import _word_vector_section

    assert _word_vector_section({"dataset": "MOSEI", "settings": {"seed": 0}}) == ""


def test_the_source_section_names_mosei_files_and_an_unrecorded_source():
    from nemu.card import _source_section

    mosei = {"dataset": "MOSEI", "source": {"kind": "cmu-mosei", "form": "pkl", "files": ["mosei_senti_data.pkl"]}}
    assert "form `pkl`, files `mosei_senti_data.pkl`" in _source_section(mosei)
    # a MOSEI manifest without a source: the form and files of its settings
    older = {"dataset": "MOSEI", "settings": {"source": {"form": "pt", "files": [{"name": "train_valid_test.pt",
                                                                                    "role": "aligned"}]}}}
    assert "form `pt`, files `train_valid_test.pt`" in _source_section(older)
    assert _source_section({"dataset": "NEMu"}).startswith("Not recorded: ")


def test_new_songs_are_featurised_alike_whether_the_manifest_has_a_source_or_not(sample_builds, tmp_path):
    import shutil

    import numpy as np

    from nemu.featurize import Featurizer
    from nemu.loading import load
    from nemu.shards import read_manifest

    older = tmp_path / "older"  # the sample's build as a manifest written before sources were recorded
    shutil.copytree(sample_builds / "sample", older)
    manifest = read_manifest(older)
    del manifest["source"]
    (older / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    raw = sample_builds / "raw"
    records = [json.loads(line) for line in (raw / "records.jsonl").read_text(encoding="utf-8").splitlines()][:3]
    stored = load(sample_builds / "sample", None).set_index("id")
    compared = 0
    for data in (sample_builds / "sample", older):
        featurizer = Featurizer(data)
        result = featurizer.featurize_records(records, raw)
        assert not result.quarantined
        for song in result.songs:
            if song.id not in stored.index:  # a song without an emotion tag is no sample
                continue
            compared += 1
            for modality, dim in featurizer.modality_dims.items():
                expected = np.array([np.asarray(n) for n in stored.at[song.id, modality]], np.float32).reshape(-1, dim)
                np.testing.assert_array_equal(song.nodes[modality], expected)
    assert compared >= 4
