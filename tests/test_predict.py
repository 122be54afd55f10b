"""Run folders: every neural cell of run_all and hhmpn.train leaves one, hhmpn.predict accepts each with the
cell's own test probabilities, and refuses unusable ones with a one-line error (exit code 2)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmer.registry import get, models
from mmer.runner import Cell
from mmer.runner import run_cell, run_folder
from pipelines import predict, train
from mmer.predict import load_run
from mmer.runs import RunFolderError
from nemu.loading import split_datasets
from mmer.metrics import binarize, evaluate

NEURAL = [name for name, spec in models().items() if spec.kind == "neural"]


pytestmark = pytest.mark.usefixtures("one_thread")


def predictions(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


@pytest.fixture(scope="module")
def cell_runs(built, tmp_path_factory):
    """One run_all cell of every neural model applicable to NEMu (1 epoch, rotation 2), run folders under OUT."""
    out = tmp_path_factory.mktemp("cells")
    root = built[0] / "out"
    records = {}
    # One thread, as the tests that predict again (a module fixture runs before the function-scoped one_thread):
    # torch's float sums depend on the thread count, and the comparison below is of identical computations.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in NEURAL:
            records[name] = run_cell(Cell(name, "nemu", 2, 0), get(name), root, "quick", overrides={"epochs": 1},
                                     out_dir=out)
    finally:
        torch.set_num_threads(threads)
    return root, out, records


@pytest.mark.parametrize("name", NEURAL)
def test_every_neural_cell_leaves_a_run_folder_predict_accepts(cell_runs, name, tmp_path):
    root, out, records = cell_runs
    record = records[name]
    if record["status"] == "not_applicable":  # MLEE needs MOSEI's dominant emotion; no cell, no folder
        assert "run_dir" not in record and not run_folder(out, Cell(name, "nemu", 2, 0)).exists()
        return
    run_dir = Path(record["run_dir"])
    assert run_dir == run_folder(out, Cell(name, "nemu", 2, 0))
    assert {"model.pt", "run.json", "normalization.json", "train_labels.npy"} <= {p.name for p in run_dir.iterdir()}
    torch.load(run_dir / "model.pt", weights_only=True)
    output = tmp_path / "p.jsonl"
    assert predict.main(["--run", str(run_dir), "--data", str(root), "--split", "test", "--fold", "2",
                         "--output", str(output)]) == 0
    ours, cells = predictions(output), predictions(run_dir / "predictions-test.jsonl")
    assert list(ours) == list(cells) and ours
    for sample_id, row in ours.items():
        assert row["predicted"] == cells[sample_id]["predicted"]
        for label, p in row["probabilities"].items():
            # both are rounded to 6 decimals; 1e-5 leaves room for a batch-size-dependent float sum, while a
            # wrong checkpoint, model or input normalisation moves probabilities by orders of magnitude more
            assert abs(p - cells[sample_id]["probabilities"][label]) <= 1e-5
    # and the record's test metrics are those of the probabilities predict gives
    run = load_run(run_dir)
    dataset = run.dataset(root, None, [2])
    _, probabilities = run.predict_dataset(dataset)
    metrics = evaluate(dataset.labels, binarize(probabilities, run.threshold), run.label_names)
    assert metrics["micro_f1"] == pytest.approx(record["metrics"]["micro_f1"], abs=1e-12)


def test_saved_statistics_are_applied_again_by_predict(cell_runs):
    root, _, records = cell_runs
    run = load_run(records["HHMPN"]["run_dir"])
    assert run.statistics.same_as(split_datasets(root, fold=2)["train"].normalization)
    dataset = run.dataset(root, "test")
    assert dataset.normalization.same_as(run.statistics)
    unnormalised = split_datasets(root, fold=4)["test"]  # another rotation's statistics
    with pytest.raises(RunFolderError, match="not normalised with the run's statistics"):
        run.predict_dataset(unnormalised)


def test_hhmpn_train_writes_the_same_run_folder(built, tmp_path):
    root = built[0] / "out"
    run_dir = tmp_path / "run"
    assert train.main(["--data", str(root), "--out", str(run_dir), "--profile", "quick", "--epochs", "1", "--d", "16",
                       "--fold", "2", "--ablation", "no-f2l", "--no-progress"]) == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model"] == "HHMPN w/o F2L" and run["input_normalization"] == "standardize" and run["fold"] == 2
    assert predict.main(["--run", str(run_dir), "--data", str(root), "--fold", "2",
                         "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = predictions(tmp_path / "p.jsonl")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = np.array([[name in r["labels"] for name in run["labels"]] for r in rows.values()], dtype=float)
    predicted = np.array([[name in r["predicted"] for name in run["labels"]] for r in rows.values()], dtype=float)
    assert evaluate(labels, predicted, run["labels"])["micro_f1"] == pytest.approx(metrics["test"]["micro_f1"])
    raw_dir = tmp_path / "raw"
    assert train.main(["--data", str(root), "--out", str(raw_dir), "--profile", "quick", "--epochs", "1", "--d", "16",
                       "--input-normalization", "raw", "--no-progress"]) == 0
    assert json.loads((raw_dir / "run.json").read_text())["input_normalization"] == "raw"
    assert load_run(raw_dir).statistics.setting == "raw"


class RunsCode:
    """A pickle that calls a function when loaded: what weights_only=True must refuse."""

    def __reduce__(self):
        return (os.getpid, ())


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _corruptions():
    def state(change):
        def apply(run_dir: Path):
            tensors = torch.load(run_dir / "model.pt", weights_only=True)
            change(tensors)
            torch.save(tensors, run_dir / "model.pt")
        return apply

    def first_key(tensors):
        return next(iter(tensors))

    return {
        "missing model.pt": (lambda d: (d / "model.pt").unlink(), "model.pt: missing"),
        "missing run.json": (lambda d: (d / "run.json").unlink(), "no run.json"),
        "unparsable run.json": (lambda d: (d / "run.json").write_text('{"model": "HHMPN", '), "run.json: unreadable"),
        "run.json not an object": (lambda d: (d / "run.json").write_text("[1, 2]"), "not a JSON object"),
        "run.json without labels": (lambda d: _edit_json(d / "run.json", lambda r: r.pop("labels")), "lacks labels"),
        "unknown model": (lambda d: _edit_json(d / "run.json", lambda r: r.update(model="NoSuchNet")),
                          "not registered"),
        "code-running pickle": (lambda d: torch.save({"w": RunsCode()}, d / "model.pt"), "refused, not a weights-only"),
        "not a torch file": (lambda d: (d / "model.pt").write_bytes(b"garbage" * 10), "refused, not a weights-only"),
        "a tensor, not a state_dict": (lambda d: torch.save(torch.zeros(3), d / "model.pt"), "not a state_dict"),
        "missing key": (state(lambda t: t.pop(first_key(t))), "1 missing"),
        "unexpected key": (state(lambda t: t.update(extra=torch.zeros(1))), "1 unexpected (first extra)"),
        "wrong shape": (state(lambda t: t.update({first_key(t): torch.zeros(3, 3, 3)})), "of another shape"),
        "missing statistics": (lambda d: (d / "normalization.json").unlink(), "no input-normalisation statistics"),
        "broken statistics": (lambda d: (d / "normalization.json").write_text("{}"), "not valid input-normalisation"),
        "missing train labels": (lambda d: (d / "train_labels.npy").unlink(), "train_labels.npy: missing"),
        "another label set": (lambda d: _edit_json(d / "run.json", lambda r: r["labels"].__setitem__(0, "Bored")),
                              "labels"),
    }


@pytest.mark.parametrize("case", list(_corruptions()))
def test_predict_refuses_an_unusable_run_folder_in_one_line(cell_runs, case, tmp_path, capsys):
    root, _, records = cell_runs
    change, expected = _corruptions()[case]
    run_dir = tmp_path / "run"
    shutil.copytree(records["HHMPN"]["run_dir"], run_dir)
    change(run_dir)
    capsys.readouterr()
    code = predict.main(["--run", str(run_dir), "--data", str(root), "--output", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("hhmpn-predict: error: ") and expected in err, err
    assert not (tmp_path / "p.jsonl").exists()


def test_predict_refuses_missing_folders_and_other_data(cell_runs, tmp_path, capsys):
    root, _, records = cell_runs
    for argv in (["--run", str(tmp_path / "nowhere"), "--data", str(root)],
                 ["--run", records["HHMPN"]["run_dir"], "--data", str(tmp_path)],
                 ["--run", records["HHMPN"]["run_dir"], "--data", str(root), "--device", "bogus"]):
        assert predict.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("hhmpn-predict: error: "), err
    run = load_run(records["HHMPN"]["run_dir"])
    other = type("Other", (), {"root": "elsewhere", "label_names": run.label_names,
                               "modality_dims": run.modality_dims | {"audio": 75}})()
    with pytest.raises(RunFolderError, match="modality dims"):
        run.check_dataset(other)


def test_train_refuses_an_unusable_output_in_one_line(built, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = train.main(["--data", str(built[0] / "out"), "--out", str(blocker), "--profile", "quick", "--epochs", "1",
                       "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("hhmpn-train: error: "), err


def test_a_model_with_extra_columns_round_trips_on_mosei(tmp_path):
    """MLEE (needs MOSEI's dominant emotion) on a small planted MOSEI build: run folder -> the same predictions."""
    from tests.test_mlee import planted_mosei

    root = planted_mosei(tmp_path / "mosei", videos=60)
    cell = Cell("MLEE", "mosei", 0, 0)
    record = run_cell(cell, get("MLEE"), root, "quick", overrides={"epochs": 1}, out_dir=tmp_path / "out")
    assert record["status"] == "ok" and Path(record["run_dir"]) == run_folder(tmp_path / "out", cell)
    assert json.loads((Path(record["run_dir"]) / "run.json").read_text())["extra_columns"] == ["dominant_emotion"]
    output = tmp_path / "p.jsonl"
    assert predict.main(["--run", record["run_dir"], "--data", str(root), "--fold", "0",
                         "--output", str(output)]) == 0
    ours, cells = predictions(output), predictions(Path(record["run_dir"]) / "predictions-test.jsonl")
    assert list(ours) == list(cells) and ours
    assert all(abs(p - cells[i]["probabilities"][k]) <= 1e-6 for i, r in ours.items()
               for k, p in r["probabilities"].items())
