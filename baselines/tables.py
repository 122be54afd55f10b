"""Tables 1-4 of the paper from the results store and the dataset manifests (markdown, CSV, LaTeX).

Numbers are the mean over CV rotations (folds; seeds are averaged within a fold first), with the sample
standard deviation ("± std") only where a cell has two or more folds: one fold gives a single number.
Significance: a two-sided paired t-test over the folds HHMPN shares with MulT (†) and with M3ER (‡), per
dataset and metric (scipy.stats.ttest_rel); a marker means p < 0.05 with HHMPN the better of the two.
A test needs at least two common folds: with fewer, no test runs, no marker is printed and the tables carry
no significance footnote.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import ttest_rel

from mmer.registry import GROUPS, models
from nemu.shards import dataset_fingerprint
from nemu.statistics import PAPER_TABLE1

METRICS = ("accuracy", "hamming_loss", "micro_f1", "macro_f1")
HEADERS = {"accuracy": "Acc(%)", "hamming_loss": "HL", "micro_f1": "miF1(%)", "macro_f1": "maF1(%)"}
LOWER_IS_BETTER = {"hamming_loss"}
SIGNIFICANCE = (("MulT", "†"), ("M3ER", "‡"))
SIGNIFICANCE_TEST = "two-sided paired t-test over folds (scipy.stats.ttest_rel), p < 0.05"
ALPHA = 0.05
OURS = "HHMPN"

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


def paired_test(ours: Summary, theirs: Summary, metric: str) -> float | None:
    """p-value of the paired t-test over common folds, or None when fewer than two folds are shared."""
    folds = sorted(set(ours.per_fold) & set(theirs.per_fold))
    if len(folds) < 2:
        return None
    a = np.array([ours.per_fold[f] for f in folds])
    b = np.array([theirs.per_fold[f] for f in folds])
    if np.allclose(a, b):
        return 1.0
    return float(ttest_rel(a, b).pvalue)


def _better(metric: str, ours: float, theirs: float) -> bool:
    return ours < theirs if metric in LOWER_IS_BETTER else ours > theirs


def significance_markers(ours: Summary, others: dict[str, Summary], metric: str) -> str:
    marks = ""
    for name, mark in SIGNIFICANCE:
        if name not in others:
            continue
        p = paired_test(ours, others[name], metric)
        if p is not None and p < ALPHA and _better(metric, ours.mean, others[name].mean):
            marks += mark
    return marks


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


def _folds_note(counts: dict[str, list[int]]) -> str:
    """How many folds stand behind the numbers: one sentence, naming the models whose count differs."""
    if not counts:
        return "No results."
    sets = [tuple(v) for v in counts.values()]
    common = max(set(sets), key=lambda f: (sets.count(f), len(f), f))  # the most usual; ties: the most folds
    text = (f"Mean ± sample std over {len(common)} CV rotations (folds {', '.join(map(str, common))})"
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


def table2(records: Sequence[dict], datasets: dict[str, str], with_paper: bool = False) -> RenderedTable:
    """Table 2: every model with a result, in the paper's order; ``datasets`` maps key -> paper name."""
    ok, not_applicable = _index(records)
    full = {key: "+".join(full_modalities(records, key)) for key in datasets}
    groups = {r["model"]: r.get("group", "Ours") for r in records}
    present = _ordered([name for name in groups if any((name, d, full[d]) in ok or (name, d) in not_applicable
                                                       for d in datasets)], groups)
    summaries = {(name, d, m): summarise(ok[(name, d, full[d])], m)
                 for name in present for d in datasets for m in METRICS if (name, d, full[d]) in ok}
    best = {}
    for d in datasets:
        for m in METRICS:
            values = [summaries[(n, d, m)].mean for n in present if (n, d, m) in summaries]
            if values:
                best[(d, m)] = min(values) if m in LOWER_IS_BETTER else max(values)
    header = ["Group", "Approach"] + [f"{paper_name} {HEADERS[m]}" for d, paper_name in datasets.items()
                                      for m in METRICS]
    csv_header = ["group", "approach"]
    for paper_name in datasets.values():
        csv_header.append(f"{paper_name} folds")
        csv_header += [f"{paper_name} {HEADERS[m]} {part}" for m in METRICS for part in ("mean", "std")]
        if with_paper:
            csv_header += [f"{paper_name} {HEADERS[m]} paper" for m in METRICS]
    rows, csv_rows, rules, tests = [], [], set(), []
    for name in present:
        if rows and groups[name] != groups[present[len(rows) - 1]]:
            rules.add(len(rows))
        row, csv_row = [groups[name], name], [groups[name], name]
        for d, paper_name in datasets.items():
            csv_row.append(summaries[(name, d, METRICS[0])].folds if (name, d, METRICS[0]) in summaries else None)
            paper = (PAPER_TABLE2.get(name) or {}).get(paper_name)
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
                    others = {o: summaries[(o, d, m)] for o, _ in SIGNIFICANCE if (o, d, m) in summaries}
                    for other, mark in SIGNIFICANCE:
                        if other in others:
                            p = paired_test(s, others[other], m)
                            if p is not None:
                                tests.append([paper_name, HEADERS[m], other,
                                              len(set(s.per_fold) & set(others[other].per_fold)),
                                              _number(m, s.mean), _number(m, others[other].mean),
                                              round(p, 6), _better(m, s.mean, others[other].mean),
                                              mark if p < ALPHA and _better(m, s.mean, others[other].mean) else ""])
                    cell += significance_markers(s, others, m)
                if with_paper:
                    cell += f" ({_format(m, paper[METRICS.index(m)], scale=False)})" if paper else " (–)"
                row.append(cell)
                csv_row += [_number(m, s.mean), _number(m, s.std)]
            if with_paper:
                csv_row += [paper[METRICS.index(m)] if paper else None for m in METRICS]
        rows.append(row)
        csv_rows.append(csv_row)
    counts = {name: sorted({fold for (n, d, m), s in summaries.items() if n == name for fold in s.per_fold})
              for name in present if any(n == name for n, _, _ in summaries)}
    notes = [_folds_note(counts) + " Best per column in bold."]
    if any(test[-1] for test in tests):
        notes.append(f"† / ‡: HHMPN significantly better than MulT / M3ER ({SIGNIFICANCE_TEST}; p-values in "
                     f"table2_significance.csv).")
    elif tests:
        notes.append(f"No † / ‡: HHMPN is significantly better than neither MulT nor M3ER on any metric "
                     f"({SIGNIFICANCE_TEST}; p-values in table2_significance.csv).")
    notes.append("HL: lower is better. Acc is the per-sample Jaccard index (multi-label accuracy), not subset "
                 "accuracy.")
    notes += [f"– {name} on {datasets[d]}: {reason}" for (name, d), reason in sorted(not_applicable.items())
              if d in datasets]
    if with_paper:
        notes.append("In parentheses: the paper's published number (Zhang et al., AAAI 2021, Table 2).")
    names = " and ".join(datasets.values())
    caption = (f"Performance of different approaches to MMER on {names}" +
               (", beside the paper's numbers" if with_paper else "") + ".")
    extra = {}
    if tests and not with_paper:
        extra["table2_significance"] = (["dataset", "metric", "versus", "common folds", "HHMPN mean",
                                         "other mean", "p value", "HHMPN better", "marker"], tests)
    name = "table2_with_paper" if with_paper else "table2"
    return RenderedTable(name, header, rows, notes, caption=caption, csv_header=csv_header, csv_rows=csv_rows,
                         column_groups=[(paper_name, len(METRICS)) for paper_name in datasets.values()],
                         latex_header=["Group", "Approach"] + [HEADERS[m] for _ in datasets for m in METRICS],
                         rules_before=rules, label=f"tab:{name.replace('_', '-')}", extra_csv=extra,
                         merge_first_column=True)


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
    notes = [_folds_note(counts), "L: lyrics, A: audio, C: comments, V: vision (images); all four modalities: "
                                  "Table 2. HL: lower is better."]
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
             + _folds_note({model: folds} if folds else {})]
    caption = f"The performance of {model} on the most and fewest emotion labels of {title or dataset}."
    return RenderedTable("table4", header, rows, notes, caption=caption,
                         csv_header=["block", "emotion", "% of samples", "F1(%) mean", "F1(%) std", "folds"],
                         csv_rows=csv_rows, rules_before={k}, text_columns=1)


def table1(manifests: dict[str, dict]) -> RenderedTable:
    header = ["Dataset", "Source", "Train", "Valid", "Test", "One", "Two and more", "Avg. time (s)", "Labels",
              "Avg. words/sentence"]
    rows = []
    for key, manifest in manifests.items():
        stats = manifest["statistics"]
        rows.append([key, "this build", *(str(stats["splits"].get(s, "–")) for s in ("train", "valid", "test")),
                     str(stats["one_label"]), str(stats["two_or_more_labels"]),
                     str(stats.get("mean_duration_seconds") or "–"), str(len(manifest["labels"])),
                     str(stats.get("mean_words_per_sentence") or "–")])
        paper = PAPER_TABLE1.get(manifest["dataset"])
        if paper:
            rows.append([key, "paper", *(str(paper["splits"][s]) for s in ("train", "valid", "test")),
                         str(paper["one_label"]), str(paper["two_or_more_labels"]),
                         f"{paper['mean_duration_seconds']}/{paper['duration_unit']}", str(paper["labels"]),
                         str(paper["mean_words_per_sentence"])])
    return RenderedTable("table1", header, rows, ["Statistics computed from each build's shards (manifest.json)."],
                         caption="Statistics of the datasets.")


def current_build(records: Sequence[dict], manifests: dict[str, dict]) -> list[dict]:
    """The records computed from the builds described by ``manifests`` (same dataset fingerprint) only."""
    fingerprints = {key: dataset_fingerprint(manifest) for key, manifest in manifests.items()}
    return [r for r in records if r.get("dataset") in fingerprints
            and r.get("dataset_fingerprint") == fingerprints[r["dataset"]]]


def write_tables(records: Sequence[dict], manifests: dict[str, dict], out_dir: Path) -> list[Path]:
    """Write every table the results of the current builds support; returns the markdown files written."""
    records = current_build(records, manifests)
    datasets = {key: manifest["dataset"] for key, manifest in manifests.items()}
    tables = [table1(manifests), table2(records, datasets), table2(records, datasets, with_paper=True)]
    stale = Path(out_dir) / "table2_significance.csv"
    if stale.exists() and "table2_significance" not in tables[1].extra_csv:
        stale.unlink()  # an earlier run's p-values must not sit beside a table without tests
    for key, manifest in manifests.items():
        if manifest["dataset"] != "NEMu":
            continue
        shares = {name: v["share"] for name, v in manifest["statistics"]["label_frequencies"].items()}
        if any(r["model"] == OURS and r["dataset"] == key and r.get("status") == "ok" for r in records):
            subsets = table3(records, key, title=manifest["dataset"])
            tables += ([subsets] if subsets.rows else []) + [table4(records, key, shares, title=manifest["dataset"])]
    for table in tables:
        table.write(out_dir)
    written = {t.name for t in tables}
    for name in ("table3", "table4"):  # an earlier run's table must not sit beside this run's others
        if name not in written:
            for suffix in ("md", "csv", "tex"):
                (Path(out_dir) / f"{name}.{suffix}").unlink(missing_ok=True)
    return [out_dir / f"{t.name}.md" for t in tables]
