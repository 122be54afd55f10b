"""Table 5 (beyond the paper): robustness at prediction time, from the benchmark's saved run folders.

For every model of Table 2 and every cell of it (the same rotations and seeds), the cell's run folder (a neural
checkpoint or a fitted estimator, ``mmer.runs``) is loaded, never retrained, and its rotation's test split is
predicted clean and with its inputs broken (``mmer.perturb``, each cell's perturbations drawn from its training
seed): each modality in turn removed (all its nodes absent), each modality in turn replaced by another test
song's (a random cycle through the test songs), and Gaussian noise on every standardised feature at the levels
``mmer.perturb.NOISE_LEVELS``. Each column reports miF1 as Table 2 does (the mean over rotations of the
seed-averaged values) with the drop from the clean score in parentheses (perturbed − clean, averaged the same
way, so negative is worse). The clean column is recomputed from the run folders and must equal Table 2's miF1;
a note says so, or names the cells where it does not. Figure ``figure5`` shows the drops per model as a
heatmap.

Every evaluated cell is stored in ``OUT/robustness.jsonl`` with what produced it: the cell's identity (grid
place, dataset fingerprint, settings and code digests, ``mmer.runner.Cell.identity``), the sha256 of every file
of its run folder, the digest of the code that perturbs and predicts (``mmer.code`` closure of
``mmer.predict``), the perturbations and the seed. A stored evaluation is reused only when all of these are
the same; anything else (a rebuilt dataset, a retrained run, edited code) computes it again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from baselines.results import read_records
from baselines.tables import (ABBREVIATIONS, RenderedTable, _modality_rank, _ordered, current_build,
                              full_modalities, protocol_note)
from mmer.code import code_digest, code_files
from mmer.metrics import evaluate
from mmer.perturb import NOISE_LEVELS, Perturbation
from mmer.predict import load_run
from nemu.atomic import atomic_write_text
from nemu.provenance import dataset_title
from nemu.splits import cv_rotation

ROBUSTNESS_FILE = "robustness.jsonl"
TABLE_NAME = "table5"
FIGURE_NAME = "figure5"
METRIC = "micro_f1"
#: Tolerance of the check that the clean score recomputed from a run folder is the cell's Table 2 score.
CLEAN_TOLERANCE = 1e-6


def columns(modalities: Sequence[str]) -> list[tuple[str, Perturbation | None, str]]:
    """Table 5's columns as (key, perturbation or None for clean, header): clean, each modality removed, each
    replaced by another song's, then noise at each level."""
    ordered = sorted(modalities, key=_modality_rank)
    out: list[tuple[str, Perturbation | None, str]] = [("clean", None, "Clean")]
    out += [(f"drop:{m}", Perturbation("drop", m), f"−{ABBREVIATIONS.get(m, m)}") for m in ordered]
    out += [(f"shuffle:{m}", Perturbation("shuffle", m), f"{ABBREVIATIONS.get(m, m)}↔") for m in ordered]
    out += [(p.spec, p, f"σ={level:g}") for level in NOISE_LEVELS for p in [Perturbation("noise", None, level)]]
    return out


def evaluation_code() -> dict[str, str]:
    """The code that perturbs, predicts and scores (the import closure of ``mmer.predict`` with the runner's)."""
    return code_files("mmer.predict")


def run_files(run_dir: Path) -> dict[str, str]:
    """{file name: sha256} of every file of a run folder (the evaluation is of exactly these weights)."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(run_dir).iterdir()) if path.is_file()}


def evaluation_identity(record: Mapping, files: Mapping[str, str], code: str, keys: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return (f"{record.get('identity', record['key'])}|run={digest}|evaluation={code}|"
            f"perturbations={','.join(keys)}|seed={record['seed']}")


def evaluate_cell(record: Mapping, root: Path, modalities: Sequence[str]) -> dict:
    """The cell's test metrics from its run folder, clean and under each column's perturbation: {key: metrics}."""
    run = load_run(record["run_dir"])
    dataset = run.dataset(root, None, cv_rotation(record["fold"])["test"])
    gold = dict(zip(dataset.ids, np.asarray(dataset.labels)))
    empty_union = float(record.get("empty_union", 0.0))
    scores = {}
    for key, perturbation, _ in columns(modalities):
        try:
            ids, _, _, decisions = run.predict_songs(dataset, perturbations=[perturbation] if perturbation else [],
                                                     seed=int(record["seed"]))
        except ValueError as exc:  # a perturbation this test split cannot take (a shuffle needs 2 songs): "–"
            if perturbation is None:
                raise
            scores[key] = {"unavailable": str(exc)}
            continue
        truth = np.asarray([gold[i] for i in ids]).reshape(len(ids), -1)
        metrics = evaluate(truth, decisions, run.label_names, empty_union=empty_union)
        scores[key] = {k: float(metrics[k]) for k in ("micro_f1", "macro_f1", "accuracy", "hamming_loss")}
    return scores


def table2_cells(records: Sequence[dict], dataset: str) -> list[dict]:
    """The ok records of Table 2 on ``dataset``: every model on all the dataset's modalities."""
    full = full_modalities(records, dataset)
    return [r for r in records if r.get("dataset") == dataset and r.get("status") == "ok"
            and list(r.get("modalities") or []) == full]


def robustness_records(records: Sequence[dict], roots: Mapping[str, Path], out_dir: Path,
                       progress: bool = False) -> tuple[list[dict], list[dict]]:
    """(evaluations of every Table 2 cell with a run folder, the cells without one). Stored evaluations with the
    same identity are reused; new ones are added to ``OUT/robustness.jsonl``."""
    path = Path(out_dir) / ROBUSTNESS_FILE
    stored, _ = read_records(path)
    by_identity = {r.get("identity"): r for r in stored}
    code = code_digest(evaluation_code())
    todo, missing = [], []
    for dataset in roots:
        modalities = full_modalities(records, dataset)
        for record in table2_cells(records, dataset):
            run_dir = Path(record["run_dir"]) if record.get("run_dir") else None
            if run_dir is None or not (run_dir / "run.json").is_file():
                missing.append(record)
            else:
                todo.append((record, dataset, modalities, run_dir))
    out, added = [], []
    for record, dataset, modalities, run_dir in tqdm(todo, desc="Table 5 (robustness)", unit="run",
                                                     disable=not progress):
        keys = [key for key, _, _ in columns(modalities)]
        files = run_files(run_dir)
        identity = evaluation_identity(record, files, code, keys)
        if identity in by_identity:
            out.append(by_identity[identity])
            continue
        started = time.perf_counter()
        scores = evaluate_cell(record, Path(roots[dataset]), modalities)
        evaluation = {"identity": identity, "cell_identity": record.get("identity"), "key": record["key"],
                      "model": record["model"], "group": record.get("group"), "dataset": dataset,
                      "fold": record["fold"], "seed": record["seed"], "modalities": list(modalities),
                      "dataset_fingerprint": record.get("dataset_fingerprint"), "run_dir": str(run_dir),
                      "run_files": files, "evaluation_code_digest": code, "perturbations": keys,
                      "perturb_seed": record["seed"], "table2_micro_f1": float(record["metrics"][METRIC]),
                      "scores": scores, "seconds": round(time.perf_counter() - started, 3),
                      "threshold_rule": record.get("threshold_rule"), "sizes": record.get("sizes")}
        out.append(evaluation)
        added.append(evaluation)
    if added:
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"
                       for r in stored + added)
        atomic_write_text(path, text)
    return out, missing


def _mean_over_rotations(evaluations: Sequence[dict], value) -> tuple[float, float | None]:
    """Table 2's aggregation: seeds averaged within a rotation, then mean (and sample std) over rotations."""
    by_fold: dict[int, list[float]] = defaultdict(list)
    for evaluation in evaluations:
        by_fold[evaluation["fold"]].append(value(evaluation))
    values = np.array([np.mean(v) for _, v in sorted(by_fold.items())])
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def table5(evaluations: Sequence[dict], dataset: str, title: str | None = None,
           missing: Sequence[dict] = ()) -> RenderedTable:
    """Table 5 on ``dataset``: rows the models of Table 2 (its order), columns clean and each perturbation."""
    evaluations = [e for e in evaluations if e["dataset"] == dataset]
    modalities = evaluations[0]["modalities"] if evaluations else []
    cols = columns(modalities)
    groups = {e["model"]: e.get("group") or "Ours" for e in evaluations}
    names = _ordered(list(groups), groups)
    header = ["Model"] + [h for _, _, h in cols]
    csv_header = ["model", "folds", "seeds"] + [f"{key} {part}" for key, _, _ in cols
                                                for part in (("miF1 mean", "miF1 std") if key == "clean" else
                                                             ("miF1 mean", "miF1 std", "drop mean", "drop std"))]
    rows, csv_rows, drops = [], [], {}
    unavailable: set[str] = set()
    for name in names:
        mine = [e for e in evaluations if e["model"] == name]
        row, csv_row = [name], [name, len({e["fold"] for e in mine}), len({e["seed"] for e in mine})]
        drops[name] = {}
        for key, _, _ in cols:
            if any(METRIC not in e["scores"].get(key, {}) for e in mine):  # see evaluate_cell
                unavailable.update(e["scores"].get(key, {}).get("unavailable", key) for e in mine
                                   if METRIC not in e["scores"].get(key, {}))
                row.append("–")
                csv_row += [None] * (2 if key == "clean" else 4)
                if key != "clean":
                    drops[name][key] = float("nan")  # a blank square in figure 5
                continue
            mean, std = _mean_over_rotations(mine, lambda e, k=key: e["scores"][k][METRIC])
            if key == "clean":
                row.append(f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}"))
                csv_row += [round(100 * mean, 2), None if std is None else round(100 * std, 2)]
                continue
            drop, drop_std = _mean_over_rotations(
                mine, lambda e, k=key: e["scores"][k][METRIC] - e["scores"]["clean"][METRIC])
            drops[name][key] = 100 * drop
            row.append(f"{100 * mean:.1f} ({100 * drop:+.1f})".replace("-", "−"))
            csv_row += [round(100 * mean, 2), None if std is None else round(100 * std, 2), round(100 * drop, 2),
                        None if drop_std is None else round(100 * drop_std, 2)]
        rows.append(row)
        csv_rows.append(csv_row)
    shown = title or dataset
    letters = ", ".join(f"{ABBREVIATIONS.get(m, m)}: {m}" for m in sorted(modalities, key=_modality_rank))
    notes = [protocol_note(evaluations, shown),
             "Each cell: test miF1 (%) of the Table 2 run folders, not retrained, with the drop from the clean score "
             "in parentheses (perturbed − clean, averaged as the scores: seeds within a rotation, then rotations). "
             f"−X: modality X removed (all its nodes absent); X↔: each test song's X replaced by another test "
             f"song's "
             f"(one random cycle through the test songs); σ=s: Gaussian noise of std s added to every standardised "
             f"feature (features have unit variance on the training split). {letters}. Random draws: each cell's "
             f"training seed.",
             ]
    off = [e for e in evaluations if abs(e["scores"]["clean"][METRIC] - e["table2_micro_f1"]) > CLEAN_TOLERANCE]
    if off:
        notes.append(f"Warning: for {len(off)} cell(s) the clean score recomputed from the run folder differs from "
                     f"Table 2's (first {off[0]['key']}: {100 * off[0]['scores']['clean'][METRIC]:.2f} vs "
                     f"{100 * off[0]['table2_micro_f1']:.2f}): that run folder is not what its cell scored.")
    elif evaluations:
        notes.append("The clean column is recomputed from the run folders and equals Table 2's miF1 for every cell.")
    if evaluations:
        notes.append(f"Evaluating the perturbations took {sum(e.get('seconds', 0.0) for e in evaluations):.0f} s "
                     f"for {len(evaluations)} run folder(s) (time of each first evaluation; later runs reuse them).")
    if unavailable:
        notes.append("–: the perturbation cannot be applied to this test split (" + "; ".join(sorted(unavailable))
                     + ").")
    gone = sorted({r["model"] for r in missing if r.get("dataset") == dataset})
    if gone:
        notes.append(f"Without a run folder (cells stored before estimators kept one, or an estimator the safe "
                     f"format cannot hold: the record's run_folder_error): {', '.join(gone)}; not in this table.")
    caption = (f"Robustness at prediction time (beyond the paper): miF1 with inputs removed, shuffled or noisy, on "
               f"{shown}.")
    table = RenderedTable(TABLE_NAME, header, rows, notes, caption=caption, csv_header=csv_header,
                          csv_rows=csv_rows, text_columns=1)
    table.drops = drops  # for the figure
    return table


def figure5(table: RenderedTable, out_dir: Path, title: str, stem: str = FIGURE_NAME) -> list[Path]:
    """The drops of Table 5 as a heatmap: models down, perturbations across, the drop (points of miF1) in each
    square (red: a loss)."""
    from baselines.figures import _pyplot, _save

    names = list(table.drops)
    keys = list(next(iter(table.drops.values()))) if names else []
    if not names or not keys:
        return []
    plt = _pyplot()
    values = np.array([[table.drops[n][k] for k in keys] for n in names])
    limit = max(1.0, float(np.nanmax(np.abs(values)))) if np.isfinite(values).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(keys), 0.9 + 0.4 * len(names)))
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(keys)), table.header[2:], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(keys)):
            ax.text(j, i, "–" if np.isnan(values[i, j]) else f"{values[i, j]:+.1f}", ha="center", va="center",
                    fontsize=7)
    fig.colorbar(image, ax=ax, label="miF1 drop (points)")
    ax.set_title(f"Robustness at prediction time: miF1 − clean, {title}", fontsize=9)
    paths = _save(fig, Path(out_dir), stem)
    plt.close(fig)
    return paths


def write_robustness(records: Sequence[dict], roots: Mapping[str, Path], manifests: Mapping[str, dict],
                     out_dir: Path, progress: bool = False) -> dict:
    """Table 5 and its figure for every dataset of the run: ``{"tables": [md paths], "figures": [paths],
    "seconds": wall time of this call}``. Only records of the current builds count (``current_build``)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    records = current_build(records, dict(manifests))
    evaluations, missing = robustness_records(records, roots, out_dir, progress)
    tables, figures = [], []
    several = len(roots) > 1
    for dataset in roots:
        if not any(e["dataset"] == dataset for e in evaluations):
            continue
        title = dataset_title(manifests[dataset])
        table = table5(evaluations, dataset, title, missing)
        if several:  # one table per dataset: the dataset in the file name
            table.name = f"{TABLE_NAME}_{dataset}"
        table.write(out_dir)
        tables.append(out_dir / f"{table.name}.md")
        figures += figure5(table, out_dir, title, f"{FIGURE_NAME}_{dataset}" if several else FIGURE_NAME)
    if not tables:  # an earlier run's Table 5 must not sit beside this run's tables
        for suffix in ("md", "csv", "tex"):
            (out_dir / f"{TABLE_NAME}.{suffix}").unlink(missing_ok=True)
    return {"tables": tables, "figures": figures, "seconds": time.perf_counter() - started}
