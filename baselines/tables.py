"""Tables 1-4 of the paper from the results store and the dataset manifests (markdown, CSV, LaTeX).

Numbers are mean ± sample standard deviation over folds (seeds are averaged within a fold first).
Significance: a two-sided paired t-test over folds (scipy.stats.ttest_rel) of HHMPN against MulT (†)
and against M3ER (‡), per dataset and metric; a marker means p < 0.05 with HHMPN the better of the
two. With fewer than two common folds no test is possible and no marker is printed.
A model with no result is absent; a model that cannot run on a dataset (MLEE without dominant-emotion
annotations) shows "–".
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import ttest_rel

from baselines.registry import GROUPS, models
from nemu.statistics import PAPER_TABLE1

METRICS = ("accuracy", "hamming_loss", "micro_f1", "macro_f1")
HEADERS = {"accuracy": "Acc(%)", "hamming_loss": "HL", "micro_f1": "miF1(%)", "macro_f1": "maF1(%)"}
LOWER_IS_BETTER = {"hamming_loss"}
SIGNIFICANCE = (("MulT", "†"), ("M3ER", "‡"))
SIGNIFICANCE_TEST = "two-sided paired t-test over folds (scipy.stats.ttest_rel), p < 0.05"
ALPHA = 0.05

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
    std: float
    per_fold: dict[int, float]


def _fold_means(records: Sequence[dict], metric: str) -> dict[int, float]:
    by_fold: dict[int, list[float]] = defaultdict(list)
    for record in records:
        by_fold[record["fold"]].append(record["metrics"][metric])
    return {fold: float(np.mean(values)) for fold, values in sorted(by_fold.items())}


def summarise(records: Sequence[dict], metric: str) -> Summary:
    per_fold = _fold_means(records, metric)
    values = np.array(list(per_fold.values()))
    return Summary(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, per_fold)


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


def significance_markers(ours: Summary, others: dict[str, Summary], metric: str) -> str:
    marks = ""
    for name, mark in SIGNIFICANCE:
        if name not in others:
            continue
        p = paired_test(ours, others[name], metric)
        better = ours.mean < others[name].mean if metric in LOWER_IS_BETTER else ours.mean > others[name].mean
        if p is not None and p < ALPHA and better:
            marks += mark
    return marks


def _format(metric: str, value: float, std: float | None = None, scale: bool = True) -> str:
    if metric in LOWER_IS_BETTER:
        text = f"{value:.3f}"
        return text if std is None else f"{text} ± {std:.3f}"
    factor = 100 if scale else 1
    text = f"{value * factor:.1f}"
    return text if std is None else f"{text} ± {std * factor:.1f}"


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


@dataclass
class RenderedTable:
    name: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + ("\n\n" + "\n".join(self.notes) if self.notes else "") + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.header)
        writer.writerows([[cell.replace("**", "") for cell in row] for row in self.rows])
        return buffer.getvalue()

    def latex(self) -> str:
        def tex(cell: str) -> str:
            cell = cell.replace("±", r"$\pm$").replace("%", r"\%").replace("†", r"$^\dagger$")
            cell = cell.replace("‡", r"$^\ddagger$").replace("–", "--").replace("_", r"\_")
            if cell.startswith("**") and "**" in cell[2:]:
                end = cell.index("**", 2)
                cell = r"\textbf{" + cell[2:end] + "}" + cell[end + 2:]
            return cell

        lines = [r"\begin{tabular}{" + "l" * 2 + "r" * (len(self.header) - 2) + "}", r"\toprule",
                 " & ".join(tex(h) for h in self.header) + r" \\", r"\midrule"]
        lines += [" & ".join(tex(c) for c in row) + r" \\" for row in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{self.name}.md").write_text(self.markdown(), encoding="utf-8")
        (out_dir / f"{self.name}.csv").write_text(self.csv(), encoding="utf-8")
        (out_dir / f"{self.name}.tex").write_text(self.latex(), encoding="utf-8")


def table2(records: Sequence[dict], datasets: dict[str, str], with_paper: bool = False) -> RenderedTable:
    """Table 2: every model with a result, grouped as in the paper; ``datasets`` maps key -> paper name."""
    ok, not_applicable = _index(records)
    full = {key: "+".join(_all_modalities(records, key)) for key in datasets}
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
    rows = []
    for name in present:
        row = [groups[name], name]
        for d, paper_name in datasets.items():
            for m in METRICS:
                if (name, d, m) not in summaries:
                    row.append("–")
                    continue
                s = summaries[(name, d, m)]
                cell = _format(m, s.mean, s.std)
                if np.isclose(s.mean, best[(d, m)]):
                    cell = f"**{cell}**"
                if name == "HHMPN":
                    others = {o: summaries[(o, d, m)] for o, _ in SIGNIFICANCE if (o, d, m) in summaries}
                    cell += significance_markers(s, others, m)
                if with_paper:
                    paper = (PAPER_TABLE2.get(name) or {}).get(paper_name)
                    cell += f" ({_format(m, paper[METRICS.index(m)], scale=False)})" if paper else " (–)"
                row.append(cell)
        rows.append(row)
    folds = sorted({r["fold"] for r in records if r.get("status") == "ok"})
    notes = [f"Mean ± std over {len(folds)} fold(s) ({', '.join(map(str, folds))}); best per column in bold.",
             f"† / ‡: HHMPN significantly better than MulT / M3ER ({SIGNIFICANCE_TEST}).",
             "HL: lower is better. Acc is the per-sample Jaccard index (multi-label accuracy), not subset accuracy."]
    notes += [f"– {name} on {datasets[d]}: {reason}" for (name, d), reason in sorted(not_applicable.items())
              if d in datasets]
    if with_paper:
        notes.append("In parentheses: the paper's published number (Zhang et al., AAAI 2021, Table 2).")
    return RenderedTable("table2_with_paper" if with_paper else "table2", header, rows, notes)


def _ordered(names: list[str], groups: dict[str, str]) -> list[str]:
    """Paper order: by group, then registration order (models only in old results come last in their group)."""
    position = {name: i for i, name in enumerate(models())}
    return sorted(names, key=lambda n: (GROUPS.index(groups[n]) if groups[n] in GROUPS else len(GROUPS),
                                        position.get(n, len(position)), n))


def _all_modalities(records: Sequence[dict], dataset: str) -> list[str]:
    subsets = [r["modalities"] for r in records if r["dataset"] == dataset and r.get("status") == "ok"]
    return max(subsets, key=len) if subsets else []


ABBREVIATIONS = {"lyrics": "L", "audio": "A", "comments": "C", "images": "V"}


def table3(records: Sequence[dict], dataset: str, model: str = "HHMPN") -> RenderedTable:
    """Table 3: ``model`` on every proper non-empty subset of the modalities (all of them: Table 2)."""
    ok, _ = _index(records)
    full = "+".join(_all_modalities(records, dataset))
    subsets = sorted({key[2] for key in ok if key[0] == model and key[1] == dataset and key[2] != full},
                     key=lambda s: (-len(s.split("+")), s))
    header = ["Modalities", "Subset"] + [HEADERS[m] for m in METRICS]
    rows = []
    for subset in subsets:
        parts = subset.split("+")
        label = "-".join(ABBREVIATIONS.get(p, p) for p in parts)
        rows.append([label, subset] + [_format(m, summarise(ok[(model, dataset, subset)], m).mean,
                                               summarise(ok[(model, dataset, subset)], m).std) for m in METRICS])
    notes = [f"{model} on {dataset}; L: lyrics, A: audio, C: comments, V: vision (images)."]
    return RenderedTable("table3", header, rows, notes)


def table4(records: Sequence[dict], dataset: str, label_shares: dict[str, float], model: str = "HHMPN",
           k: int = 3) -> RenderedTable:
    """Table 4: per-label F1 of ``model`` for the k most and k least frequent labels, with their share."""
    ok, _ = _index(records)
    full = "+".join(_all_modalities(records, dataset))
    runs = ok.get((model, dataset, full), [])
    order = sorted(label_shares, key=lambda name: -label_shares[name])
    header = ["", "Emotion", "% of samples", "F1(%)"]
    rows = []
    for title, names in (("Most", order[:k]), ("Fewest", order[-k:][::-1])):
        for name in names:
            values = [r["per_label_f1"][name] for r in runs]
            f1 = f"{100 * np.mean(values):.1f}" if values else "–"
            rows.append([title, name, f"{100 * label_shares[name]:.1f}", f1])
    notes = [f"{model} on {dataset}: F1 of each label (its 'micro-F1' in the paper), mean over folds."]
    return RenderedTable("table4", header, rows, notes)


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
    return RenderedTable("table1", header, rows, ["Statistics computed from each build's shards (manifest.json)."])


def write_tables(records: Sequence[dict], manifests: dict[str, dict], out_dir: Path) -> list[Path]:
    """Write every table the results support; returns the markdown files written."""
    datasets = {key: manifest["dataset"] for key, manifest in manifests.items()}
    tables = [table1(manifests), table2(records, datasets), table2(records, datasets, with_paper=True)]
    for key, manifest in manifests.items():
        if manifest["dataset"] != "NEMu":
            continue
        shares = {name: v["share"] for name, v in manifest["statistics"]["label_frequencies"].items()}
        if any(r["model"] == "HHMPN" and r["dataset"] == key and r.get("status") == "ok" for r in records):
            tables += [table3(records, key), table4(records, key, shares)]
    for table in tables:
        table.write(out_dir)
    return [out_dir / f"{t.name}.md" for t in tables]
