"""nemu-benchmark --suite probes: the probe table and figure from a tiny grid, resuming, the flags.

The probe generator is stubbed (tiny songs of tests/rawkit with the generator's provenance keys: probe, ceiling,
constant_baseline), so these tests check the suite's machinery, not the probes' content (tests/test_sample*.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import nemu.sample
from baselines import probes
from pipelines import benchmark
from tests.rawkit import song, write_records

pytestmark = pytest.mark.usefixtures("one_thread")

STUB_PROBES = ("interaction", "null")
SONGS = 20
REFERENCE = {"interaction": ({"micro_f1": 0.812}, {"micro_f1": 0.304}), "null": ({"micro_f1": 0.401},
                                                                                    {"micro_f1": 0.387})}


def _stub_make_sample(calls: list):
    def make_sample(raw_dir, songs=240, seed=0, *, probe="linear", overwrite=False, progress=True):
        calls.append((probe, songs, seed))
        raw = Path(raw_dir)
        shift = STUB_PROBES.index(probe)  # each probe its own labels, so its own build
        records = [song(i, raw, labels=[(i + shift) % 12, (i * 5 + 3 + shift) % 12][: 1 + i % 2])
                   for i in range(songs)]
        ceiling, constant = REFERENCE[probe]
        source = {"kind": "synthetic-sample", "generator": "nemu.sample", "seed": seed, "songs": songs,
                  "probe": probe, "ceiling": ceiling, "constant_baseline": constant}
        (raw / "provenance.json").write_text(json.dumps(source), encoding="utf-8")
        write_records(raw, records)
        return {"songs": songs}

    return make_sample


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The suite of BR and CC on two stubbed probes, two rotations, one seed, then the same call again."""
    patch = pytest.MonkeyPatch()
    calls: list = []
    patch.setattr(nemu.sample, "PROBES", STUB_PROBES + ("linear",), raising=False)
    patch.setattr(nemu.sample, "make_sample", _stub_make_sample(calls))
    out = tmp_path_factory.mktemp("suite") / "results"
    try:
        def once():
            return probes.run_suite(["BR", "CC"], [0, 1], [0], "quick", out, probes=list(STUB_PROBES), songs=SONGS,
                                    progress=False)

        first = once()
        generated = list(calls)
        store = (out / "results.jsonl").read_bytes()
        second = once()
        yield {"out": out, "first": first, "second": second, "generated": generated, "calls": calls,
               "store": store}
    finally:
        patch.undo()


def test_table_has_models_as_rows_probes_as_columns_and_references_in_headers(suite):
    out, summary = suite["out"], suite["first"]
    assert summary["failed"] == 0 and summary["cells"] == summary["ran"] == 2 * 2 * 2  # models x probes x folds
    assert set(summary["datasets"]) == {"probe-interaction", "probe-null"}
    markdown = (out / "probe_table.md").read_text(encoding="utf-8")
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Group", "Approach", "interaction (ceiling 81.2, constant 30.4)",
                      "null (ceiling 40.1, constant 38.7)"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[1] for row in rows] == ["BR", "CC"]
    assert all(" ± " in cell for row in rows for cell in row[2:])  # two rotations: mean ± std
    assert "synthetic" in markdown and f"{SONGS} songs each" in markdown
    assert "rotations 0, 1" in markdown and "One seed per rotation (seed 0)" in markdown
    assert "Decision threshold: validation." in markdown  # the suite's rule, the one the ceilings follow
    with (out / "probe_table.csv").open(encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0][:5] == ["group", "approach", "interaction miF1(%) mean", "interaction miF1(%) std",
                            "interaction miF1(%) rotations"]
    assert table[1][:3] == ["reference", "ceiling", "81.2"] and table[2][:3] == ["reference", "constant baseline",
                                                                                   "30.4"]
    assert [row[1] for row in table[3:]] == ["BR", "CC"] and table[3][4] == "2"
    for suffix in ("png", "pdf"):
        assert (out / f"probe_figure.{suffix}").stat().st_size > 1000
    assert (out / "probe_table.tex").is_file() and not (out / "table2.md").exists()


def test_table_cells_are_seed_averaged_rotation_means(suite):
    """A cell is Table 2's number: the mean over rotations of the seeds' mean, from the store's own records."""
    out = suite["out"]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    br = sorted(r["metrics"]["micro_f1"] for r in records if r["model"] == "BR" and r["dataset"] == "probe-null")
    with (out / "probe_table.csv").open(encoding="utf-8") as handle:
        row = next(r for r in csv.reader(handle) if r[1] == "BR")
    null_mean = float(row[2 + 3])  # the null probe's mean column
    assert null_mean == pytest.approx(100 * sum(br) / len(br), abs=0.01)


def test_resuming_rebuilds_nothing_and_reruns_nothing(suite):
    assert [call[0] for call in suite["generated"]] == list(STUB_PROBES)
    assert suite["calls"] == suite["generated"]  # the second call generated no sample
    second = suite["second"]
    assert second["ran"] == 0 and second["skipped"] == second["cells"] == 8
    assert (suite["out"] / "results.jsonl").read_bytes() == suite["store"]


def test_a_changed_request_rebuilds_the_probe(suite):
    folder = suite["out"] / probes.SUITE_FOLDER / "null"
    recorded = json.loads((folder / probes.REQUEST_FILE).read_text())
    assert recorded == probes.probe_request("null", SONGS, 0)
    for changed in (probes.probe_request("null", SONGS + 1, 0), probes.probe_request("null", SONGS, 1),
                    probes.probe_request("interaction", SONGS, 0)):
        assert changed != recorded
    assert recorded["code_digest"] == probes.probe_request("null", SONGS, 0)["code_digest"]


def test_unknown_probe_is_refused_naming_the_choices(monkeypatch):
    monkeypatch.setattr(nemu.sample, "PROBES", STUB_PROBES, raising=False)
    with pytest.raises(ValueError, match=r"--probes: unknown probe\(s\) nosuch; choose from interaction, null"):
        probes.check_probes(["nosuch"])
    assert probes.check_probes(["null", "interaction"]) == ["interaction", "null"]
    monkeypatch.delattr(nemu.sample, "PROBES")
    with pytest.raises(ValueError, match="no probe generator"):
        probes.check_probes(None)


def test_the_flags_are_in_help_and_checked(capsys):
    text = benchmark.parser().format_help()
    for flag in ("--suite {probes}", "--probes A,B", "--probe-songs N"):
        assert flag in text
    assert f"default: {probes.PROBE_SONGS}" in " ".join(text.split())
    assert benchmark.PROBE_SONGS == probes.PROBE_SONGS
    assert benchmark.SUITE_THRESHOLD_RULE == probes.SUITE_THRESHOLD_RULE
    args = benchmark.parser().parse_args(["--suite", "probes", "--probe-songs", "40", "--probes", "null,linear"])
    assert (args.suite, args.probe_songs, args.probes) == ("probes", 40, ["null", "linear"])
    for bad in (["--suite", "tables"], ["--probe-songs", "5"], ["--probe-songs", "inf"]):
        with pytest.raises(SystemExit):
            benchmark.parser().parse_args(bad)
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--suite", "probes", "--data", "data/nemu"], "--data does not apply with --suite probes"),
    (["--probe-songs", "40"], "--probe-songs does not apply without --suite"),
])
def test_flags_that_do_not_apply_are_one_line_errors(argv, message, tmp_path, capsys):
    assert benchmark.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"nemu-benchmark: error: {message}"
    assert not (tmp_path / "o").exists()


def _manifest(probe: str, kept: int, generated: int = 40) -> dict:
    return {"dataset": "NEMu", "counts": {"kept": kept},
            "source": {"kind": "synthetic-sample", "generator": "nemu.sample", "seed": 0, "songs": generated,
                       "probe": probe, "ceiling": {"micro_f1": 0.9}, "constant_baseline": {"micro_f1": 0.3}}}


def _result(model: str, probe: str, fold: int, seed: int, micro_f1: float, status: str = "ok") -> dict:
    record = {"model": model, "group": "Classical" if model == "BR" else "Ours", "dataset": f"probe-{probe}",
              "fold": fold, "seed": seed, "modalities": ["lyrics"], "status": status}
    if status == "ok":
        record["metrics"] = {"micro_f1": micro_f1}
    else:
        record["reason"] = "needs what this probe lacks"
    return record


def test_cells_average_seeds_within_a_rotation_and_a_missing_model_shows_a_dash():
    manifests = {"interaction": _manifest("interaction", 30), "null": _manifest("null", 38)}
    records = [_result("BR", "interaction", 0, 0, 0.50), _result("BR", "interaction", 0, 1, 0.70),
               _result("BR", "interaction", 1, 0, 0.40), _result("BR", "interaction", 1, 1, 0.40),
               _result("HHMPN", "null", 0, 0, 0.35), _result("HHMPN", "interaction", 0, 0, 0, "not_applicable")]
    table = probes.probe_table(records, manifests)
    rows = {row[1]: row for row in table.rows}
    assert rows["BR"][2] == "50.0 ± 14.1"  # rotations 60 and 40: mean 50, sample std 14.1
    assert rows["BR"][3] == "–" and rows["HHMPN"][2] == "–" and rows["HHMPN"][3] == "35.0"
    assert "40 songs generated each; kept (with an emotion tag): interaction 30, null 38" in table.caption
    assert any(note.startswith("– HHMPN on interaction: needs what this probe lacks") for note in table.notes)


def test_the_command_hands_the_suite_its_grid(monkeypatch, tmp_path, capsys):
    """--suite probes calls the suite with the parsed grid: folds as rotations 0..N-1, the probe size, and the
    validation threshold unless --threshold says otherwise; the table it wrote is printed."""
    seen = []

    def run_suite(model_names, folds, seeds, profile, out, **kwargs):
        seen.append((model_names, folds, seeds, profile, out, kwargs))
        (out / "probe_table.md").parent.mkdir(parents=True, exist_ok=True)
        (out / "probe_table.md").write_text("THE TABLE\n", encoding="utf-8")
        return {"cells": 4, "ran": 4, "skipped": 0, "failed": 0, "tables": [out / "probe_table.md"], "figures": []}

    monkeypatch.setattr(probes, "run_suite", run_suite)
    out = tmp_path / "o"
    common = ["--suite", "probes", "--models", "BR", "--folds", "2", "--seeds", "0,1", "--out", str(out)]
    assert benchmark.main(common + ["--probes", "null", "--probe-songs", "40", "--no-progress"]) == 0
    models, folds, seeds, profile, where, kwargs = seen[-1]
    assert (models, folds, seeds, profile, where) == (["BR"], [0, 1], [0, 1], "quick", out)
    assert kwargs["probes"] == ["null"] and kwargs["songs"] == 40 and kwargs["threshold"] == "validation"
    assert "4 cells: 4 run" in capsys.readouterr().out
    assert benchmark.main(common + ["--threshold", "0.5"]) == 0
    assert seen[-1][5]["threshold"] == "0.5" and seen[-1][5]["songs"] == probes.PROBE_SONGS
    assert "THE TABLE" in capsys.readouterr().out
