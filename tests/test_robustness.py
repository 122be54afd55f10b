"""Robustness at prediction time (Table 5, issue 22 item 4): perturbations change what they name and nothing else,
estimator cells leave loadable run folders without changing their results, Table 5 comes from the run folders of
a benchmark run, and hhmpn-predict's --drop-modality/--corrupt work on a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines import run_all
from baselines.robustness import ROBUSTNESS_FILE, columns, write_robustness
from baselines.results import ResultsStore
from mmer.perturb import NOISE_LEVELS, Perturbation, PerturbedDataset, donors, parse, rng_for
from mmer.predict import load_run, predict_split
from mmer.registry import get
from mmer.runner import Cell, run_cell
from mmer.runs import RunFolderError
from nemu.loading import split_datasets
from nemu.shards import read_manifest
from pipelines import predict

pytestmark = pytest.mark.usefixtures("one_thread")
MODELS = ["BR", "HHMPN"]


@pytest.fixture(scope="module")
def bench(built, tmp_path_factory):
    """A benchmark run of BR and HHMPN (1 epoch) on the 20-song build: 2 rotations, seed 0, Table 5 at the end."""
    out = tmp_path_factory.mktemp("bench")
    root = built[0] / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_all.run({"nemu": root}, MODELS, [0, 1], [0], "quick", out, table3=False, progress=False,
                              overrides={"epochs": 1})
    finally:
        torch.set_num_threads(threads)
    records = {(r["model"], r["fold"]): r for r in ResultsStore(out, "quick").records()}
    return root, out, summary, records


@pytest.fixture(scope="module")
def songs(built):
    """The build's published training split, standardised (the input a model reads): enough songs to shuffle."""
    return split_datasets(built[0] / "out", None)["train"]


def _nodes(dataset):
    return {m: (np.asarray(v), np.asarray(o)) for m, (v, o) in dataset._nodes.items()}


def test_every_perturbation_changes_only_its_modality(songs):
    clean = _nodes(songs)
    for spec, named in (("drop:lyrics", "lyrics"), ("shuffle:audio", "audio"), ("noise:0.5:images", "images")):
        broken = PerturbedDataset(songs, [parse(spec)], seed=3)._nodes
        for modality, (values, offsets) in clean.items():
            same = np.array_equal(values, broken[modality][0]) and np.array_equal(offsets, broken[modality][1])
            assert same == (modality != named), (spec, modality)
    everything = PerturbedDataset(songs, [parse("noise:0.5")], seed=3)._nodes
    for modality, (values, offsets) in clean.items():
        assert np.array_equal(offsets, everything[modality][1])  # node counts kept, padding stays padding
        if len(values):
            assert np.abs(everything[modality][0] - values).mean() > 0.3, modality  # std 0.5: mean |noise| 0.4
    dropped = PerturbedDataset(songs, [parse("drop:lyrics")])._nodes["lyrics"]
    assert dropped[0].shape == (0, songs.modality_dims["lyrics"]) and not dropped[1].any()


def test_shuffle_gives_each_song_another_songs_nodes(songs):
    clean = _nodes(songs)["audio"]
    n = len(songs)
    broken = PerturbedDataset(songs, [parse("shuffle:audio")], seed=5)
    donor = donors(n, rng_for(Perturbation("shuffle", "audio"), 5))
    assert sorted(donor) == list(range(n)) and not np.any(donor == np.arange(n))  # a permutation, nobody keeps its own
    values, offsets = broken._nodes["audio"]
    for song in range(n):
        given = values[offsets[song]:offsets[song + 1]]
        d = donor[song]
        assert np.array_equal(given, clean[0][clean[1][d]:clean[1][d + 1]])
        assert np.array_equal(broken[song]["features"]["audio"].numpy(), given)
    again = PerturbedDataset(songs, [parse("shuffle:audio")], seed=5)._nodes["audio"][0]
    other = PerturbedDataset(songs, [parse("shuffle:audio")], seed=6)._nodes["audio"][0]
    assert np.array_equal(again, values) and not np.array_equal(other, values)
    with pytest.raises(ValueError, match="2 songs"):
        PerturbedDataset(_OneSong(songs), [parse("shuffle:audio")])


class _OneSong:
    def __init__(self, dataset):
        self.ids, self.modality_dims, self.labels = dataset.ids[:1], dataset.modality_dims, dataset.labels[:1]
        self._nodes = {m: (v[:o[1]], o[:2]) for m, (v, o) in dataset._nodes.items()}

    def __len__(self):
        return 1


def test_noise_level_zero_is_the_clean_input_and_bad_specs_are_refused(songs):
    clean = _nodes(songs)
    zero = PerturbedDataset(songs, [parse("noise:0")], seed=1)._nodes
    assert all(np.array_equal(clean[m][0], zero[m][0]) for m in clean)
    for bad in ("noise:-1", "noise:x", "drop", "shuffle:", "blur:lyrics", "noise:nan"):
        with pytest.raises(ValueError):
            parse(bad)
    with pytest.raises(ValueError, match="no modality 'sound'"):
        PerturbedDataset(songs, [parse("drop:sound")])


@pytest.mark.parametrize("model", MODELS)
def test_dropping_every_modality_gives_the_runs_empty_input_prediction(bench, model):
    root, _, _, records = bench
    run = load_run(records[(model, 0)]["run_dir"])
    drop_all = [Perturbation("drop", m) for m in run.modality_dims]
    split = predict_split(run, root, perturbations=drop_all)
    clean = predict_split(run, root)
    empty = run.empty_input_probabilities()
    assert len(split.records) >= 2 and not split.skipped
    for record in split.records:
        assert np.allclose([record["probabilities"][label] for label in run.label_names], empty, atol=1e-6)
    assert any(not np.allclose([r["probabilities"][label] for label in run.label_names], empty, atol=1e-4)
               for r in clean.records)  # the real inputs do reach the model
    noise_free = predict_split(run, root, perturbations=[parse("noise:0")])
    assert [r["probabilities"] for r in noise_free.records] == [r["probabilities"] for r in clean.records]


def test_estimator_cells_leave_run_folders_that_reproduce_them(bench, built):
    root, out, _, records = bench
    record = records[("BR", 0)]
    run_dir = Path(record["run_dir"])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["kind"] == "estimator" and (run_dir / "estimator.json").is_file() and not (run_dir / "model.pt").exists()
    again = predict_split(run_dir, root)
    stored = dict(zip(record["test_predictions"]["ids"], record["test_predictions"]["predicted"]))
    labels = run["labels"]
    for song in again.records:
        assert "".join("1" if name in song["predicted"] else "0" for name in labels) == stored[song["id"]]
    alone = run_cell(Cell("BR", "nemu", 0, 0), get("BR"), root, "quick")  # no out_dir: no folder, same numbers
    assert alone["metrics"] == record["metrics"] and "run_dir" not in alone


def test_a_tampered_estimator_file_is_refused_not_run(bench, tmp_path):
    import shutil

    _, _, _, records = bench
    copy = tmp_path / "run"
    shutil.copytree(records[("BR", 0)]["run_dir"], copy)
    tree = json.loads((copy / "estimator.json").read_text())
    tree["estimator"]["object"] = "os.system"
    (copy / "estimator.json").write_text(json.dumps(tree))
    with pytest.raises(RunFolderError, match="'os.system' is not allowed"):
        load_run(copy)


def test_table5_has_a_row_per_model_and_a_column_per_perturbation(bench):
    root, out, summary, _ = bench
    assert out / "table5.md" in summary["tables"] and (out / "figure5.png").is_file()
    modalities = [m["name"] for m in read_manifest(root)["modalities"]]
    keys = [key for key, _, _ in columns(modalities)]
    assert len(keys) == 1 + 2 * len(modalities) + len(NOISE_LEVELS)
    lines = (out / "table5.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    assert [row[0] for row in rows] == MODELS  # Table 2's order
    assert header[:5] == ["model", "folds", "seeds", "clean miF1 mean", "clean miF1 std"]
    assert len(header) == 3 + 2 + 4 * (len(keys) - 1) and all(row[1] == "2" and row[2] == "1" for row in rows)
    text = (out / "table5.md").read_text()
    assert "equals Table 2's miF1 for every cell" in text and "−L" in text and "σ=1" in text
    evaluations = [json.loads(line) for line in (out / ROBUSTNESS_FILE).read_text().splitlines()]
    assert len(evaluations) == 4 and all(e["run_files"] and e["dataset_fingerprint"] for e in evaluations)
    # reused only for the same run folder: a rerun adds nothing, an edited run folder is evaluated again
    records = ResultsStore(out, "quick").records()
    manifests = {"nemu": read_manifest(root)}
    write_robustness(records, {"nemu": root}, manifests, out)
    assert len((out / ROBUSTNESS_FILE).read_text().splitlines()) == 4
    run_json = Path(evaluations[0]["run_dir"]) / "run.json"
    run_json.write_text(run_json.read_text().replace('"seed"', '"note": "edited", "seed"', 1))
    write_robustness(records, {"nemu": root}, manifests, out)
    assert len((out / ROBUSTNESS_FILE).read_text().splitlines()) == 5


def test_predict_drops_and_corrupts_on_a_run_folder(bench, tmp_path, capsys):
    root, _, _, records = bench
    run_dir = records[("HHMPN", 1)]["run_dir"]
    run = load_run(run_dir)
    empty = run.empty_input_probabilities()
    modalities = list(run.modality_dims)
    flags = ["--drop-modality", ",".join(modalities[:2])] + [a for m in modalities[2:] for a in ("--drop-modality", m)]
    assert predict.main(["--run", run_dir, *flags, "--output", str(tmp_path / "drop.jsonl")]) == 0
    assert "inputs broken on purpose: drop:" in capsys.readouterr().err
    for line in (tmp_path / "drop.jsonl").read_text().splitlines():
        probabilities = json.loads(line)["probabilities"]
        assert np.allclose([probabilities[label] for label in run.label_names], empty, atol=1e-5)
    assert predict.main(["--run", run_dir, "--output", str(tmp_path / "clean.jsonl")]) == 0
    assert predict.main(["--run", run_dir, "--corrupt", "noise:0", "--output", str(tmp_path / "zero.jsonl")]) == 0
    assert (tmp_path / "zero.jsonl").read_text() == (tmp_path / "clean.jsonl").read_text()
    assert predict.main(["--run", run_dir, "--corrupt", "shuffle:audio", "--corrupt", "noise:1:lyrics",
                         "--perturb-seed", "4", "--output", str(tmp_path / "broken.jsonl")]) == 0
    assert (tmp_path / "broken.jsonl").read_text() != (tmp_path / "clean.jsonl").read_text()
    assert predict.main(["--run", records[("BR", 1)]["run_dir"], "--drop-modality", "audio"]) == 0  # an estimator
    capsys.readouterr()
    assert predict.main(["--run", run_dir, "--drop-modality", "sound"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hhmpn-predict: error: drop:sound: no modality 'sound'")
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--run", run_dir, "--corrupt", "blur:3"])
    assert exit_.value.code == 2 and "--corrupt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    usage = capsys.readouterr().out
    assert "--drop-modality M,M" in usage and "--corrupt KIND:ARG" in usage and "--perturb-seed S" in usage


def test_a_perturbation_the_test_split_cannot_take_is_a_dash_not_a_failed_benchmark(tmp_path):
    """A test split of one song cannot be shuffled (the perturbation refuses); Table 5 shows "–" there with the
    reason, keeps every other column, and figure 5 is still drawn (a MOSEI test build with one test song once
    stopped the whole benchmark at its last step)."""
    from baselines.robustness import figure5, table5

    modalities = ["lyrics", "audio"]
    keys = [key for key, _, _ in columns(modalities)]
    reason = "shuffle:audio: needs 2 songs or more to give each another song's audio (there is 1)"

    def evaluation(fold: int) -> dict:
        scores = {key: {"micro_f1": 0.5, "macro_f1": 0.5, "accuracy": 0.5, "hamming_loss": 0.1} for key in keys}
        scores["shuffle:audio"] = {"unavailable": reason}
        return {"dataset": "nemu", "modalities": modalities, "model": "BR", "group": "Classical", "fold": fold,
                "seed": 0, "scores": scores, "table2_micro_f1": 0.5, "key": f"k{fold}", "seconds": 0.0}

    table = table5([evaluation(0), evaluation(1)], "nemu")
    row = dict(zip(table.header, table.rows[0]))
    assert row["A↔"] == "–" and row["L↔"] != "–" and row["−A"] != "–"
    assert any(reason in note for note in table.notes)
    assert figure5(table, tmp_path, "nemu")  # the blank square is drawn, not a crash
