"""hhmpn-predict cannot mislead (issues 24 and 25): --data predicts the run's own rotation and its test split
(and says so, with the threshold), warns when asked for the run's own training or validation songs, writes
nothing inside the run folder, refuses another build of the dataset by fingerprint (as --raw does), refuses
absurd normalisation statistics, never writes a non-finite number, skips and names songs with no node in the
run's modalities, and run folders travel: moved together with their dataset they predict from any folder."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from nemu.build import build
from nemu.loading import MMERDataset
from pipelines import predict, train
from tests.conftest import options
from tests.rawkit import tiny_raw, write_records

pytestmark = pytest.mark.usefixtures("one_thread")
NO_MEDIA = ("s004", "s011")  # songs with lyrics and comments only: no audio node, no image node


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fold_ids(data: Path, fold: int) -> list[str]:
    return MMERDataset(data, None, ["lyrics"], folds=[fold]).ids


def train_run(cwd: Path, out: str, *flags: str) -> None:
    """hhmpn-train from ``cwd`` with relative paths, as the README's examples run it."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        assert train.main(["--data", "data", "--out", out, "--profile", "quick", "--epochs", "1", "--d", "16",
                           "--no-progress", *flags]) == 0
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """PROJECT/data (a 20-song build; two songs have no audio and no images) and PROJECT/runs/r3, an HHMPN run
    trained on rotation 3 from PROJECT with relative paths."""
    base = tmp_path_factory.mktemp("project")
    records = tiny_raw(base / "raw", 20)
    for record in records:
        if record["id"] in NO_MEDIA:
            record.update(audio=None, images=[])
    write_records(base / "raw", records)
    build(options(base / "raw", base / "data", workers=1))
    train_run(base, "runs/r3", "--fold", "3")
    return base


def run_predict(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    """exit code, the JSON records on standard output (other lines left out), standard error."""
    capsys.readouterr()
    code = predict.main(argv)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def predict_to_file(argv: list[str], capsys, output: Path) -> tuple[int, list[dict], str]:
    """exit code, the records predict wrote to ``output`` (--output), standard error."""
    output.unlink(missing_ok=True)
    code, _, err = run_predict(argv + ["--output", str(output)], capsys)
    return code, [json.loads(line) for line in output.read_text().splitlines()] if output.exists() else [], err


def test_data_predicts_the_runs_own_rotation_and_leaves_the_run_folder_unchanged(project, capsys, tmp_path):
    run, data = project / "runs" / "r3", project / "data"
    before = folder_bytes(run)
    code, rows, err = predict_to_file(["--run", str(run), "--data", str(data)], capsys, tmp_path / "p.jsonl")
    assert code == 0, err
    assert [r["id"] for r in rows] == fold_ids(data, 3) != fold_ids(data, 0)  # rotation 3's test: fold 3
    assert "rotation 3" in err and "split test" in err and "threshold 0.5" in err and "warning" not in err, err
    assert all(set(r["predicted"]) == {k for k, p in r["probabilities"].items() if p >= 0.5} for r in rows)
    code, rows, err = run_predict(["--run", str(run), "--data", str(data)], capsys)  # standard output
    assert code == 0 and [r["id"] for r in rows] == fold_ids(data, 3), err
    assert folder_bytes(run) == before  # no predictions-test.jsonl written over the benchmark's record


def test_asking_for_the_runs_training_or_validation_songs_warns(project, capsys, tmp_path):
    run, data = project / "runs" / "r3", project / "data"
    for flags, which in ((["--fold", "0"], "train"), (["--fold", "3", "--split", "validation"], "validation"),
                         (["--fold", "4"], "validation"), (["--split", "train"], "train")):
        code, rows, err = predict_to_file(["--run", str(run), "--data", str(data), *flags], capsys,
                                          tmp_path / "p.jsonl")
        assert code == 0 and rows, err
        assert "warning" in err and f"run's {which} split" in err, (flags, err)
    code, _, err = predict_to_file(["--run", str(run), "--data", str(data), "--fold", "3"], capsys,
                                   tmp_path / "p.jsonl")
    assert code == 0 and "warning" not in err, err


def test_a_run_folder_moved_with_its_dataset_predicts_from_another_folder(project, capsys, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(project / "data", moved / "data", symlinks=True)
    shutil.copytree(project / "runs", moved / "runs", symlinks=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    code, rows, err = run_predict(["--run", str(moved / "runs" / "r3")], capsys)  # the run's own dataset
    assert code == 0, err
    assert [r["id"] for r in rows] == fold_ids(project / "data", 3) and str(moved / "data") in err, err
    # a run.json written before data_relative (data relative to the working folder then) still works from there
    old = json.loads((moved / "runs" / "r3" / "run.json").read_text())
    old.pop("data_relative")
    old["data"] = "data"
    (moved / "runs" / "r3" / "run.json").write_text(json.dumps(old))
    monkeypatch.chdir(moved)
    code, rows, err = run_predict(["--run", "runs/r3"], capsys)
    assert code == 0 and [r["id"] for r in rows] == fold_ids(project / "data", 3), err


def one_line_refusal(argv: list[str], capsys, *expected: str) -> str:
    """predict refused (exit 2, nothing on standard output) in one line holding every ``expected`` text."""
    code, rows, err = run_predict(argv, capsys)
    assert code == 2 and not rows, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(text in err for text in expected), (expected, err)
    assert err.startswith("hhmpn-predict: error: "), err  # the console script's name
    return err


def test_another_build_of_the_dataset_is_refused_with_the_fix_named(project, capsys, tmp_path):
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(project / "data", rebuilt)  # links followed: a plain folder
    manifest = json.loads((rebuilt / "manifest.json").read_text(encoding="utf-8"))
    manifest["settings"]["rebuilt_with"] = "another seed"  # same labels and dims, another fingerprint
    (rebuilt / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    one_line_refusal(["--run", str(project / "runs" / "r3"), "--data", str(rebuilt)], capsys,
                     "trained on build", "pass the run's own dataset, or retrain")
    one_line_refusal(["--run", str(project / "runs" / "r3"), "--data", str(tmp_path / "nowhere")], capsys,
                     "nowhere: does not exist")


@pytest.mark.parametrize("key, value", [("std", 1e-300), ("mean", 1e300), ("std", 1e39), ("mean", -1e39)])
def test_absurd_statistics_are_refused_naming_file_and_key(project, capsys, tmp_path, key, value):
    run = tmp_path / "run"
    shutil.copytree(project / "runs" / "r3", run)
    statistics = json.loads((run / "normalization.json").read_text())
    statistics["modalities"]["audio"][key][2] = value
    (run / "normalization.json").write_text(json.dumps(statistics))
    output = tmp_path / "p.jsonl"
    one_line_refusal(["--run", str(run), "--data", str(project / "data"), "--output", str(output)], capsys,
                     "normalization.json", f"modalities.audio.{key}[2]")
    assert not output.exists()


def test_no_nan_is_ever_written(project, capsys, tmp_path):
    """Statistics within float32 that still overflow this data's features: refused, no NaN/inf in any output."""
    run = tmp_path / "run"
    shutil.copytree(project / "runs" / "r3", run)
    statistics = json.loads((run / "normalization.json").read_text())
    statistics["modalities"]["audio"]["std"] = [1e-37] * len(statistics["modalities"]["audio"]["std"])
    (run / "normalization.json").write_text(json.dumps(statistics))
    output = tmp_path / "p.jsonl"
    code, rows, err = run_predict(["--run", str(run), "--data", str(project / "data"), "--output", str(output)],
                                  capsys)
    written = [json.loads(line) for line in output.read_text().splitlines()] if output.exists() else []
    assert not any(math.isinf(p) or math.isnan(p) for r in rows + written for p in r["probabilities"].values())
    assert code == 2 and not output.exists() and "not finite" in err, err


def test_songs_with_no_node_in_the_runs_modalities_are_skipped_and_named(project, capsys, tmp_path):
    data = project / "data"
    fold = next(k for k in range(10) if NO_MEDIA[0] in fold_ids(data, k))
    train_run(project, "runs/audio", "--fold", str(fold), "--modalities", "audio,images")
    code, rows, err = predict_to_file(["--run", str(project / "runs" / "audio"), "--data", str(data), "--fold",
                                       str(fold)], capsys,
                                      tmp_path / "p.jsonl")
    assert code == 0, err
    assert [r["id"] for r in rows] == [i for i in fold_ids(data, fold) if i not in NO_MEDIA]
    assert f"skipped id {NO_MEDIA[0]!r}: no node in any of the run's modalities" in err, err
