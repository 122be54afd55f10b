"""hhmpn.train / hhmpn.predict on the built sample: the planted signal is learned, outputs are complete."""

from __future__ import annotations

import json

import pytest

import nemu
from pipelines import predict, train
from tests.conftest import constant_baseline_micro_f1


pytestmark = pytest.mark.usefixtures("one_thread")


def test_hhmpn_learns_the_samples_planted_signal(sample_dataset, tmp_path):
    run = tmp_path / "run"
    code = train.main(["--data", str(sample_dataset), "--out", str(run), "--profile", "quick", "--epochs", "20",
                       "--no-progress"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    baseline = constant_baseline_micro_f1(nemu.MMERDataset(sample_dataset, "train").labels,
                                          nemu.MMERDataset(sample_dataset, "test").labels)
    assert metrics["test"]["micro_f1"] > baseline + 0.1, (metrics["test"]["micro_f1"], baseline)
    assert 1 <= metrics["best_epoch"] <= 20 and len(metrics["history"]) == 20
    best = max(h["valid"]["micro_f1"] for h in metrics["history"])
    assert metrics["valid"]["micro_f1"] == best  # the checkpoint is the best-validation epoch

    assert predict.main(["--run", str(run), "--data", str(sample_dataset), "--split", "test",
                         "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    test = nemu.load(sample_dataset, "test")
    assert [r["id"] for r in rows] == list(test["id"])
    assert all(set(r["predicted"]) == {k for k, p in r["probabilities"].items() if p >= 0.5} for r in rows)
    assert [r["labels"] for r in rows] == [list(x) for x in test["labels"]]


def test_modalities_ablation_and_fold_flags(sample_dataset, tmp_path):
    code = train.main(["--data", str(sample_dataset), "--out", str(tmp_path / "r"), "--profile", "quick",
                       "--epochs", "1", "--modalities", "audio,images", "--ablation", "no-l2l", "--fold", "3",
                       "--no-progress", "--d", "16"])
    assert code == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["run"]["modalities"] == ["audio", "images"]
    assert metrics["run"]["config"]["ablation"] == "no_l2l" and metrics["run"]["config"]["d"] == 16
    folds = nemu.load(sample_dataset, None)["fold"]
    assert metrics["sizes"]["test"] == int((folds == 3).sum()) and metrics["sizes"]["valid"] == int((folds == 4).sum())
    assert train.main(["--data", str(sample_dataset), "--out", str(tmp_path / "x"), "--modalities", "video",
                       "--no-progress"]) == 2
