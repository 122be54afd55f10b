"""The benchmark harness: registry, grid, resume after a kill, tables and significance markers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nemu
from mmer import registry
from mmer.metrics import evaluate
from baselines import cells, run_all
from pipelines import benchmark
from baselines.results import ResultsStore
from mmer.runner import Cell
from baselines.tables import table2, table3, table4

REPO = Path(__file__).resolve().parents[1]


def test_every_model_is_registered_once_with_group_and_configs():
    models = registry.models()
    assert {"BR", "CC", "LP", "HHMPN", "HHMPN w/o F2F", "HHMPN w/o F2L", "HHMPN w/o L2L", "HHMPN w/o M2L"} <= set(models)
    for spec in models.values():
        assert spec.group in registry.GROUPS and spec.citation and set(spec.profiles) == {"quick", "paper"}
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("BR", group="Classical", citation="x", kind="estimator", quick={}, paper={})(lambda c, i: None)
    with pytest.raises(KeyError, match="unknown model"):
        registry.get("NoSuchModel")


def test_grid_has_table3_subsets_for_nemu(built):
    base, _, _ = built
    cells = run_all.grid({"nemu": base / "out"}, ["BR", "HHMPN"], [0, 1], [0], table3=True)
    subsets = {c.modalities for c in cells if c.modalities}
    assert len(subsets) == 14 and all(1 <= len(s) <= 3 for s in subsets)
    assert len(cells) == 2 * 2 + 14 * 2
    # three seeds for Table 2, one for Table 3 (benchmark's defaults): 2 models x 2 folds x 3 + 14 x 2 x 1
    cells = run_all.grid({"nemu": base / "out"}, ["BR", "HHMPN"], [0, 1], [0, 1, 2], table3=True, table3_seeds=[0])
    assert len(cells) == 2 * 2 * 3 + 14 * 2
    assert {c.seed for c in cells if c.modalities} == {0} and {c.seed for c in cells if not c.modalities} == {0, 1, 2}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_killed_run_resumes_without_redoing_finished_cells(built, tmp_path):
    base, _, _ = built
    out = tmp_path / "results"
    command = [sys.executable, "-m", "baselines.run_all", "--datasets", f"nemu={base / 'out'}", "--models",
               "BR,CC,HHMPN,HHMPN w/o L2L", "--folds", "2", "--seeds", "0", "--no-table3", "--out", str(out), "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and len(_lines(out / "results.jsonl")) < 2:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {r["key"]: r for r in _lines(out / "results.jsonl")}
    assert 2 <= len(finished) < 8, "the run should have been killed part-way"
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    assert f"{len(finished)} already done" in result.stdout
    records = _lines(out / "results.jsonl")
    assert len(records) == len({r["key"] for r in records}) == 8
    for key, record in finished.items():  # finished cells were not redone
        assert next(r for r in records if r["key"] == key) == record
    record = records[0]
    assert {"metrics", "per_label_f1", "run_seconds", "parameters", "peak_memory_mb", "settings"} <= set(record)
    assert set(record["metrics"]) >= {"accuracy", "hamming_loss", "micro_f1", "macro_f1"}
    for name in ("table1", "table2", "table2_with_paper", "table4"):
        for suffix in ("md", "csv", "tex"):
            assert (out / f"{name}.{suffix}").is_file()
    assert not (out / "table3.md").exists()  # --no-table3: no subset runs, no empty Table 3
    table = (out / "table2.md").read_text()
    assert "| Classical | BR |" in table and "| Ours | HHMPN w/o L2L |" in table and "LP" not in table
    assert " ± " in table and "(folds 0, 1)" in table
    for stem in ("figure3_f2l", "figure4_l2l"):
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.pdf").is_file()


def _record(model: str, fold: int, micro_f1: float, dataset: str = "nemu", status: str = "ok") -> dict:
    group = {"BR": "Classical", "MulT": "Multi-modal", "M3ER": "Multi-modal"}.get(model, "Ours")
    record = {"key": Cell(model, dataset, fold, 0).key, "model": model, "group": group, "dataset": dataset,
              "fold": fold, "seed": 0, "modalities": ["a", "b"], "status": status}
    if status == "ok":
        record |= {"metrics": {"accuracy": micro_f1 - 0.2, "hamming_loss": 1 - micro_f1, "micro_f1": micro_f1,
                               "macro_f1": micro_f1 - 0.1, "subset_accuracy": 0.0},
                   "per_label_f1": {"x": micro_f1, "y": micro_f1 / 2}}
    else:
        record["reason"] = "needs dominant-emotion annotations, which this dataset lacks"
    return record


def test_significance_markers_on_constructed_results():
    rng = np.random.default_rng(0)
    records = []
    for fold in range(10):
        noise = rng.normal(0, 0.01)
        records += [_record("HHMPN", fold, 0.60 + noise), _record("MulT", fold, 0.50 + noise + rng.normal(0, 0.01)),
                    _record("M3ER", fold, 0.60 + noise + rng.normal(0, 0.02))]
    row = next(r for r in table2(records, {"nemu": "NEMu"}).rows if r[1] == "HHMPN")
    micro = row[2 + 2]
    assert micro.endswith("†") and "‡" not in micro  # better than MulT, not significantly better than M3ER
    hamming = row[2 + 1]
    assert hamming.endswith("†")  # lower HL is better
    # a single fold allows no test: no marker at all
    one_fold = [r for r in records if r["fold"] == 0]
    row = next(r for r in table2(one_fold, {"nemu": "NEMu"}).rows if r[1] == "HHMPN")
    assert not any(cell.endswith(("†", "‡")) for cell in row)


def test_absent_models_have_no_row_and_not_applicable_shows_a_dash():
    records = [_record("BR", 0, 0.4), _record("HHMPN", 0, 0.5), _record("HHMPN", 0, 0.5, dataset="mosei"),
               _record("BR", 0, 0.3, dataset="mosei")]
    rendered = table2(records, {"nemu": "NEMu", "mosei": "MOSEI"})
    names = [row[1] for row in rendered.rows]
    assert names == ["BR", "HHMPN"]  # nothing else registered appears as a placeholder
    real = {"nemu": {"dataset": "NEMu", "source": {"kind": "raw-records"}},
            "mosei": {"dataset": "MOSEI", "source": {"kind": "cmu-mosei"}}}
    paper = table2(records, real, with_paper=True)
    assert "(41.1)" in paper.rows[0][4]  # BR's published NEMu miF1 beside ours on a real build
    apart = table2(records, {"nemu": "NEMu", "mosei": real["mosei"]}, with_paper=True)
    assert "(41.1)" not in apart.rows[0][4] and apart.rows[0][8] == "41.1"  # the paper's own column, apart


def test_table3_and_table4_shapes():
    records = []
    for subset in (["a"], ["b"], ["a", "b"]):
        rec = _record("HHMPN", 0, 0.5)
        rec["modalities"] = subset
        records.append(rec)
    rendered = table3(records, "nemu")
    assert [row[0] for row in rendered.rows] == ["a", "b"]  # the full set belongs to Table 2
    rendered = table4(records, "nemu", {"x": 0.7, "y": 0.2}, k=1)
    assert rendered.rows == [["x", "70.0", "50.0"], ["**Fewest Emotions**", "**% of Samples**", "**Micro F1(%)**"],
                             ["y", "20.0", "25.0"]]


def test_results_store_ignores_a_torn_line(tmp_path):
    store = ResultsStore(tmp_path, "quick")
    store.add(_record("BR", 0, 0.4))
    with (tmp_path / "results.jsonl").open("a") as handle:
        handle.write('{"key": "torn')
    store.add(_record("CC", 0, 0.4))
    assert [r["model"] for r in store.records()] == ["BR", "CC"]
    assert ResultsStore(tmp_path, "paper").records() == []


@pytest.mark.parametrize("name", list(registry.models()))
def test_every_registered_model_runs_one_epoch_on_the_sample(name, built):
    from mmer.runner import run_cell

    base, _, _ = built
    spec = registry.get(name)
    record = run_cell(Cell(name, "nemu", 0, 0), spec, base / "out", "quick", overrides={"epochs": 1})
    assert record["status"] in ("ok", "not_applicable")
    if record["status"] == "ok":
        assert set(record["per_label_f1"]) == set(json.loads((base / "out" / "manifest.json").read_text())["labels"])
        assert record["parameters"] > 0 and record["run_seconds"] > 0
        # the stored per-song outcome is the very one the metrics were computed from, in the test split's order
        outcome = record["test_predictions"]
        test = nemu.MMERDataset(base / "out", "test")
        assert sorted(outcome["ids"]) == sorted(test.ids) and len(outcome["ids"]) == record["sizes"]["test"]
        gold = np.array([[int(c) for c in row] for row in outcome["gold"]])
        predicted = np.array([[int(c) for c in row] for row in outcome["predicted"]])
        truth = dict(zip(test.ids, test.labels))
        np.testing.assert_array_equal(gold, np.array([truth[i] for i in outcome["ids"]]))
        again = evaluate(gold, predicted, list(record["per_label_f1"]))
        for key, value in record["metrics"].items():
            assert again[key] == pytest.approx(value, abs=1e-12), key


def test_a_model_needing_dominant_emotion_is_not_applicable_on_nemu(built):
    from mmer.registry import ModelSpec
    from mmer.runner import run_cell

    base, _, _ = built
    spec = ModelSpec("NeedsDominant", "Non-linguistic", "test", "neural", lambda c, i: None, {"quick": {}},
                     extra_columns=("dominant_emotion",))
    record = run_cell(Cell("NeedsDominant", "nemu", 0, 0), spec, base / "out", "quick")
    assert record["status"] == "not_applicable" and "dominant_emotion" in record["reason"]
    rendered = table2([record, _record("BR", 0, 0.4)], {"nemu": "NEMu"})
    assert ["Non-linguistic", "NeedsDominant", "–", "–", "–", "–"] in rendered.rows


def test_run_all_defaults_to_five_rotations_for_tables_2_and_3_on_every_core(built, monkeypatch):
    base, _, _ = built
    seen = {}

    def fake_run(datasets, model_names, folds, seeds, profile, out, **kw):
        seen.update(models=model_names, folds=folds, seeds=seeds, **kw)
        return {"cells": 0, "ran": 0, "skipped": 0, "failed": 0, "tables": [], "figures": []}

    monkeypatch.setattr(run_all, "run", fake_run)
    assert benchmark.main(["--datasets", f"nemu={base / 'out'}", "--models", "br,hhmpn", "--no-progress"]) == 0
    assert seen["models"] == ["BR", "HHMPN"]
    assert seen["folds"] == seen["table3_folds"] == [0, 1, 2, 3, 4]
    assert seen["jobs"] == cells.default_jobs() and seen["threads"] == 1
    assert seen["seeds"] == [0, 1, 2] and seen["table3_seeds"] == [0]  # >= 3 seeds per Table 2 cell by default
    assert benchmark.main(["--datasets", f"nemu={base / 'out'}", "--profile", "paper", "--table3-folds", "3"]) == 0
    assert len(seen["folds"]) == 10 and seen["table3_folds"] == [0, 1, 2]
    assert benchmark.main(["--datasets", f"nemu={base / 'out'}", "--seeds", "4,5", "--table3-seeds", "4,5"]) == 0
    assert seen["seeds"] == seen["table3_seeds"] == [4, 5]


def _thread_pools() -> tuple[list, int]:
    import scipy.linalg  # noqa: F401  (loads SciPy's own BLAS, as a scikit-learn model does)
    import torch
    from threadpoolctl import threadpool_info

    return sorted({(pool["internal_api"], pool["num_threads"]) for pool in threadpool_info()}), torch.get_num_threads()


def test_worker_processes_run_every_thread_pool_single_threaded(monkeypatch):
    # Oversubscribed BLAS threads made LP's cell 50x slower in two workers; the limit must reach the workers
    # even when the caller's environment sets no thread variable.
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    for variable in cells.THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)

    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=cells.worker_start,
                             initargs=(1,)) as pool:
        pools, torch_threads = pool.submit(_thread_pools).result()
    assert torch_threads == 1 and pools and all(threads == 1 for _, threads in pools)
