"""Results tied to the data and configuration they came from: a rebuilt dataset or a changed setting reruns
the cell (and says what changed), and the tables never mix cells of different builds."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from mmer import registry
from baselines import run_all
from baselines.results import ResultsStore
from baselines.tables import write_tables
from mmer.runner import Cell, resolved_settings, run_cell, settings_digest
from nemu.shards import dataset_fingerprint, read_manifest, write_manifest


@pytest.fixture
def dataset(built, tmp_path) -> Path:
    """A private copy of the built tiny dataset, so a test can 'rebuild' it (change its manifest)."""
    base, _, _ = built
    copy = tmp_path / "nemu"
    shutil.copytree(base / "out", copy, ignore=shutil.ignore_patterns(".cache"))
    return copy


def _rebuild(root: Path) -> None:
    """What a rebuild with another seed does to the identity: the manifest (and so the fingerprint) changes."""
    manifest = read_manifest(root)
    manifest["settings"]["seed"] = manifest["settings"].get("seed", 0) + 1
    write_manifest(root, manifest)


def _run(root: Path, out: Path, **kw) -> dict:
    return run_all.run({"nemu": root}, ["BR"], [0], [0], "quick", out, table3=False, progress=False, **kw)


def test_a_rebuilt_dataset_reruns_instead_of_reusing(dataset, tmp_path):
    out = tmp_path / "results"
    first = _run(dataset, out)
    assert (first["ran"], first["skipped"]) == (1, 0)
    again = _run(dataset, out)
    assert (again["ran"], again["skipped"], again["notices"]) == (0, 1, [])  # same build: reused
    old = dataset_fingerprint(read_manifest(dataset))
    _rebuild(dataset)
    new = dataset_fingerprint(read_manifest(dataset))
    rebuilt = _run(dataset, out)
    assert (rebuilt["ran"], rebuilt["skipped"]) == (1, 0)
    assert rebuilt["notices"] == [f"{out / 'results.jsonl'} has 1 cell(s) for dataset nemu built from fingerprint "
                                  f"{old[:8]}.. but {dataset} is now {new[:8]}..: rerunning them"]
    records = ResultsStore(out, "quick").records()
    assert [r["dataset_fingerprint"] for r in records] == [old, new]


def test_a_changed_setting_reruns_and_names_the_setting(dataset, tmp_path, monkeypatch):
    out = tmp_path / "results"
    _run(dataset, out)
    raw = _run(dataset, out, input_normalization="raw")
    assert raw["ran"] == 1
    assert "input_normalization 'standardize' -> 'raw'" in raw["notices"][0] and "BR" in raw["notices"][0]
    spec = registry.get("BR")
    monkeypatch.setitem(spec.profiles, "quick", spec.profiles["quick"] | {"grid": {"C": [3.0]}})
    changed = _run(dataset, out, input_normalization="raw")
    assert changed["ran"] == 1 and "grid" in changed["notices"][0] and "3.0" in changed["notices"][0]
    assert _run(dataset, out, input_normalization="raw")["ran"] == 0  # and now it is stored


def test_tables_use_only_cells_of_the_current_build(dataset, tmp_path):
    manifest = read_manifest(dataset)
    current = dataset_fingerprint(manifest)

    def record(fingerprint: str, micro_f1: float) -> dict:
        return {"key": "BR|nemu|fold=0|seed=0|modalities=all", "model": "BR", "group": "Classical",
                "dataset": "nemu", "fold": 0, "seed": 0, "status": "ok", "dataset_fingerprint": fingerprint,
                "modalities": [m["name"] for m in manifest["modalities"]],
                "metrics": {"accuracy": 0.5, "hamming_loss": 0.1, "micro_f1": micro_f1, "macro_f1": 0.5},
                "per_label_f1": {name: 0.5 for name in manifest["labels"]}}

    records = [record("0" * 64, 0.11), record(current, 0.66), record("1" * 64, 0.99)]
    write_tables(records, {"nemu": manifest}, tmp_path)
    rows = list(csv.DictReader((tmp_path / "table2.csv").open(encoding="utf-8")))
    assert [(r["approach"], r["NEMu miF1(%) mean"], r["NEMu folds"]) for r in rows] == [("BR", "66.0", "1")]


def test_run_all_tabulates_only_this_grid_build_and_settings(dataset, tmp_path):
    out = tmp_path / "results"
    _run(dataset, out, input_normalization="raw")
    _rebuild(dataset)
    _run(dataset, out)  # the store now holds two BR cells at the same grid place
    assert len(ResultsStore(out, "quick").records()) == 2
    rows = list(csv.DictReader((out / "table2.csv").open(encoding="utf-8")))
    assert [(r["approach"], r["NEMu folds"]) for r in rows] == [("BR", "1")]
    stored = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["input_normalization"] for r in stored} == {"raw", "standardize"}


def test_a_store_from_before_fingerprints_is_rerun_not_reused(dataset, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    legacy = {"key": "BR|nemu|fold=0|seed=0|modalities=all", "model": "BR", "group": "Classical", "dataset": "nemu",
              "fold": 0, "seed": 0, "status": "ok", "profile": "quick", "modalities": ["lyrics"],
              "metrics": {"accuracy": 0.1, "hamming_loss": 0.9, "micro_f1": 0.01, "macro_f1": 0.01}}
    (out / "results.jsonl").write_text(json.dumps(legacy) + "\n[1, 2]\n", encoding="utf-8")  # and a non-record line
    summary = _run(dataset, out)
    assert summary["ran"] == 1
    assert "built from fingerprint (not recorded) but" in summary["notices"][0]
    rows = list(csv.DictReader((out / "table2.csv").open(encoding="utf-8")))
    fresh = ResultsStore(out, "quick").records()[-1]
    assert "identity" in fresh and "identity" not in ResultsStore(out, "quick").records()[0]
    assert [float(r["NEMu miF1(%) mean"]) for r in rows] == [round(100 * fresh["metrics"]["micro_f1"], 2)]


def test_overrides_enter_the_digest_and_the_run_alike(dataset, tmp_path):
    # the configuration is resolved once (mmer.runner.resolved_settings): what the cell's digest covers is what
    # the run uses, so a changed override reruns the cell and the record shows the overridden value
    out = tmp_path / "results"
    first = _run(dataset, out, overrides={"grid": {"C": [0.1]}})
    again = _run(dataset, out, overrides={"grid": {"C": [0.1]}})
    other = _run(dataset, out, overrides={"grid": {"C": [1.0]}})
    assert (first["ran"], again["ran"], again["skipped"], other["ran"]) == (1, 0, 1, 1)
    assert "grid {'C': [0.1]} -> {'C': [1.0]}" in other["notices"][0]
    records = ResultsStore(out, "quick").records()
    assert [r["settings"]["grid"] for r in records] == [{"C": [0.1]}, {"C": [1.0]}]
    assert [r["selected"] for r in records] == [{"C": 0.1}, {"C": 1.0}]
    digests = {r["settings_digest"] for r in records}
    assert digests == {settings_digest(resolved_settings(registry.get("BR"), "quick", {"grid": {"C": [c]}}))
                       for c in (0.1, 1.0)}


def test_a_cell_never_runs_with_settings_its_digest_does_not_cover(dataset):
    spec = registry.get("BR")
    digest = settings_digest(resolved_settings(spec, "quick"))
    cell = Cell("BR", "nemu", 0, 0, None, dataset_fingerprint(read_manifest(dataset)), digest)
    assert run_cell(cell, spec, dataset, "quick")["status"] == "ok"
    with pytest.raises(ValueError, match="settings digest"):
        run_cell(cell, spec, dataset, "quick", overrides={"grid": {"C": [1.0]}})
