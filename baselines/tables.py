"""Tables 1-4 of the paper from the results store and the dataset manifests (markdown, CSV, LaTeX).

Numbers are the mean over CV rotations of the seed-averaged values (each cell's seeds are averaged within a
rotation first), with the sample standard deviation over rotations ("± std") only where a cell has two or more
rotations: one gives a single number. Every caption names its data with ``nemu.provenance.dataset_title``: a
synthetic sample is "NEMu sample (synthetic, N songs)", never NEMu; the paper's numbers stand in parentheses
beside a real build only (``is_real``), and in their own columns, headed as the paper's on the real dataset with
a note that the datasets differ, beside anything else (``table2_with_paper``).
Significance (``baselines.significance``): HHMPN against MulT (†) and M3ER (‡), and every ablation against full
HHMPN, on every metric, by the corrected resampled t-test over rotations (Nadeau & Bengio 2003) and a paired
per-song bootstrap of the pooled test predictions, Holm–Bonferroni over each family. A marker means the
Holm-corrected corrected-t p < 0.05 with HHMPN the better. A test needs two common rotations: with fewer, none runs,
no marker is printed and the notes say nothing of significance. ``table2_significance.csv`` holds every
comparison; ``table2_ablations`` the ablations' bootstrap intervals. Every table's notes say the seeds, the
rotations and their test folds, the test songs per rotation and the decision threshold rule.
A model with no result is absent; a model that cannot run on a dataset (MLEE without dominant-emotion
annotations) shows "–". Rows follow the paper: Table 2 in its order (``mmer.registry.PAPER_ORDER``),
Table 3 from three modalities down to one in the order L, A, C, V, Table 4 the paper's two blocks.

Every table is written as markdown (display), CSV (numbers only: mean and std in their own columns, in the
displayed unit) and LaTeX (a ``table`` with caption and label, booktabs rules). ``write_tables`` tabulates
only records of the current builds (their ``dataset_fingerprint`` equals the manifest's).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from baselines.classical import ECC_CHAINS, ECC_QUICK_CHAINS
from baselines.significance import (ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_TEST, CORRECTED_T_TEST, CORRECTION,
                                    corrected_t_test, holm, paired_bootstrap, size_ratio)
from mmer.metrics import DEFAULT_THRESHOLD
from mmer.registry import GROUPS, models
from nemu.provenance import dataset_title, is_real
from nemu.shards import dataset_fingerprint
from nemu.splits import cv_rotation
from nemu.statistics import PAPER_TABLE1

METRICS = ("accuracy", "hamming_loss", "micro_f1", "macro_f1")
HEADERS = {"accuracy": "Acc(%)", "hamming_loss": "HL", "micro_f1": "miF1(%)", "macro_f1": "maF1(%)"}
LOWER_IS_BETTER = {"hamming_loss"}
SIGNIFICANCE = (("MulT", "†"), ("M3ER", "‡"))
OURS = "HHMPN"
#: Table 2 cells average at least this many seeds by default (``pipelines.benchmark --seeds 0,1,2``).
TABLE2_MIN_SEEDS = 3
TABLE3_RULE = ("Table 3 runs fewer seeds than Table 2 by default (the first of --seeds; --table3-seeds to change) "
               "so that make demo fits in 15 minutes on 2 cores; its rows are for reading across subsets, not for "
               "significance.")

# Table 2 of Zhang et al. (AAAI 2021): (Acc %, HL, miF1 %, maF1 %); None where the paper has "-".
PAPER_TABLE2 = {
    "BR": {"MOSEI": (22.2, 0.371, 38.6, 34.7), "NEMu": (23.0, 0.457, 41.1, 40.5)},
    "CC": {"MOSEI": (22.5, 0.377, 38.6, 34.1), "NEMu": (23.5, 0.465, 41.7, 41.1)},
    "LP": {"MOSEI": (15.9, 0.426, 28.6, 28.8), "NEMu": (21.1, 0.414, 37.2, 35.0)},
    "LSAN": {"MOSEI": (39.3, 0.209, 50.1, 32.3), "NEMu": (19.5, 0.332, 39.7, 35.7)},
    "Seq2Set": {"MOSEI": (45.7, 0.231, 53.8, 34.0), "NEMu": (24.8, 0.424, 42.1, 39.7)},
    "KRF": {"MOSEI": (45.3, 0.226, 51.5, 29.0), "NEMu": (23.1, 0.496, 42.0, 39.7)},
    "ML-GCN": {"MOSEI": (41.1, 0.207, 50.9, 29.7), "NEMu": (15.8, 0.293, 34.4, 27.8)},
    "MLEE": {"MOSEI": (43.7, 0.211, 52.8, 38.6), "NEMu": None},
    "MulT": {"MOSEI": (44.5, 0.190, 53.1, 34.4), "NEMu": (17.9, 0.293, 42.6, 39.0)},
    "CIA": {"MOSEI": (42.9, 0.214, 45.5, 11.7), "NEMu": (11.1, 0.336, 29.6, 34.0)},
    "M3ER": {"MOSEI": (40.9, 0.195, 51.9, 34.9), "NEMu": (19.4, 0.281, 40.6, 36.4)},
    "HHMPN": {"MOSEI": (45.9, 0.189, 55.6, 43.0), "NEMu": (24.9, 0.270, 46.1, 43.5)},
    "HHMPN w/o F2F": {"MOSEI": (41.1, 0.190, 52.2, 33.6), "NEMu": (22.3, 0.341, 43.1, 39.5)},
    "HHMPN w/o F2L": {"MOSEI": (44.8, 0.204, 53.5, 35.4), "NEMu": (23.7, 0.370, 43.8, 41.8)},
    "HHMPN w/o L2L": {"MOSEI": (41.9, 0.323, 53.5, 35.7), "NEMu": (19.6, 0.326, 42.4, 39.5)},
    "HHMPN w/o M2L": {"MOSEI": (44.0, 0.232, 54.3, 40.2), "NEMu": (24.6, 0.359, 45.4, 43.1)},
}

#: The published aligned CMU-MOSEI numbers of the models of the group "After the paper", from their OWN papers (not
#: Zhang et al. 2021): (Acc %, HL, miF1 %, maF1 %), None for a metric the paper does not give; "MOSEI": None while
#: the numbers are not entered. Shown where ``PAPER_TABLE2``'s are, marked with ``LATER_PAPER_MARK``.
LATER_PAPERS_TABLE2 = {
    # To fill from Zhang, Chen, Shen, Wang (AAAI 2022), the aligned CMU-MOSEI table (not retrievable offline).
    "TAILOR": {"source": "Zhang et al., AAAI 2022, aligned CMU-MOSEI", "MOSEI": None},
    # To fill from Peng, Chen, Shou, Chen (AAAI 2024), Table 1, aligned CMU-MOSEI (the CARAT helper reports them).
    "CARAT": {"source": "Peng et al., AAAI 2024, aligned CMU-MOSEI", "MOSEI": None},
}
LATER_PAPER_MARK = "§"


def published(name: str, dataset: str) -> tuple[tuple | None, bool]:
    """The published (Acc %, HL, miF1 %, maF1 %) of ``name`` on ``dataset`` ("MOSEI", "NEMu"), or None; and whether
    it is the model's own later paper's (``LATER_PAPERS_TABLE2``) rather than Zhang et al. 2021's."""
    if name in LATER_PAPERS_TABLE2:
        return LATER_PAPERS_TABLE2[name].get(dataset), True
    return (PAPER_TABLE2.get(name) or {}).get(dataset), False


def _published_cell(metric: str, paper: tuple | None, later: bool) -> str:
    value = paper[METRICS.index(metric)] if paper else None
    if value is None:
        return "–"
    return _format(metric, value, scale=False) + (LATER_PAPER_MARK if later else "")


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float | None  # None with a single fold
    per_fold: dict[int, float]

    @property
    def folds(self) -> int:
        return len(self.per_fold)


def _fold_means(records: Sequence[dict], metric: str) -> dict[int, float]:
    by_fold: dict[int, list[float]] = defaultdict(list)
    for record in records:
        by_fold[record["fold"]].append(record["metrics"][metric])
    return {fold: float(np.mean(values)) for fold, values in sorted(by_fold.items())}


def summarise(records: Sequence[dict], metric: str) -> Summary:
    per_fold = _fold_means(records, metric)
    values = np.array(list(per_fold.values()))
    return Summary(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None, per_fold)


def _better(metric: str, ours: float, theirs: float) -> bool:
    return ours < theirs if metric in LOWER_IS_BETTER else ours > theirs


def _scale(metric: str, scale: bool = True) -> float:
    return 1.0 if metric in LOWER_IS_BETTER or not scale else 100.0


def _number(metric: str, value: float | None, scale: bool = True) -> float | None:
    """A value in the displayed unit (percent, or HL as is), rounded as displayed plus one digit."""
    if value is None:
        return None
    return round(value * _scale(metric, scale), 4 if metric in LOWER_IS_BETTER else 2)


def _format(metric: str, value: float, std: float | None = None, scale: bool = True) -> str:
    """``mean`` or ``mean ± std`` (std None: one fold, no spread to show)."""
    digits = 3 if metric in LOWER_IS_BETTER else 1
    factor = _scale(metric, scale)
    text = f"{value * factor:.{digits}f}"
    return text if std is None else f"{text} ± {std * factor:.{digits}f}"


def _index(records: Sequence[dict]):
    """(model, dataset, modalities key) -> ok records; and (model, dataset) -> not-applicable reason."""
    ok: dict[tuple, list[dict]] = defaultdict(list)
    not_applicable: dict[tuple, str] = {}
    for record in records:
        subset = "+".join(record["modalities"])
        if record.get("status") == "ok":
            ok[(record["model"], record["dataset"], subset)].append(record)
        elif record.get("status") == "not_applicable":
            not_applicable[(record["model"], record["dataset"])] = record["reason"]
    return ok, not_applicable


def _folds_note(counts: dict[str, list[int]], values: str = "") -> str:
    """How many folds stand behind the numbers: one sentence, naming the models whose count differs."""
    if not counts:
        return "No results."
    sets = [tuple(v) for v in counts.values()]
    common = max(set(sets), key=lambda f: (sets.count(f), len(f), f))  # the most usual; ties: the most folds
    text = (f"Mean ± sample std over {len(common)} CV rotations{values} (folds {', '.join(map(str, common))})"
            if len(common) > 1 else f"One CV rotation (fold {common[0]}): a single number per cell, no spread "
                                    f"and no significance test")
    others = {name: folds for name, folds in counts.items() if tuple(folds) != common}
    if others:
        text += "; " + "; ".join(f"{name}: {len(f)} fold(s) ({', '.join(map(str, f))})"
                                 for name, f in others.items())
    return text + "."


@dataclass
class RenderedTable:
    """A table in three forms: ``rows`` for display (markdown/LaTeX), ``csv_rows`` numbers for analysis."""

    name: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]
    caption: str = ""
    csv_header: list[str] = field(default_factory=list)
    csv_rows: list[list] = field(default_factory=list)
    column_groups: list[tuple[str, int]] = field(default_factory=list)  # LaTeX top header: (title, span)
    latex_header: list[str] | None = None  # second-level LaTeX header (defaults to ``header``)
    rules_before: set[int] = field(default_factory=set)  # row indices preceded by \midrule in LaTeX
    label: str = ""
    extra_csv: dict[str, tuple[list[str], list[list]]] = field(default_factory=dict)  # name -> (header, rows)
    tests: list[dict] = field(default_factory=list)  # Table 2: its comparisons (baselines.tables.significance)
    text_columns: int = 2  # leading left-aligned columns in LaTeX; the rest are numbers, right-aligned
    merge_first_column: bool = False  # LaTeX: a first-column value (Table 2's group) only where it changes

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        text = "\n".join(lines) + "\n"
        if self.caption:
            text = f"**{self.caption}**\n\n" + text
        return text + ("\n" + "\n".join(self.notes) + "\n" if self.notes else "")

    @staticmethod
    def _csv_text(header: list[str], rows: list[list]) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if value is None else value for value in row] for row in rows])
        return buffer.getvalue()

    def csv(self) -> str:
        if self.csv_header:
            return self._csv_text(self.csv_header, self.csv_rows)
        return self._csv_text(self.header, [[cell.replace("**", "") for cell in row] for row in self.rows])

    @staticmethod
    def tex(cell: str) -> str:
        cell = cell.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("#", r"\#")
        cell = cell.replace("±", r"$\pm$").replace("%", r"\%").replace("†‡", r"$^{\dagger\ddagger}$")
        cell = cell.replace("†", r"$^\dagger$")
        cell = cell.replace("‡", r"$^\ddagger$").replace("–", "--").replace("_", r"\_").replace("→", r"$\to$")
        while cell.count("**") >= 2:
            start = cell.index("**")
            end = cell.index("**", start + 2)
            cell = cell[:start] + r"\textbf{" + cell[start + 2:end] + "}" + cell[end + 2:]
        return cell

    def latex(self) -> str:
        columns = len(self.header)
        lead = columns - sum(span for _, span in self.column_groups)
        lines = ["% needs \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
                 r"\begin{tabular}{" + "l" * min(self.text_columns, columns)
                 + "r" * max(columns - self.text_columns, 0) + "}", r"\toprule"]
        if self.column_groups:
            cells, rules, position = [""] * lead, [], lead + 1
            for title, span in self.column_groups:
                cells.append(rf"\multicolumn{{{span}}}{{c}}{{{self.tex(title)}}}")
                rules.append(rf"\cmidrule(lr){{{position}-{position + span - 1}}}")
                position += span
            lines += [" & ".join(cells) + r" \\", " ".join(rules)]
        lines += [" & ".join(self.tex(h) for h in (self.latex_header or self.header)) + r" \\", r"\midrule"]
        for index, row in enumerate(self.rows):
            if index in self.rules_before:
                lines.append(r"\midrule")
            if self.merge_first_column and index and row[0] == self.rows[index - 1][0]:
                row = [""] + row[1:]
            lines.append(" & ".join(self.tex(c) for c in row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        caption = " ".join([self.caption] + self.notes).strip()
        lines += [rf"\caption{{{self.tex(caption)}}}", rf"\label{{{self.label or 'tab:' + self.name}}}",
                  r"\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{self.name}.md").write_text(self.markdown(), encoding="utf-8")
        (out_dir / f"{self.name}.csv").write_text(self.csv(), encoding="utf-8")
        (out_dir / f"{self.name}.tex").write_text(self.latex(), encoding="utf-8")
        for name, (header, rows) in self.extra_csv.items():
            (out_dir / f"{name}.csv").write_text(self._csv_text(header, rows), encoding="utf-8")


def _ordered(names: list[str], groups: dict[str, str]) -> list[str]:
    """The paper's order: the registry's order (group, then PAPER_ORDER); unregistered models last in their group."""
    position = {name: i for i, name in enumerate(models())}
    return sorted(names, key=lambda n: (GROUPS.index(groups[n]) if groups[n] in GROUPS else len(GROUPS),
                                        position.get(n, len(position)), n))


def full_modalities(records: Sequence[dict], dataset: str) -> list[str]:
    subsets = [r["modalities"] for r in records if r["dataset"] == dataset and r.get("status") == "ok"]
    return max(subsets, key=len) if subsets else []


def chain_note(summaries: Mapping, present: Sequence[str], dataset: str, described) -> str | None:
    """The note explaining a CC row that reads exactly as BR's on ``dataset`` (every metric's mean ± std as
    printed), which a reader would otherwise take for a bug; None when the rows differ or either is absent."""
    cells = {name: [_format(m, summaries[(name, dataset, m)].mean, summaries[(name, dataset, m)].std)
                    for m in METRICS if (name, dataset, m) in summaries] for name in ("CC", "BR") if name in present}
    if len(cells) < 2 or len(cells["CC"]) != len(METRICS) or cells["CC"] != cells["BR"]:
        return None
    modalities = described.get("modalities") if isinstance(described, Mapping) else None
    columns = (f"{sum(int(m['dim']) + 1 for m in modalities):,} " if modalities else "")  # mean + has_nodes
    ensemble = ("ECC" if "ECC" in present else "ECC (--models ECC)")
    return (f"CC equals BR on {_describe(described)[1]}, and this is not a bug: the chain hands each earlier label "
            f"to the next classifier as one 0/1 column beside the {columns}standardised pooled feature columns, and "
            f"at the small C chosen on validation the L2 penalty spreads the classifier's weight over every column, "
            f"leaving that one too little to move a decision: the chain decides as BR does. {ensemble}, Read et al.'s ensemble "
            f"of chains ({ECC_CHAINS} in the paper profile, {ECC_QUICK_CHAINS} in quick) in random label orders on "
            f"bootstrap samples with their "
            f"probabilities averaged, is the chained model that can differ.")


def _describe(value) -> tuple[str, str, bool]:
    """(dataset name, caption title, real?) of a manifest, or of a bare dataset name (no source recorded: not
    real, titled "NAME (source not recorded)")."""
    manifest = value if isinstance(value, Mapping) else {"dataset": str(value)}
    return str(manifest.get("dataset", "dataset")), dataset_title(manifest), is_real(manifest)


def _listing(values) -> str:
    values = sorted(values)
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}–{values[-1]}"
    return ", ".join(map(str, values))


def _seeds_note(records: Sequence[dict]) -> str:
    """Seeds per cell: the usual set, and the models whose set differs."""
    by_model: dict[str, set] = defaultdict(set)
    for record in records:
        by_model[record["model"]].add(record["seed"])
    if not by_model:
        return ""
    sets = [tuple(sorted(s)) for s in by_model.values()]
    common = max(set(sets), key=lambda s: (sets.count(s), len(s), s))
    text = (f"{len(common)} seeds per rotation ({_listing(common)}), averaged within the rotation first"
            if len(common) > 1 else f"one seed per rotation (seed {common[0]})")
    others = {m: tuple(sorted(s)) for m, s in by_model.items() if tuple(sorted(s)) != common}
    if others:
        text += "; " + "; ".join(f"{m}: seed(s) {_listing(s)}" for m, s in others.items())
    return text


def protocol_note(records: Sequence[dict], title: str) -> str:
    """Item 8 of issue 21: seeds, rotations and their test folds, test size per rotation, the threshold rule."""
    if not records:
        return ""
    folds = sorted({r["fold"] for r in records})
    test_folds = sorted({f for k in folds for f in cv_rotation(k)["test"]})
    sizes = {}
    for record in sorted(records, key=lambda r: r["fold"]):
        size = (record.get("sizes") or {}).get("test")
        if size is not None:
            sizes.setdefault(record["fold"], size)
    rules = sorted({str(r.get("threshold_rule") or f"fixed {DEFAULT_THRESHOLD:g}") for r in records})
    seeds = _seeds_note(records)
    text = (f"Data: {title}. {seeds[:1].upper() + seeds[1:]}; rotations "
            f"{_listing(folds)} (rotation k tests on fold k: test folds {_listing(test_folds)}, validation on "
            f"fold k+1, training on the other 8 of 10)")
    if sizes:
        text += "; test songs per rotation: " + ", ".join(str(sizes[f]) for f in folds if f in sizes)
    text += f". Decision threshold: {' / '.join(rules)}."
    return text


def _comparisons(names: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(family, model, versus, marker) of every comparison Table 2 makes among ``names``: HHMPN against MulT and
    M3ER (the markers) and every ablation against full HHMPN."""
    if OURS not in names:
        return []
    pairs = [("markers", OURS, other, mark) for other, mark in SIGNIFICANCE if other in names]
    pairs += [("ablations", name, OURS, "") for name in names if name.startswith(OURS + " w/o ")]
    return pairs


def significance(ok: Mapping[tuple, list[dict]], full: Mapping[str, str], titles: Mapping[str, str],
                 names: Sequence[str], *, resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict]:
    """Every comparison of Table 2 on every dataset and metric, both tests, Holm-corrected per family.

    Families (Holm–Bonferroni over each, across the table's datasets and metrics): "markers", HHMPN against MulT
    and M3ER (up to 8 comparisons per dataset), and "ablations", each ablation against full HHMPN (up to 16).
    Differences are model minus versus; a row with ``marker`` set is where the table prints it."""
    rows = []
    for dataset, title in titles.items():
        for family, model, versus, mark in _comparisons(names):
            a, b = ok.get((model, dataset, full[dataset])), ok.get((versus, dataset, full[dataset]))
            if not a or not b:
                continue
            common = sorted({r["fold"] for r in a} & {r["fold"] for r in b})
            if len(common) < 2:
                continue  # no test over rotations with fewer than two shared ones
            ratio = size_ratio([r for r in a + b if r["fold"] in common])
            boot = paired_bootstrap(a, b, METRICS, resamples=resamples) or {}
            for metric in METRICS:
                sa, sb = summarise(a, metric), summarise(b, metric)
                d = [sa.per_fold[f] - sb.per_fold[f] for f in common]
                test = corrected_t_test(d, ratio)
                rows.append({"key": dataset, "dataset": title, "family": family, "model": model, "versus": versus,
                             "metric": metric, "mark": mark, "rotations": len(common),
                             "seeds": len({r["seed"] for r in a}), "versus seeds": len({r["seed"] for r in b}),
                             "model mean": float(np.mean([sa.per_fold[f] for f in common])),
                             "versus mean": float(np.mean([sb.per_fold[f] for f in common])),
                             "test": test, "bootstrap": boot.get(metric),
                             "better": _better(metric, float(np.mean(d)), 0.0)})
    for family in ("markers", "ablations"):
        members = [row for row in rows if row["family"] == family]
        for key, holm_key in (("t p", "t p holm"), ("bootstrap p", "bootstrap p holm")):
            raw = [(row["test"].p if key == "t p" else row["bootstrap"].p if row["bootstrap"] else None)
                   for row in members]
            for row, p, adjusted in zip(members, raw, holm(raw)):
                row[key], row[holm_key] = p, adjusted
    for row in rows:
        row["marker"] = (row["mark"] if row["family"] == "markers" and row["better"] and row["t p holm"] is not None
                         and row["t p holm"] < ALPHA else "")
    return rows


SIGNIFICANCE_HEADER = ["dataset", "family", "model", "versus", "metric", "rotations", "model seeds",
                       "versus seeds", "model mean", "versus mean", "mean difference", "t", "df",
                       "n_test/n_train", "corrected t p", "corrected t p Holm", "pooled difference",
                       "bootstrap 95% low", "bootstrap 95% high", "bootstrap p", "bootstrap p Holm",
                       "bootstrap songs", "bootstrap resamples", "model better", "marker"]


def _round(value: float | None, digits: int = 6):
    return None if value is None else round(float(value), digits)


def significance_csv_rows(rows: Sequence[dict]) -> list[list]:
    """One CSV row per comparison (``SIGNIFICANCE_HEADER``); means and differences in the displayed unit."""
    out = []
    for row in rows:
        m, test, boot = row["metric"], row["test"], row["bootstrap"]
        out.append([row["dataset"], row["family"], row["model"], row["versus"], HEADERS[m], row["rotations"],
                    row["seeds"], row["versus seeds"], _number(m, row["model mean"]), _number(m, row["versus mean"]),
                    _number(m, test.mean_difference), _round(test.t, 4), test.df, _round(test.ratio, 4),
                    _round(row["t p"]), _round(row["t p holm"]),
                    _number(m, boot.difference) if boot else None, _number(m, boot.low) if boot else None,
                    _number(m, boot.high) if boot else None, _round(row["bootstrap p"]),
                    _round(row["bootstrap p holm"]), boot.songs if boot else None,
                    boot.resamples if boot else None, row["better"], row["marker"]])
    return out


def _test_note(rows: Sequence[dict], resamples: int) -> str:
    return (f"Tests: the {CORRECTED_T_TEST} on the seed-averaged per-rotation differences (df = rotations - 1, "
            f"n_test/n_train from the rotations' split sizes), and a {BOOTSTRAP_TEST} ({resamples:,} resamples of "
            f"songs, seeds averaged, 95% percentile interval); {CORRECTION} over each family of comparisons "
            f"(HHMPN vs MulT and M3ER; each ablation vs HHMPN), across datasets and metrics. Every p-value, raw "
            f"and corrected, and every interval is in table2_significance.csv.")


def table2(records: Sequence[dict], datasets: Mapping[str, str | Mapping], with_paper: bool = False, *,
           resamples: int = BOOTSTRAP_RESAMPLES) -> RenderedTable:
    """Table 2: every model with a result, in the paper's order.

    ``datasets`` maps a dataset key to its manifest (or to a bare name, which records no source). Captions and
    column groups name each dataset with ``nemu.provenance.dataset_title``. ``with_paper``: the paper's published
    numbers, in parentheses beside ours for a real build (``is_real``); for any other data in their own columns
    headed as the paper's on the real dataset, with a note that the datasets differ."""
    described = {key: _describe(value) for key, value in datasets.items()}
    names_of = {key: d[0] for key, d in described.items()}
    ok, not_applicable = _index(records)
    full = {key: "+".join(full_modalities(records, key)) for key in datasets}
    groups = {r["model"]: r.get("group", "Ours") for r in records}
    present = _ordered([name for name in groups if any((name, d, full[d]) in ok or (name, d) in not_applicable
                                                       for d in datasets)], groups)
    summaries = {(name, d, m): summarise(ok[(name, d, full[d])], m)
                 for name in present for d in datasets for m in METRICS if (name, d, full[d]) in ok}
    tests = significance(ok, full, {key: d[1] for key, d in described.items()}, present, resamples=resamples)
    markers: dict[tuple, str] = defaultdict(str)
    for t in tests:
        markers[(t["key"], t["metric"])] += t["marker"]
    best = {}
    for d in datasets:
        for m in METRICS:
            values = [summaries[(n, d, m)].mean for n in present if (n, d, m) in summaries]
            if values:
                best[(d, m)] = min(values) if m in LOWER_IS_BETTER else max(values)
    beside = {d: with_paper and described[d][2] for d in datasets}  # paper numbers in parentheses
    apart = {d: with_paper and not described[d][2] for d in datasets}  # in their own columns
    header, latex_header, column_groups = ["Group", "Approach"], ["Group", "Approach"], []
    for d, (name, title, _) in described.items():
        header += [f"{title} {HEADERS[m]}" for m in METRICS]
        latex_header += [HEADERS[m] for m in METRICS]
        column_groups.append((title, len(METRICS)))
        if apart[d]:
            header += [f"paper, real {name} {HEADERS[m]}" for m in METRICS]
            latex_header += [HEADERS[m] for m in METRICS]
            column_groups.append((f"Paper, real {name}", len(METRICS)))
    csv_header = ["group", "approach"]
    for name in names_of.values():
        csv_header.append(f"{name} folds")
        csv_header += [f"{name} {HEADERS[m]} {part}" for m in METRICS for part in ("mean", "std")]
        if with_paper:
            csv_header += [f"{name} {HEADERS[m]} paper" for m in METRICS]
    rows, csv_rows, rules = [], [], set()
    for name in present:
        if rows and groups[name] != groups[present[len(rows) - 1]]:
            rules.add(len(rows))
        row, csv_row = [groups[name], name], [groups[name], name]
        for d, paper_name in names_of.items():
            csv_row.append(summaries[(name, d, METRICS[0])].folds if (name, d, METRICS[0]) in summaries else None)
            paper, later = published(name, paper_name)
            for m in METRICS:
                if (name, d, m) not in summaries:
                    row.append("–")
                    csv_row += [None, None]
                    continue
                s = summaries[(name, d, m)]
                cell = _format(m, s.mean, s.std)
                if np.isclose(s.mean, best[(d, m)]):
                    cell = f"**{cell}**"
                if name == OURS:
                    cell += markers[(d, m)]
                if beside[d]:
                    cell += f" ({_published_cell(m, paper, later)})"
                row.append(cell)
                csv_row += [_number(m, s.mean), _number(m, s.std)]
            if apart[d]:
                row += [_published_cell(m, paper, later) for m in METRICS]
            if with_paper:
                csv_row += [paper[METRICS.index(m)] if paper else None for m in METRICS]
        rows.append(row)
        csv_rows.append(csv_row)
    counts = {name: sorted({fold for (n, d, m), s in summaries.items() if n == name for fold in s.per_fold})
              for name in present if any(n == name for n, _, _ in summaries)}
    used = [r for key, rs in ok.items() if key[1] in datasets and key[2] == full[key[1]] and key[0] in present
            for r in rs]
    notes = [_folds_note(counts, " of the seed-averaged values") + " Best per column in bold."]
    notes += [protocol_note([r for r in used if r["dataset"] == d], described[d][1]) for d in datasets]
    markers_family = [t for t in tests if t["family"] == "markers"]
    if any(t["marker"] for t in markers_family):
        notes.append("† / ‡: HHMPN better than MulT / M3ER with a Holm-corrected p < 0.05 of the corrected "
                     "resampled t-test.")
    elif markers_family:
        notes.append("No † / ‡: HHMPN is better than neither MulT nor M3ER on any metric with a Holm-corrected "
                     "p < 0.05 of the corrected resampled t-test.")
    if tests:
        notes.append(_test_note(tests, resamples))
    notes.append("HL: lower is better. Acc is the per-sample Jaccard index (multi-label accuracy), not subset "
                 "accuracy.")
    notes += [f"– {name} on {described[d][1]}: {reason}" for (name, d), reason in sorted(not_applicable.items())
              if d in datasets]
    notes += [note for d in datasets if (note := chain_note(summaries, present, d, datasets[d]))]
    if any(beside.values()):
        notes.append("In parentheses: the paper's published number (Zhang et al., AAAI 2021, Table 2) on the same "
                     "dataset.")
    for d in datasets:
        if apart[d]:
            name, title, _ = described[d]
            notes.append(f"Columns 'paper, real {name}': the paper's published numbers (Zhang et al., AAAI 2021, "
                         f"Table 2) on the real {name}, not on {title}: the datasets differ and the numbers are not "
                         f"comparable.")
    later_rows = [name for name in present if name in LATER_PAPERS_TABLE2]
    if with_paper and later_rows:
        notes.append(f"{LATER_PAPER_MARK}: the row's own paper's published number, not Zhang et al. (AAAI 2021): "
                     + "; ".join(f"{name}: {LATER_PAPERS_TABLE2[name]['source']}" for name in later_rows)
                     + ". '–' where that paper gives no such number (or none is entered yet).")
    titles = " and ".join(d[1] for d in described.values())
    caption = f"Performance of different approaches to MMER on {titles}."
    extra = {}
    if tests and not with_paper:
        extra["table2_significance"] = (SIGNIFICANCE_HEADER, significance_csv_rows(tests))
    name = "table2_with_paper" if with_paper else "table2"
    return RenderedTable(name, header, rows, notes, caption=caption, csv_header=csv_header, csv_rows=csv_rows,
                         column_groups=column_groups, latex_header=latex_header, rules_before=rules,
                         label=f"tab:{name.replace('_', '-')}", extra_csv=extra, merge_first_column=True,
                         tests=tests)


def _interval(metric: str, boot) -> str:
    if boot is None:
        return "–"
    digits = 3 if metric in LOWER_IS_BETTER else 1
    f = _scale(metric)
    return f"{boot.difference * f:+.{digits}f} [{boot.low * f:+.{digits}f}, {boot.high * f:+.{digits}f}]"


def ablation_table(tests: Sequence[dict]) -> RenderedTable:
    """Each ablation against full HHMPN: the bootstrap's pooled difference (ablation minus HHMPN) with its 95%
    interval per metric, and the corrected t-test's Holm-corrected p, from Table 2's comparisons."""
    header = ["Dataset", "Approach"] + [f"Δ{HEADERS[m]} [95% CI]" for m in METRICS] + \
             [f"p {HEADERS[m]} (Holm)" for m in METRICS]
    by_pair: dict[tuple, dict] = defaultdict(dict)
    for t in tests:
        if t["family"] == "ablations":
            by_pair[(t["dataset"], t["model"])][t["metric"]] = t
    rows = []
    for (dataset, model), per_metric in by_pair.items():
        rows.append([dataset, model]
                    + [_interval(m, per_metric[m]["bootstrap"]) if m in per_metric else "–" for m in METRICS]
                    + [f"{per_metric[m]['t p holm']:.3f}" if m in per_metric else "–" for m in METRICS])
    resamples = next((t["bootstrap"].resamples for t in tests if t["bootstrap"]), BOOTSTRAP_RESAMPLES)
    notes = ["Δ: the ablation minus full HHMPN on the test songs of the common rotations pooled (seeds averaged; "
             "percentage points, HL as a fraction: negative Δ HL means the ablation errs less), with the 95% "
             f"interval of a {BOOTSTRAP_TEST} ({resamples:,} resamples). p: the {CORRECTED_T_TEST}, "
             f"{CORRECTION}-corrected over the ablation comparisons. All values: table2_significance.csv."]
    caption = "Ablations of HHMPN against the full model on " + " and ".join(dict.fromkeys(d for d, _ in by_pair)) + "."
    return RenderedTable("table2_ablations", header, rows, notes, caption=caption, text_columns=2)


#: The paper's modality letters and Table 3's order of them (L, A, C, V); other modalities follow by name.
ABBREVIATIONS = {"lyrics": "L", "audio": "A", "comments": "C", "images": "V"}


def _modality_rank(name: str) -> tuple[int, str]:
    order = list(ABBREVIATIONS)
    return (order.index(name), "") if name in order else (len(order), name)


def _subset_order(subset: str) -> tuple:
    """Three modalities down to one; within a size, lexicographic over L, A, C, V (the paper's Table 3)."""
    parts = sorted(subset.split("+"), key=_modality_rank)
    return (-len(parts), [_modality_rank(p) for p in parts])


def table3(records: Sequence[dict], dataset: str, model: str = OURS, title: str | None = None) -> RenderedTable:
    """Table 3: ``model`` on every proper non-empty subset of the modalities (all of them: Table 2)."""
    ok, _ = _index(records)
    full = "+".join(full_modalities(records, dataset))
    subsets = sorted({key[2] for key in ok if key[0] == model and key[1] == dataset and key[2] != full},
                     key=_subset_order)
    header = ["Modalities"] + [HEADERS[m] for m in METRICS]
    csv_header = ["modalities", "subset", "folds"] + [f"{HEADERS[m]} {part}" for m in METRICS
                                                      for part in ("mean", "std")]
    rows, csv_rows, counts = [], [], {}
    for subset in subsets:
        parts = sorted(subset.split("+"), key=_modality_rank)
        label = "-".join(ABBREVIATIONS.get(p, p) for p in parts)
        summaries = [summarise(ok[(model, dataset, subset)], m) for m in METRICS]
        counts[label] = sorted(summaries[0].per_fold)
        rows.append([label] + [_format(m, s.mean, s.std) for m, s in zip(METRICS, summaries)])
        csv_rows.append([label, "+".join(parts), summaries[0].folds] +
                        [value for m, s in zip(METRICS, summaries) for value in (_number(m, s.mean),
                                                                                  _number(m, s.std))])
    used = [r for key, rs in ok.items() if key[0] == model and key[1] == dataset and key[2] in subsets for r in rs]
    notes = [_folds_note(counts), protocol_note(used, title or dataset),
             "L: lyrics, A: audio, C: comments, V: vision (images); all four modalities: Table 2. HL: lower is "
             "better."]
    if used and len({r["seed"] for r in used}) < TABLE2_MIN_SEEDS:
        notes.append(TABLE3_RULE)
    caption = f"Performance of {model} with one, two or three modalities as input on {title or dataset}."
    return RenderedTable("table3", header, rows, notes, caption=caption, csv_header=csv_header, csv_rows=csv_rows,
                         text_columns=1,
                         rules_before={i for i in range(1, len(rows))
                                       if len(rows[i][0].split("-")) != len(rows[i - 1][0].split("-"))})


def table4(records: Sequence[dict], dataset: str, label_shares: dict[str, float], model: str = OURS,
           k: int = 3, title: str | None = None) -> RenderedTable:
    """Table 4 as the paper: F1 of ``model`` on the k most and the k least frequent labels, with their share.

    Both blocks list labels from the most to the least frequent, as the paper does."""
    ok, _ = _index(records)
    full = "+".join(full_modalities(records, dataset))
    runs = ok.get((model, dataset, full), [])
    order = sorted(label_shares, key=lambda name: (-label_shares[name], name))
    header = ["Most Emotions", "% of Samples", "Micro F1(%)"]
    rows, csv_rows, folds = [], [], sorted({r["fold"] for r in runs})
    for block, names in (("Most", order[:k]), ("Fewest", order[-k:])):
        if block == "Fewest":
            rows.append(["**Fewest Emotions**", "**% of Samples**", "**Micro F1(%)**"])
        for name in names:
            per_fold = defaultdict(list)
            for r in runs:
                per_fold[r["fold"]].append(r["per_label_f1"][name])
            values = [float(np.mean(v)) for _, v in sorted(per_fold.items())]
            mean = float(np.mean(values)) if values else None
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            f1 = "–" if mean is None else _format("micro_f1", mean, std)
            rows.append([name, f"{100 * label_shares[name]:.1f}", f1])
            csv_rows.append([block, name, round(100 * label_shares[name], 2), _number("micro_f1", mean),
                             _number("micro_f1", std), len(values)])
    notes = [f"{model} on {title or dataset}: F1 of each label (the paper's 'Micro F1' of a label). "
             + _folds_note({model: folds} if folds else {}, " of the seed-averaged values"),
             protocol_note(runs, title or dataset)]
    caption = f"The performance of {model} on the most and fewest emotion labels of {title or dataset}."
    return RenderedTable("table4", header, rows, notes, caption=caption,
                         csv_header=["block", "emotion", "% of samples", "F1(%) mean", "F1(%) std", "folds"],
                         csv_rows=csv_rows, rules_before={k}, text_columns=1)


def table1(manifests: dict[str, dict]) -> RenderedTable:
    """Statistics of each build, named by its title; the paper's statistics beside a real build only, and beside
    anything else in a row that says they are of the real dataset, not of this one."""
    header = ["Dataset", "Source", "Train", "Valid", "Test", "One", "Two and more", "Avg. time (s)", "Labels",
              "Avg. words/sentence"]
    rows, notes = [], ["Statistics computed from each build's shards (manifest.json)."]
    for key, manifest in manifests.items():
        stats = manifest["statistics"]
        title = dataset_title(manifest)
        rows.append([title, "this build", *(str(stats["splits"].get(s, "–")) for s in ("train", "valid", "test")),
                     str(stats["one_label"]), str(stats["two_or_more_labels"]),
                     str(stats.get("mean_duration_seconds") or "–"), str(len(manifest["labels"])),
                     str(stats.get("mean_words_per_sentence") or "–")])
        paper = PAPER_TABLE1.get(manifest["dataset"])
        if paper:
            real = is_real(manifest)
            rows.append([manifest["dataset"], "paper" if real else f"paper (real {manifest['dataset']})",
                         *(str(paper["splits"][s]) for s in ("train", "valid", "test")),
                         str(paper["one_label"]), str(paper["two_or_more_labels"]),
                         f"{paper['mean_duration_seconds']}/{paper['duration_unit']}", str(paper["labels"]),
                         str(paper["mean_words_per_sentence"])])
            if not real:
                notes.append(f"The 'paper' row of {manifest['dataset']} describes the real dataset of the paper, not "
                             f"{title}: the datasets differ.")
    titles = ", ".join(dict.fromkeys(dataset_title(m) for m in manifests.values()))
    return RenderedTable("table1", header, rows, notes, caption=f"Statistics of the datasets: {titles}.")


def current_build(records: Sequence[dict], manifests: dict[str, dict]) -> list[dict]:
    """The records computed from the builds described by ``manifests`` (same dataset fingerprint) only."""
    fingerprints = {key: dataset_fingerprint(manifest) for key, manifest in manifests.items()}
    return [r for r in records if r.get("dataset") in fingerprints
            and r.get("dataset_fingerprint") == fingerprints[r["dataset"]]]


def write_tables(records: Sequence[dict], manifests: dict[str, dict], out_dir: Path) -> list[Path]:
    """Write every table the results of the current builds support; returns the markdown files written."""
    records = current_build(records, manifests)
    titles = {key: dataset_title(manifest) for key, manifest in manifests.items()}
    main = table2(records, manifests)
    tables = [table1(manifests), main, table2(records, manifests, with_paper=True)]
    if any(t["family"] == "ablations" for t in main.tests):
        tables.append(ablation_table(main.tests))
    for key, manifest in manifests.items():
        if manifest["dataset"] != "NEMu":
            continue
        shares = {name: v["share"] for name, v in manifest["statistics"]["label_frequencies"].items()}
        if any(r["model"] == OURS and r["dataset"] == key and r.get("status") == "ok" for r in records):
            subsets = table3(records, key, title=titles[key])
            tables += ([subsets] if subsets.rows else []) + [table4(records, key, shares, title=titles[key])]
    for table in tables:
        table.write(out_dir)
    written = {t.name for t in tables} | {n for t in tables for n in t.extra_csv}
    stale = {"table2_significance": ("csv",), "table2_ablations": ("md", "csv", "tex"),
             "table3": ("md", "csv", "tex"), "table4": ("md", "csv", "tex")}
    for name, suffixes in stale.items():  # an earlier run's table must not sit beside this run's others
        if name not in written:
            for suffix in suffixes:
                (Path(out_dir) / f"{name}.{suffix}").unlink(missing_ok=True)
    return [out_dir / f"{t.name}.md" for t in tables]
