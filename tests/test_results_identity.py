"""Results tied to the data and configuration they came from: a rebuilt dataset or a changed setting reruns
the cell (and says what changed), and the tables never mix cells of different builds."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from mmer import code, registry
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
    # (a line that is not a record stops the run naming it: tests/test_store_faults.py)
    (out / "results.jsonl").write_text(json.dumps(legacy) + "\n", encoding="utf-8")
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


# ----------------------------------------------------------------------------------------------
# Results tied to the code: the model's module, the cell runner and their project imports (mmer.code)


def _project_copy(tmp_path: Path) -> Path:
    """A copy of the project's Python sources, to edit without touching the real tree."""
    tree = tmp_path / "tree"
    for package in code.CODE_PACKAGES:
        shutil.copytree(code.PROJECT_ROOT / package, tree / package,
                        ignore=lambda folder, names: [n for n in names if n == "__pycache__" or
                                                      (not n.endswith(".py") and not Path(folder, n).is_dir())])
    return tree


def _edit(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n# a bug fix\n", encoding="utf-8")


def test_editing_a_models_source_reruns_its_cells_and_not_the_others(dataset, tmp_path, monkeypatch):
    tree = _project_copy(tmp_path)
    monkeypatch.setattr(code, "PROJECT_ROOT", tree)  # the digests read this copy; the cells run the real code
    out = tmp_path / "results"
    store = out / "results.jsonl"

    def run() -> dict:
        return run_all.run({"nemu": dataset}, ["BR", "LSAN"], [0], [0], "quick", out, table3=False, progress=False,
                           overrides={"epochs": 1})

    assert run()["ran"] == 2
    again = run()
    assert (again["ran"], again["skipped"], again["notices"]) == (0, 2, [])  # nothing changed: both reused
    first = {r["model"]: r for r in ResultsStore(out, "quick").records()}
    _edit(tree / "baselines" / "classical.py")  # BR's module
    edited = run()
    assert (edited["ran"], edited["skipped"]) == (1, 1)  # BR reruns, LSAN is reused
    assert edited["notices"] == [f"{store} has 1 cell(s) of BR run with other code (baselines/classical.py changed): "
                                 f"rerunning them"]
    records = ResultsStore(out, "quick").records()
    assert [r["model"] for r in records] == ["BR", "LSAN", "BR"]
    new_br = records[-1]
    assert new_br["code_files"]["baselines/classical.py"] == code.sha256_of(tree / "baselines" / "classical.py")
    assert new_br["code_files"]["baselines/classical.py"] != first["BR"]["code_files"]["baselines/classical.py"]
    assert new_br["code_digest"] == code.code_digest(new_br["code_files"]) != first["BR"]["code_digest"]
    assert new_br["identity"].endswith(f"|code={new_br['code_digest']}")
    # the engine is in every cell's closure: editing it reruns both models, naming the file for each
    _edit(tree / "mmer" / "engine.py")
    engine = run()
    assert engine["ran"] == 2
    assert engine["notices"] == [f"{store} has 1 cell(s) of {m} run with other code (mmer/engine.py changed): "
                                 f"rerunning them" for m in ("BR", "LSAN")]
    assert run()["ran"] == 0


def test_a_record_carries_its_code_files_digest_version_and_commit(dataset):
    spec = registry.get("BR")
    current = code.model_code(spec.factory)
    cell = Cell("BR", "nemu", 0, 0, None, dataset_fingerprint(read_manifest(dataset)),
                settings_digest(resolved_settings(spec, "quick")), current["code_digest"])
    record = run_cell(cell, spec, dataset, "quick")
    assert record["code_digest"] == cell.code == code.code_digest(record["code_files"])
    for path in ("baselines/classical.py", "mmer/runner.py", "mmer/engine.py", "mmer/metrics.py", "nemu/loading.py",
                 "nemu/normalization.py", "mmer/registry.py"):
        assert record["code_files"][path] == code.sha256_of(code.PROJECT_ROOT / path)
    assert record["package_version"] == code.package_version() and "git_commit" in record
    with pytest.raises(ValueError, match="code digest"):  # a cell never runs code its digest does not cover
        run_cell(Cell("BR", "nemu", 0, 0, None, cell.fingerprint, cell.settings, "0" * 16), spec, dataset, "quick")


def test_the_code_closure_follows_imports_of_the_project_only(tmp_path):
    lsan = code.code_files("baselines.lsan")
    br = code.code_files("baselines.classical")
    assert "baselines/lsan.py" in lsan and "baselines/classical.py" not in lsan
    assert "baselines/classical.py" in br and "baselines/lsan.py" not in br
    assert {"mmer/runner.py", "mmer/engine.py", "nemu/loading.py"} <= set(lsan) & set(br)
    assert not any(path.startswith("pipelines/") for path in {*lsan, *br})
    # imports inside functions and relative imports count; a __main__ block does not run in a cell
    tree = tmp_path / "tree"
    for name, text in {
        "baselines/__init__.py": "",
        "baselines/toy.py": "import numpy\nfrom . import helper\n\ndef f():\n    from nemu.extra import g\n"
                            "\nif __name__ == '__main__':\n    from baselines import main_only\n",
        "baselines/helper.py": "",
        "baselines/main_only.py": "",
        "baselines/unrelated.py": "",
        "nemu/__init__.py": "",
        "nemu/extra.py": "from nemu import deeper\n",
        "nemu/deeper.py": "",
    }.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text, encoding="utf-8")
    files = code.code_files("baselines.toy", tree)
    assert sorted(files) == ["baselines/__init__.py", "baselines/helper.py", "baselines/toy.py", "nemu/__init__.py",
                             "nemu/deeper.py", "nemu/extra.py"]
    before = code.code_digest(files)
    _edit(tree / "baselines" / "unrelated.py")
    assert code.code_digest(code.code_files("baselines.toy", tree)) == before
    _edit(tree / "nemu" / "deeper.py")
    after = code.code_files("baselines.toy", tree)
    assert code.code_digest(after) != before and code.changed_files(files, after) == ["nemu/deeper.py changed"]
    assert code.git_commit(tmp_path) is None  # not a checkout: no commit, no error
