"""Tables an author can paste: the paper's row orders, numeric CSV, LaTeX with caption and label, ± and
significance markers only where more than one fold stands behind them; model names as users type them."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from mmer import registry
from pipelines import benchmark
from mmer.runner import Cell
from baselines.tables import PAPER_TABLE2, table2, table3, table4


def _record(model: str, fold: int, micro_f1: float, modalities=("lyrics", "audio", "comments", "images")) -> dict:
    spec = registry.models().get(model)
    return {"key": Cell(model, "nemu", fold, 0).key, "model": model, "group": spec.group if spec else "Ours",
            "dataset": "nemu", "fold": fold, "seed": 0, "modalities": list(modalities), "status": "ok",
            "metrics": {"accuracy": micro_f1 - 0.2, "hamming_loss": 1 - micro_f1, "micro_f1": micro_f1,
                        "macro_f1": micro_f1 - 0.1, "subset_accuracy": 0.0},
            "per_label_f1": {"x": micro_f1, "y": micro_f1 / 2, "z": 0.1}}


def _grid(folds: int) -> list[dict]:
    rng = np.random.default_rng(1)
    records = []
    for fold in range(folds):
        noise = rng.normal(0, 0.01)
        records += [_record("HHMPN", fold, 0.70 + noise), _record("MulT", fold, 0.50 + noise + rng.normal(0, 0.01)),
                    _record("M3ER", fold, 0.50 + noise + rng.normal(0, 0.01)), _record("BR", fold, 0.4 + noise)]
    return records


def test_one_fold_prints_no_spread_no_marker_and_no_footnote():
    rendered = table2(_grid(1), {"nemu": "NEMu"})
    text = rendered.markdown()
    assert "±" not in "".join("".join(row) for row in rendered.rows)
    assert "†" not in text and "‡" not in text  # neither marker nor the footnote explaining them
    assert "One CV rotation (fold 0)" in text
    assert "table2_significance" not in rendered.extra_csv
    stds = [row["NEMu miF1(%) std"] for row in csv.DictReader(io.StringIO(rendered.csv()))]
    assert stds == ["", "", "", ""]  # no std with one fold, not 0.0


def test_five_folds_give_spread_markers_footnote_and_p_values():
    rendered = table2(_grid(5), {"nemu": "NEMu"})
    hhmpn = next(row for row in rendered.rows if row[1] == "HHMPN")
    assert " ± " in hhmpn[4] and hhmpn[4].endswith("†‡")  # miF1 clearly above MulT and M3ER on every fold
    assert any(note.startswith("† / ‡") for note in rendered.notes)
    assert "over 5 CV rotations of the seed-averaged values (folds 0, 1, 2, 3, 4)" in rendered.notes[0]
    header, rows = rendered.extra_csv["table2_significance"]
    tests = [dict(zip(header, row)) for row in rows]
    assert {(t["metric"], t["versus"]) for t in tests} >= {("miF1(%)", "MulT"), ("miF1(%)", "M3ER")}
    assert all(t["rotations"] == 5 and 0 <= t["corrected t p"] <= t["corrected t p Holm"] <= 1 for t in tests)
    assert all(t["bootstrap p"] is None for t in tests)  # these records keep no per-song predictions


def test_markers_only_where_the_test_ran():
    # HHMPN on 3 folds, MulT on one of them only: no common pair of folds, so no † although HHMPN is better
    records = [_record("HHMPN", f, 0.8) for f in range(3)] + [_record("MulT", 0, 0.3)]
    rendered = table2(records, {"nemu": "NEMu"})
    assert not any("†" in cell for row in rendered.rows for cell in row)
    assert not any(note.startswith("† / ‡") for note in rendered.notes)
    assert "MulT: 1 fold(s) (0)" in rendered.notes[0]  # the fold count that differs is named
    # tests that ran without a significant result: no marker, and the note says so
    records = [_record("HHMPN", f, 0.5 + 0.01 * (-1) ** f) for f in range(4)] + [_record("MulT", f, 0.5)
                                                                                for f in range(4)]
    notes = table2(records, {"nemu": "NEMu"}).notes
    assert any(note.startswith("No † / ‡: HHMPN is better than neither") for note in notes)


def test_table2_rows_follow_the_paper_order():
    names = list(PAPER_TABLE2)
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    rendered = table2([_record(name, 0, 0.5) for name in shuffled], {"nemu": "NEMu"})
    assert [row[1] for row in rendered.rows] == ["BR", "CC", "LP", "LSAN", "Seq2Set", "KRF", "ML-GCN", "MLEE",
                                                 "MulT", "CIA", "M3ER", "HHMPN", "HHMPN w/o F2F", "HHMPN w/o F2L",
                                                 "HHMPN w/o L2L", "HHMPN w/o M2L"]
    # the paper's rows in its order; ECC (not in the paper) follows the paper's classical rows
    assert [name for name in registry.models() if name in registry.PAPER_ORDER] == list(registry.PAPER_ORDER)
    assert list(registry.models())[:4] == ["BR", "CC", "LP", "ECC"]
    assert list(PAPER_TABLE2) == list(registry.PAPER_ORDER)


def test_csv_has_numeric_mean_and_std_columns():
    rendered = table2(_grid(3), {"nemu": "NEMu"}, with_paper=True)
    rows = list(csv.DictReader(io.StringIO(rendered.csv())))
    hhmpn = next(r for r in rows if r["approach"] == "HHMPN")
    assert int(hhmpn["NEMu folds"]) == 3
    values = [float(hhmpn[f"NEMu {m} {part}"]) for m in ("Acc(%)", "HL", "miF1(%)", "maF1(%)")
              for part in ("mean", "std")]
    micro = np.mean([r["metrics"]["micro_f1"] for r in _grid(3) if r["model"] == "HHMPN"])
    assert values[4] == pytest.approx(100 * micro, abs=0.01)  # percent, unrounded to the display's 1 digit
    assert 0 < values[2] < 1  # HL stays a fraction
    assert float(hhmpn["NEMu miF1(%) paper"]) == 46.1
    assert all("±" not in value and "**" not in value for row in rows for value in row.values())


def test_latex_is_a_table_with_caption_and_label():
    tex = table2(_grid(2), {"nemu": {"dataset": "NEMu", "source": {"kind": "raw-records"}}}).latex()
    assert tex.count(r"\begin{table}") == 1 and tex.rstrip().endswith(r"\end{table}")
    assert r"\caption{Performance of different approaches to MMER on NEMu." in tex
    assert r"\label{tab:table2}" in tex and r"\multicolumn{4}{c}{NEMu}" in tex
    assert r"$\pm$" in tex and "±" not in tex and "%" not in tex.replace(r"\%", "").split("\n", 1)[1]
    assert r"\textbf{" in tex and "**" not in tex
    assert "\nMulti-modal & MulT & " in tex and "\n & M3ER & " in tex  # a group named once, where it starts
    assert r"\label{tab:table3}" in table3([_record("HHMPN", 0, 0.5, ("lyrics",))], "nemu").latex()


def test_table3_rows_follow_the_paper_order():
    import itertools

    names = ["images", "comments", "audio", "lyrics"]  # any manifest order
    records = [_record("HHMPN", 0, 0.5, names)]
    for size in (1, 2, 3):
        records += [_record("HHMPN", 0, 0.5, subset) for subset in itertools.combinations(names, size)]
    rendered = table3(records, "nemu")
    assert [row[0] for row in rendered.rows] == ["L-A-C", "L-A-V", "L-C-V", "A-C-V", "L-A", "L-C", "L-V", "A-C",
                                                 "A-V", "C-V", "L", "A", "C", "V"]  # the paper's Table 3


def test_table3_gives_mean_and_std_over_rotations():
    records = [_record("HHMPN", f, 0.5 + 0.1 * f, ("lyrics",)) for f in range(3)]
    records += [_record("HHMPN", f, 0.5, ("lyrics", "audio")) for f in range(3)]
    records += [_record("HHMPN", f, 0.5) for f in range(3)]  # all four modalities: Table 2's row
    rendered = table3(records, "nemu")
    assert rendered.rows[1][0] == "L" and rendered.rows[1][3] == "60.0 ± 10.0"
    row = next(r for r in csv.DictReader(io.StringIO(rendered.csv())) if r["modalities"] == "L")
    assert float(row["miF1(%) std"]) == pytest.approx(10.0) and row["folds"] == "3"


def test_table4_is_the_papers_two_blocks_most_frequent_first():
    records = [_record("HHMPN", f, 0.6) for f in range(2)]
    rendered = table4(records, "nemu", {"x": 0.5, "y": 0.3, "z": 0.1}, k=1)
    assert rendered.header == ["Most Emotions", "% of Samples", "Micro F1(%)"]
    assert [row[0] for row in rendered.rows] == ["x", "**Fewest Emotions**", "z"]
    assert rendered.rows[0][2] == "60.0 ± 0.0"
    rows = list(csv.DictReader(io.StringIO(rendered.csv())))
    assert [(r["block"], r["emotion"], float(r["F1(%) mean"])) for r in rows] == [("Most", "x", 60.0),
                                                                                  ("Fewest", "z", 10.0)]


@pytest.mark.parametrize("typed, registered", [("mlgcn", "ML-GCN"), ("ML-GCN", "ML-GCN"), ("ml_gcn", "ML-GCN"),
                                               ("mult", "MulT"), ("MULT", "MulT"), ("seq2set", "Seq2Set"),
                                               ("hhmpn-no-f2f", "HHMPN w/o F2F"), ("HHMPN w/o F2F", "HHMPN w/o F2F"),
                                               ("hhmpn without l2l", "HHMPN w/o L2L"), ("m3er", "M3ER")])
def test_model_names_match_ignoring_case_and_punctuation(typed, registered):
    assert registry.resolve(typed) == registered
    assert registry.get(typed).name == registered


def test_a_typo_gets_a_suggestion(capsys):
    with pytest.raises(registry.UnknownModelError, match=r"unknown model 'mlgnc' \(did you mean 'ML-GCN'\?\)"):
        registry.resolve("mlgnc")
    assert registry.resolve_names("br, BR,hhmpn") == ["BR", "HHMPN"]
    assert benchmark.main(["--models", "BR,Seq2Sat", "--no-progress"]) == 2
    assert "did you mean 'Seq2Set'?" in capsys.readouterr().err


def test_after_the_paper_rows_follow_the_paper_groups_with_their_own_papers_numbers(monkeypatch):
    from baselines import tables

    monkeypatch.setitem(tables.LATER_PAPERS_TABLE2, "TAILOR",
                        {"source": "Zhang et al., AAAI 2022, aligned CMU-MOSEI", "MOSEI": (50.0, 0.2, 55.0, None)})
    records = _grid(2) + [_record("TAILOR", fold, 0.6) for fold in range(2)]
    for r in records:
        r["dataset"] = "mosei"
    rendered = table2(records, {"mosei": "MOSEI"}, with_paper=True)
    assert [row[1] for row in rendered.rows][-1] == "TAILOR" and rendered.rows[-1][0] == "After the paper"
    tailor = rendered.rows[-1]
    # beside ours, in parentheses (a bare dataset name counts as the real one), marked as its own paper's
    assert [cell.split(" (")[1] for cell in tailor[-4:]] == ["50.0§)", "0.200§)", "55.0§)", "–)"]
    assert any(note.startswith("§: the row's own paper's") and "Zhang et al., AAAI 2022" in note
               for note in rendered.notes)
    hhmpn = next(row for row in rendered.rows if row[1] == "HHMPN")
    assert "§" not in "".join(hhmpn)  # the seed paper's numbers carry no mark
