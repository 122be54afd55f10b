"""Significance a reviewer accepts (issue 21): the corrected resampled t-test and Holm against hand-computed values,
a deterministic paired per-song bootstrap that finds a planted difference and none between identical predictions,
markers only where the Holm-corrected corrected test passes, and every caption naming a synthetic sample as one."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from scipy.stats import ttest_rel

from baselines.significance import (_song_counts, corrected_t_test, holm, paired_bootstrap, size_ratio,
                                    weighted_metrics)
from baselines.tables import ablation_table, table2, write_tables
from mmer.metrics import evaluate
from mmer.runner import Cell
from nemu.shards import dataset_fingerprint

LABELS = ("a", "b", "c", "d")


def test_corrected_t_test_matches_the_hand_computed_value():
    d = [0.02, 0.01, 0.03, 0.00, 0.04]
    # mean 0.02; var(ddof=1) = (0 + 1e-4 + 1e-4 + 4e-4 + 4e-4) / 4 = 2.5e-4; (1/5 + 1/8) * 2.5e-4 = 8.125e-5
    expected_t = 0.02 / math.sqrt(8.125e-5)
    assert expected_t == pytest.approx(2.218801, abs=1e-6)
    result = corrected_t_test(d, 1 / 8)
    assert result.t == pytest.approx(expected_t, rel=1e-12) and result.df == 4 and result.k == 5
    # two-sided p from the closed-form t CDF for 4 df: F(t) = 1/2 + (3/4) s - s^3 / 4, s = t / sqrt(t^2 + 4)
    s = expected_t / math.sqrt(expected_t ** 2 + 4)
    p = 2 * (1 - (0.5 + 0.5 * (1.5 * s - 0.5 * s ** 3)))
    assert p == pytest.approx(0.0907, abs=1e-4)
    assert result.p == pytest.approx(p, rel=1e-9)
    # the plain paired t-test over the same rotations calls it significant; the corrected one does not
    plain = ttest_rel(np.array(d) + 0.5, np.full(5, 0.5)).pvalue
    assert plain < 0.05 < result.p
    # no correction (ratio 0) is the plain test
    assert corrected_t_test(d, 0.0).p == pytest.approx(plain, rel=1e-9)
    assert corrected_t_test([0.01], 1 / 8) is None
    assert corrected_t_test([0.0, 0.0, 0.0], 1 / 8).p == 1.0
    assert corrected_t_test([0.01, 0.01, 0.01], 1 / 8).p == 0.0


def test_size_ratio_comes_from_the_records_sizes():
    records = [{"fold": 0, "sizes": {"train": 180, "valid": 24, "test": 20}},
               {"fold": 0, "sizes": {"train": 180, "valid": 24, "test": 20}},  # a second seed: counted once
               {"fold": 1, "sizes": {"train": 200, "valid": 20, "test": 25}}]
    assert size_ratio(records) == pytest.approx((20 / 180 + 25 / 200) / 2)
    assert size_ratio([{"fold": 0}]) == pytest.approx(1 / 8)  # no sizes: the design's 1 test fold to 8 training


def test_holm_matches_hand_computed_values():
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> kept at 0.06: step-down)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, None, 0.04])  # no test is not in the family: m = 2
    assert adjusted[1] is None and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([]) == []


def _outcome(gold: np.ndarray, predicted: np.ndarray, ids) -> dict:
    return {"ids": list(ids), "gold": ["".join(map(str, row)) for row in gold],
            "predicted": ["".join(map(str, row)) for row in predicted]}


def _records(model: str, gold: dict, predicted: dict, seeds=(0, 1, 2), **extra) -> list[dict]:
    """One record per fold and seed; ``predicted[(fold, seed)]`` the matrix of that cell."""
    out = []
    for fold, (ids, g) in gold.items():
        for seed in seeds:
            p = predicted[(fold, seed)]
            metrics = {k: v for k, v in evaluate(g, p, LABELS).items() if not isinstance(v, dict)}
            out.append({"key": Cell(model, "nemu", fold, seed).key, "model": model,
                        "group": "Ours" if model.startswith("HHMPN") else "Classical" if model == "BR"
                        else "Multi-modal", "dataset": "nemu",
                        "fold": fold, "seed": seed, "modalities": ["lyrics", "audio"], "status": "ok",
                        "metrics": metrics, "per_label_f1": {n: 0.5 for n in LABELS},
                        "sizes": {"train": 8 * len(ids), "valid": len(ids), "test": len(ids)},
                        "test_predictions": _outcome(g, p, ids)} | extra)
    return out


def _folds(n_folds: int = 5, songs: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {f: ([f"s{f}-{i}" for i in range(songs)], (rng.random((songs, len(LABELS))) < 0.35).astype(int))
            for f in range(n_folds)}


def _noisy(gold: np.ndarray, rate: float, rng) -> np.ndarray:
    return np.where(rng.random(gold.shape) < rate, 1 - gold, gold)


def test_weighted_metrics_equal_evaluate_on_songs_and_on_a_resample():
    rng = np.random.default_rng(3)
    gold = (rng.random((40, 4)) < 0.3).astype(int)
    gold[:3] = 0  # empty gold rows; with empty predictions below: the empty-union convention
    gold[:, 3] = 0  # a label with no true positive anywhere
    predicted = _noisy(gold, 0.2, rng)
    predicted[:2] = 0
    counts = _song_counts(gold, predicted, 0.0)
    draw = rng.integers(0, 40, 40)
    weights = np.stack([np.ones(40, dtype=int), np.bincount(draw, minlength=40)])
    values = weighted_metrics(counts, weights)
    for row, (g, p) in enumerate(((gold, predicted), (gold[draw], predicted[draw]))):
        expected = evaluate(g, p)
        for metric in ("accuracy", "hamming_loss", "micro_f1", "macro_f1"):
            assert values[metric][row] == pytest.approx(expected[metric], abs=1e-12), (row, metric)


def test_bootstrap_is_deterministic_finds_a_planted_difference_and_none_between_equals():
    gold = _folds()
    rng = np.random.default_rng(1)
    good = {(f, s): _noisy(g, 0.05, rng) for f, (_, g) in gold.items() for s in range(3)}
    bad = {(f, s): _noisy(g, 0.30, rng) for f, (_, g) in gold.items() for s in range(3)}
    a, b = _records("HHMPN", gold, good), _records("MulT", gold, bad)
    first = paired_bootstrap(a, b, resamples=500, seed=0)
    assert first == paired_bootstrap(a, b, resamples=500, seed=0)  # the same seed, the same numbers
    assert first["micro_f1"] != paired_bootstrap(a, b, resamples=500, seed=1)["micro_f1"]
    micro, hamming = first["micro_f1"], first["hamming_loss"]
    assert micro.songs == 150 and micro.seeds_a == micro.seeds_b == 3
    assert 0 < micro.low < micro.difference < micro.high and micro.p < 0.01
    assert hamming.high < 0 and hamming.p < 0.01  # HL: fewer errors is a negative difference
    # the pooled difference is the seed-averaged metric on all songs, model minus versus
    pooled_gold = np.concatenate([g for _, g in gold.values()])
    expected = np.mean([evaluate(pooled_gold, np.concatenate([good[(f, s)] for f in gold]))["micro_f1"]
                        - evaluate(pooled_gold, np.concatenate([bad[(f, s)] for f in gold]))["micro_f1"]
                        for s in range(3)])
    assert micro.difference == pytest.approx(expected, abs=1e-12)
    same = paired_bootstrap(a, _records("MulT", gold, good), resamples=500)
    for result in same.values():
        assert result.p == 1.0 and result.low == result.high == result.difference == 0.0
    assert paired_bootstrap(a, [dict(r, test_predictions=None) for r in b]) is None  # nothing to pair


def _metric_records(model: str, per_fold: list[float], group: str = "Multi-modal") -> list[dict]:
    """Records whose four metrics move with ``per_fold`` (one value per rotation; seeds 0-2 identical)."""
    out = []
    for fold, value in enumerate(per_fold):
        for seed in range(3):
            out.append({"key": Cell(model, "nemu", fold, seed).key, "model": model, "group": group,
                        "dataset": "nemu", "fold": fold, "seed": seed, "modalities": ["lyrics", "audio"],
                        "status": "ok", "sizes": {"train": 160, "valid": 20, "test": 20},
                        "metrics": {"accuracy": value - 0.2, "hamming_loss": 1 - value, "micro_f1": value,
                                    "macro_f1": value - 0.1, "subset_accuracy": 0.0},
                        "per_label_f1": {n: value for n in LABELS}})
    return out


def _tests(rendered) -> list[dict]:
    header, rows = rendered.extra_csv["table2_significance"]
    return [dict(zip(header, row)) for row in rows]


def test_markers_only_where_the_holm_corrected_corrected_test_passes():
    base = [0.50, 0.52, 0.49, 0.51, 0.50]
    hhmpn = _metric_records("HHMPN", base, "Ours")
    # HHMPN ahead of MulT by 0.02, 0.01, 0.03, 0.00, 0.04: plain paired t p = 0.047, corrected p = 0.091
    mult = _metric_records("MulT", [v - d for v, d in zip(base, [0.02, 0.01, 0.03, 0.00, 0.04])])
    rendered = table2(hhmpn + mult, {"nemu": "NEMu"}, resamples=50)
    row = next(r for r in rendered.rows if r[1] == "HHMPN")
    assert not any("†" in cell for cell in row)
    assert any(note.startswith("No † / ‡") for note in rendered.notes)
    tests = _tests(rendered)
    assert len(tests) == 4 and {t["family"] for t in tests} == {"markers"}
    assert all(t["corrected t p"] == pytest.approx(0.0907, abs=1e-4) for t in tests)
    assert all(t["corrected t p Holm"] == pytest.approx(min(1, 4 * 0.0907), abs=4e-4) for t in tests)
    # a raw corrected p < 0.05 that fails Holm over the family: no marker
    mult = _metric_records("MulT", [v - 0.03 + n for v, n in zip(base, [0.0, 0.01, -0.01, 0.012, -0.012])])
    m3er = _metric_records("M3ER", base)
    rendered = table2(hhmpn + mult + m3er, {"nemu": "NEMu"}, resamples=50)
    tests = [t for t in _tests(rendered) if t["versus"] == "MulT"]
    assert all(t["corrected t p"] < 0.05 <= t["corrected t p Holm"] for t in tests)
    assert not any("†" in c for c in next(r for r in rendered.rows if r[1] == "HHMPN"))
    # a clear difference: † on every metric, ‡ on none (HHMPN equals M3ER)
    mult = _metric_records("MulT", [v - 0.10 + n for v, n in zip(base, [0.0, 0.01, -0.01, 0.005, -0.005])])
    rendered = table2(hhmpn + mult + m3er, {"nemu": "NEMu"}, resamples=50)
    row = next(r for r in rendered.rows if r[1] == "HHMPN")
    assert all(cell.endswith("†") for cell in row[2:6]) and not any("‡" in cell for cell in row)
    assert any(note.startswith("† / ‡: HHMPN better than MulT / M3ER with a Holm-corrected") for note in
               rendered.notes)
    assert all(t["marker"] == "†" for t in _tests(rendered) if t["versus"] == "MulT")


def test_every_ablation_is_tested_against_full_hhmpn_with_a_bootstrap_interval():
    gold = _folds(n_folds=3)
    rng = np.random.default_rng(5)
    full = _records("HHMPN", gold, {(f, s): _noisy(g, 0.05, rng) for f, (_, g) in gold.items() for s in range(3)})
    ablated = _records("HHMPN w/o L2L", gold, {(f, s): _noisy(g, 0.25, rng) for f, (_, g) in gold.items()
                                               for s in range(3)})
    sample = {"dataset": "NEMu", "counts": {"kept": 90}, "source": {"kind": "synthetic-sample"}}
    rendered = table2(full + ablated, {"nemu": sample}, resamples=300)
    tests = [t for t in _tests(rendered) if t["family"] == "ablations"]
    assert {(t["model"], t["versus"]) for t in tests} == {("HHMPN w/o L2L", "HHMPN")}
    assert {t["metric"] for t in tests} == {"Acc(%)", "HL", "miF1(%)", "maF1(%)"}
    micro = next(t for t in tests if t["metric"] == "miF1(%)")
    assert micro["bootstrap 95% low"] < micro["pooled difference"] < micro["bootstrap 95% high"] < 0
    assert micro["bootstrap p Holm"] is not None and micro["corrected t p Holm"] is not None
    assert micro["bootstrap songs"] == 90 and micro["model seeds"] == 3
    ablations = ablation_table(rendered.tests)
    assert ablations.rows[0][:2] == ["NEMu sample (synthetic, 90 songs)", "HHMPN w/o L2L"]
    assert "[" in ablations.rows[0][4] and "synthetic" in ablations.caption


def _manifest(source: dict | None) -> dict:
    manifest = {"dataset": "NEMu", "labels": list(LABELS), "counts": {"kept": 150},
                "modalities": [{"name": "lyrics"}, {"name": "audio"}],
                "statistics": {"splits": {"train": 120, "valid": 15, "test": 15}, "one_label": 60,
                               "two_or_more_labels": 90,
                               "label_frequencies": {n: {"share": s} for n, s in zip(LABELS, (.5, .3, .2, .1))}}}
    return manifest | ({"source": source} if source else {})


def _full_grid(manifest: dict) -> list[dict]:
    gold = _folds(n_folds=3)
    rng = np.random.default_rng(2)
    records = []
    for model, rate in (("BR", 0.3), ("MulT", 0.25), ("M3ER", 0.2), ("HHMPN", 0.1), ("HHMPN w/o L2L", 0.15)):
        records += _records(model, gold, {(f, s): _noisy(g, rate, rng) for f, (_, g) in gold.items()
                                          for s in range(3)})
    for subset in (["lyrics"], ["audio"]):
        records += [r | {"modalities": subset, "key": r["key"] + "|" + subset[0]}
                    for r in _records("HHMPN", gold, {(f, 0): _noisy(g, 0.2, rng) for f, (_, g) in gold.items()},
                                      seeds=(0,))]
    fingerprint = dataset_fingerprint(manifest)
    return [r | {"dataset_fingerprint": fingerprint} for r in records]


def test_a_synthetic_sample_is_captioned_as_one_in_every_table(tmp_path):
    sample = _manifest({"kind": "synthetic-sample", "generator": "nemu.sample", "seed": 7, "songs": 150})
    written = write_tables(_full_grid(sample), {"nemu": sample}, tmp_path)
    names = {path.stem for path in written}
    assert names == {"table1", "table2", "table2_with_paper", "table2_ablations", "table3", "table4"}
    for path in written:
        text = path.read_text(encoding="utf-8")
        caption = text.split("\n", 1)[0]
        assert "NEMu sample (synthetic, 150 songs)" in caption, path.name
        assert "on NEMu." not in text and "of NEMu." not in text, path.name
        tex = path.with_suffix(".tex").read_text(encoding="utf-8")
        assert "NEMu sample (synthetic, 150 songs)" in tex.split(r"\caption{", 1)[1], path.name
    # the paper's numbers are never beside the sample's: their own columns, headed as the real NEMu's
    paper = (tmp_path / "table2_with_paper.md").read_text(encoding="utf-8")
    assert "(41.1)" not in paper and "paper, real NEMu miF1(%)" in paper and "the datasets differ" in paper
    assert "| NEMu sample (synthetic, 150 songs) miF1(%) |" in paper  # our columns are headed by the data's title
    br = next(line for line in paper.splitlines() if "| BR |" in line).split(" | ")
    assert br[-2] == "41.1"  # BR's published miF1 sits in the paper's column, apart from ours
    table1 = (tmp_path / "table1.md").read_text(encoding="utf-8")
    assert "paper (real NEMu)" in table1 and "the datasets differ" in table1
    # notes (issue 21, item 8): seeds, rotations, test folds, test size per rotation, threshold rule, the test
    notes = (tmp_path / "table2.md").read_text(encoding="utf-8")
    assert "3 seeds per rotation (0–2)" in notes and "rotations 0–2" in notes and "test folds 0–2" in notes
    assert "test songs per rotation: 30, 30, 30" in notes and "Decision threshold: fixed 0.5" in notes
    assert "Nadeau & Bengio 2003" in notes and "Holm–Bonferroni" in notes and "bootstrap" in notes
    assert "of the seed-averaged values" in notes
    table3 = (tmp_path / "table3.md").read_text(encoding="utf-8")
    assert "One seed per rotation (seed 0)" in table3 and "fewer seeds than Table 2" in table3
    rows = list(csv.DictReader(io.StringIO((tmp_path / "table2_significance.csv").read_text(encoding="utf-8"))))
    assert {(r["model"], r["versus"]) for r in rows} == {("HHMPN", "MulT"), ("HHMPN", "M3ER"),
                                                         ("HHMPN w/o L2L", "HHMPN")}
    assert all(r["corrected t p"] and r["corrected t p Holm"] and r["bootstrap p"] and r["bootstrap p Holm"]
               and r["bootstrap 95% low"] and r["dataset"] == "NEMu sample (synthetic, 150 songs)" for r in rows)


def test_a_real_build_gets_the_papers_numbers_beside_and_its_threshold_rule_named(tmp_path):
    real = _manifest({"kind": "raw-records"})
    records = [r | {"threshold_rule": "validation (per label)"} for r in _full_grid(real)]
    write_tables(records, {"nemu": real}, tmp_path)
    paper = (tmp_path / "table2_with_paper.md").read_text(encoding="utf-8")
    assert paper.startswith("**Performance of different approaches to MMER on NEMu.**")
    assert "(41.1)" in paper and "paper, real" not in paper
    assert "Decision threshold: validation (per label)" in (tmp_path / "table2.md").read_text(encoding="utf-8")
    unrecorded = _manifest(None)  # built before sources were recorded: not presented as real NEMu
    write_tables(_full_grid(unrecorded), {"nemu": unrecorded}, tmp_path)
    assert "(41.1)" not in (tmp_path / "table2_with_paper.md").read_text(encoding="utf-8")
    assert "NEMu (source not recorded)" in (tmp_path / "table2.md").read_text(encoding="utf-8")
