"""Run-level decision settings of a cell (issue 21, items 6-7): the validation-chosen threshold is chosen on
validation only, applied to test, recorded and part of the digest; Acc's empty-union convention likewise; a
one-label dataset runs through the runner and the engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from baselines import run_all
from baselines.results import ResultsStore
from mmer import registry
from mmer.early_fusion import early_fused
from mmer.metrics import binarize, micro_f1
from mmer.registry import ModelSpec
from mmer.runner import Cell, resolved_settings, run_cell, run_settings, settings_digest
from nemu.loading import split_datasets
from nemu.shards import dataset_fingerprint, read_manifest, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")

# Validation prefers a low threshold (positives at 0.35, negatives at 0.2: best 0.25..0.35, nearest 0.5 is 0.35),
# test a high one (positives 0.75, negatives 0.6: best 0.65..0.75). Chosen on test, the threshold would be 0.65.
PROBABILITIES = {"valid": (0.35, 0.2), "test": (0.75, 0.6), "train": (0.9, 0.1)}


def planted(dataset, split: str) -> np.ndarray:
    positive, negative = PROBABILITIES[split]
    return np.where(np.asarray(dataset.labels) > 0.5, positive, negative)


class LookupEstimator:
    """An estimator whose predict_proba is the planted probability of each row (looked up by its features)."""

    def __init__(self, table: dict):
        self.table = table

    def set_params(self, **params):
        return self

    def fit(self, X, Y):
        return self

    def predict_proba(self, X):
        return np.stack([self.table[row.tobytes()] for row in np.asarray(X)])

    def predict(self, X):
        return binarize(self.predict_proba(X))


class LookupNet(nn.Module):
    """A neural model whose logits are the planted probabilities of each song (looked up by id); the one
    parameter trains to nothing, so every epoch predicts the same."""

    def __init__(self, table: dict):
        super().__init__()
        self.table = table
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        p = torch.tensor(np.stack([self.table[i] for i in batch["ids"]]), dtype=torch.float32)
        return {"logits": torch.logit(p) + 0.0 * self.unused}

    def loss(self, outputs, batch):
        return nn.functional.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"].float())


def stub_specs(root: Path) -> dict[str, ModelSpec]:
    datasets = split_datasets(root, 0)
    rows, songs = {}, {}
    for split, ds in datasets.items():
        x, _ = early_fused(ds)
        for row, ident, p in zip(x, ds.ids, planted(ds, split)):
            rows[row.tobytes()] = p
            songs[ident] = p
    assert len(rows) == sum(len(ds) for ds in datasets.values())  # every song's features are its own
    neural = {"epochs": 2, "lr": 1e-3, "batch_size": 4, "clip": 10.0, "threshold": 0.5}
    return {"estimator": ModelSpec("StubE", "Classical", "test", "estimator", lambda config, info: LookupEstimator(rows),
                                   {"quick": {"grid": {}}}),
            "neural": ModelSpec("StubN", "Ours", "test", "neural", lambda config, info: LookupNet(songs),
                                {"quick": neural})}


@pytest.mark.parametrize("kind", ["estimator", "neural"])
def test_validation_threshold_is_chosen_on_validation_only_applied_to_test_and_recorded(built, tmp_path, kind):
    root = built[0] / "out"
    spec = stub_specs(root)[kind]
    datasets = split_datasets(root, 0)
    fixed = run_cell(Cell(spec.name, "nemu", 0, 0), spec, root, "quick", out_dir=tmp_path)
    chosen = run_cell(Cell(spec.name, "nemu", 0, 0), spec, root, "quick", threshold="validation",
                      out_dir=tmp_path / "v")
    assert (fixed["threshold"], fixed["threshold_rule"]) == (0.5, "0.5")
    assert (chosen["threshold"], chosen["threshold_rule"]) == (0.35, "validation")  # not test's 0.65
    assert chosen["settings"]["threshold_rule"] == "validation"
    test_gold = np.asarray(datasets["test"].labels) > 0.5
    # on test every probability is >= 0.6: at 0.35 every label of every song is predicted
    assert chosen["test_predictions"]["predicted"] == ["1" * test_gold.shape[1]] * len(datasets["test"])
    assert chosen["metrics"]["micro_f1"] == pytest.approx(micro_f1(test_gold, np.ones_like(test_gold)))
    assert chosen["valid_micro_f1"] == 1.0  # validation separates perfectly at 0.35
    # the fixed rule: test positives (0.75) and negatives (0.6) are all >= 0.5 as well; validation at 0.5 is empty
    assert fixed["valid_micro_f1"] == 0.0
    if kind == "neural":  # the run folder decides as the cell did
        run = json.loads((Path(chosen["run_dir"]) / "run.json").read_text(encoding="utf-8"))
        assert run["config"]["threshold"] == 0.35 and run["threshold_rule"] == "validation"
        lines = [json.loads(line) for line in (Path(chosen["run_dir"]) / "predictions-test.jsonl").open()]
        assert all(len(line["predicted"]) == test_gold.shape[1] for line in lines)


def test_threshold_rule_and_empty_union_enter_the_digest(built):
    spec = registry.get("BR")
    digests = {settings_digest(resolved_settings(spec, "quick", run_settings(t, e)))
               for t in ("0.5", "validation") for e in (0.0, 1.0)}
    assert len(digests) == 4
    # the defaults are the paper's 0.5 and the official code's 0
    assert resolved_settings(spec, "quick")["threshold_rule"] == "0.5"
    assert resolved_settings(spec, "quick")["empty_union"] == 0.0
    assert (settings_digest(resolved_settings(spec, "quick"))
            == settings_digest(resolved_settings(spec, "quick", run_settings("0.5", 0.0))))
    with pytest.raises(ValueError):
        run_settings("0.3")
    with pytest.raises(ValueError):
        run_settings("0.5", 0.5)
    # a cell whose digest was made under one rule refuses to run under the other
    root = built[0] / "out"
    cell = Cell("BR", "nemu", 0, 0, None, dataset_fingerprint(read_manifest(root)),
                settings_digest(resolved_settings(spec, "quick")))
    with pytest.raises(ValueError, match="settings digest"):
        run_cell(cell, spec, root, "quick", threshold="validation")


def test_run_all_reruns_a_changed_rule_and_records_it(built, tmp_path):
    root = tmp_path / "nemu"
    shutil.copytree(built[0] / "out", root, ignore=shutil.ignore_patterns(".cache"))
    out = tmp_path / "results"

    def go(**kw):
        return run_all.run({"nemu": root}, ["BR"], [0], [0], "quick", out, table3=False, progress=False, **kw)

    assert go()["ran"] == 1
    assert go(threshold="0.5", empty_union=0.0)["ran"] == 0  # the defaults: the same cell
    validation = go(threshold="validation")
    assert validation["ran"] == 1 and "threshold_rule '0.5' -> 'validation'" in validation["notices"][0]
    lenient = go(threshold="validation", empty_union=1.0)
    assert lenient["ran"] == 1 and "empty_union 0.0 -> 1.0" in lenient["notices"][0]
    records = ResultsStore(out, "quick").records()
    assert [(r["threshold_rule"], r["empty_union"]) for r in records] == [("0.5", 0.0), ("validation", 0.0),
                                                                          ("validation", 1.0)]
    assert all(0.05 <= r["threshold"] <= 0.95 and "macro_f1_present" in r["metrics"] for r in records)


def one_label_copy(source: Path, target: Path) -> Path:
    """A copy of a built dataset with only its first label (label_vector cut to one column, manifest updated)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".cache"))
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    manifest["labels"] = manifest["labels"][:1]
    for entries in manifest["shards"].values():
        for entry in entries:
            path = target / entry["path"]
            table = pq.read_table(path)
            index = table.schema.get_field_index("label_vector")
            rows = [row[:1] for row in table["label_vector"].to_pylist()]
            field = pa.field("label_vector", pa.list_(pa.int8(), 1))
            table = table.set_column(index, field, pa.array(rows, type=field.type))
            pq.write_table(table, path)
            entry["sha256"] = sha256_file(path)
            for key in ("bytes", "size"):
                if key in entry:
                    entry[key] = path.stat().st_size
    (target / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    return target


@pytest.mark.parametrize("model", ["BR", "HHMPN"])
def test_a_one_label_dataset_runs_through_the_runner_and_engine(built, tmp_path, model):
    root = one_label_copy(built[0] / "out", tmp_path / "one")
    spec = registry.get(model)
    datasets = split_datasets(root, 0)
    assert datasets["test"].labels.shape[1] == 1
    overrides = {"epochs": 2} if spec.kind == "neural" else None
    for rule in ("0.5", "validation"):
        record = run_cell(Cell(model, "nemu", 0, 0), spec, root, "quick", overrides=overrides, threshold=rule)
        assert record["status"] == "ok", record
        assert list(record["per_label_f1"]) == read_manifest(root)["labels"]
        assert all(len(bits) == 1 for bits in record["test_predictions"]["predicted"])
        # with one label, micro = macro = the label's F1
        assert record["metrics"]["micro_f1"] == pytest.approx(record["metrics"]["macro_f1"])
