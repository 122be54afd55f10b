"""The probe suite (issue 22): every model on every probe sample, one table and one figure.

A probe sample (``nemu.sample.make_sample(probe=NAME)``, the names in ``nemu.sample.PROBES``) is the embedded
sample made so that one mechanism is needed to do well (cross-modal interaction, one node among many, label
co-occurrence, telling reliable from unreliable modalities), plus two controls: ``null`` (labels independent of
every feature: every model must sit at the constant baseline) and ``linear`` (the additive signal of the default
sample). The generator writes into ``RAW/provenance.json``, and the build into the manifest's ``source``, its own
Bayes-optimal decision's scores (``ceiling``) and those of the best constant label set (``constant_baseline``).

:func:`run_suite` writes each probe's raw folder and builds it under ``OUT/probes/<probe>/`` (``raw/``,
``data/``), reusing a build whose request fingerprint (:func:`probe_request`: probe, songs, seed, image encoder
and the digest of the generator's and the builder's code) matches the one recorded beside it, then runs the grid
of ``baselines.run_all`` on every probe (the same results store ``OUT/results.jsonl``, the same resumability,
workers, cell identities and seeds as Table 2; the datasets are named ``probe-<probe>``), and writes
``OUT/probe_table.{md,csv,tex}`` and ``OUT/probe_figure.{png,pdf}``. Each cell of the table is the test
micro-F1 (%), mean ± sample std over rotations of the seed-averaged values, as Table 2's
(``baselines.tables.summarise``).

Beyond the paper: the paper has no probe suite; the table and the figure are this toolkit's. Unlike Table 2
(fixed 0.5), the suite's decision threshold is chosen per cell on validation by default
(:data:`SUITE_THRESHOLD_RULE`), the rule the probes' ceilings follow.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from baselines import run_all
from baselines.results import OutLock
from baselines.tables import (RenderedTable, _folds_note, _format, _number, _ordered, protocol_note, summarise)
from mmer.code import code_digest, import_closure, module_path, sha256_of
from nemu.atomic import atomic_write_text
from nemu.build import BuildOptions, build
from nemu.shards import read_manifest

#: Songs generated per probe by default: chosen so that BR, HHMPN, its four ablations and MulT on the six probes
#: (5 rotations x 3 seeds, quick profile) fit within 45 minutes on the 2-core project machine (README, "The
#: probe suite").
PROBE_SONGS = 160
PROBE_SEED = 0
PROBE_IMAGE_ENCODER = "efficientnet-lite0"  # offline, shipped: nothing is downloaded
SUITE_FOLDER = "probes"
REQUEST_FILE = "request.json"
TABLE_NAME = "probe_table"
FIGURE_NAME = "probe_figure"
FIGURE_FORMATS = ("png", "pdf")
METRIC = "micro_f1"
#: The generator's and the builder's modules: a change to their code (or to what they import) rebuilds the probes.
BUILD_MODULES = ("nemu.sample", "nemu.build")
#: The suite's decision threshold rule (``mmer.tuning.THRESHOLD_RULES``): each probe's ceiling thresholds the
#: generator's posterior at the best threshold of the grid (``nemu.probes``), so the models choose theirs on
#: validation too. At Table 2's fixed 0.5 a calibrated model on ``null`` predicts no label (every label's
#: probability is its prior, below 0.5) and sits far below the constant baseline that probe is meant to test.
SUITE_THRESHOLD_RULE = "validation"


def dataset_name(probe: str) -> str:
    """The name a probe's build has in the grid, the results store and the run folders."""
    return f"probe-{probe}"


def available_probes() -> tuple[str, ...]:
    """The generator's probes (``nemu.sample.PROBES``); ValueError when this checkout's generator has none."""
    from nemu import sample

    probes = getattr(sample, "PROBES", None)
    if not probes:
        raise ValueError("nemu.sample has no probe generator (nemu.sample.PROBES): this checkout cannot make the "
                         "probe samples")
    return tuple(probes)


def check_probes(names: Sequence[str] | None) -> list[str]:
    """``names`` (default: every probe) checked against the generator's; ValueError naming the flag and the choices."""
    known = available_probes()
    if not names:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--probes: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [n for n in known if n in names]  # the generator's order, whatever the order given


def _code_digest(modules: Sequence[str]) -> str:
    files = {}
    for module in import_closure(modules):
        path = module_path(module)
        if path is not None:
            files[module] = sha256_of(path)
    return code_digest(files)


def probe_request(probe: str, songs: int, seed: int) -> dict:
    """What a probe's build is made from: a recorded request equal to this one means the build can be reused."""
    return {"probe": probe, "songs": int(songs), "seed": int(seed), "image_encoder": PROBE_IMAGE_ENCODER,
            "code_digest": _code_digest(BUILD_MODULES)}


def _recorded_request(folder: Path) -> dict | None:
    try:
        return json.loads((folder / REQUEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_probe(probe: str, folder: Path, songs: int = PROBE_SONGS, seed: int = PROBE_SEED, *,
                 workers: int = 1, progress: bool = True, cache_dir: Path | None = None) -> tuple[Path, bool]:
    """The build of ``probe`` under ``folder`` (``raw/``, ``data/``): reused when its recorded request equals
    :func:`probe_request`, else the raw folder is written again and built. Returns (data folder, built now?)."""
    from nemu.sample import make_sample

    folder = Path(folder)
    raw, data = folder / "raw", folder / "data"
    request = probe_request(probe, songs, seed)
    if (data / "manifest.json").is_file() and _recorded_request(folder) == request:
        return data, False
    (folder / REQUEST_FILE).unlink(missing_ok=True)  # a build in progress is never taken for a finished one
    make_sample(raw, songs, seed, probe=probe, overwrite=True, progress=progress)
    build(BuildOptions(raw_dir=raw, out_dir=data, seed=seed, image_encoder=PROBE_IMAGE_ENCODER, workers=workers,
                       progress=progress, cache_dir=cache_dir))
    atomic_write_text(folder / REQUEST_FILE, json.dumps(request, indent=2, sort_keys=True) + "\n")
    return data, True


def ensure_probes(probes: Sequence[str], out: Path, songs: int = PROBE_SONGS, seed: int = PROBE_SEED, *,
                  workers: int = 1, progress: bool = True) -> dict[str, Path]:
    """Every probe built under ``OUT/probes/`` (one feature cache shared by all), under that folder's own lock;
    returns {dataset name: data folder} in the order of ``probes``."""
    root = run_all.check_out(Path(out) / SUITE_FOLDER)
    datasets = {}
    with OutLock(root):
        for probe in probes:
            data, built = ensure_probe(probe, root / probe, songs, seed, workers=workers, progress=progress,
                                       cache_dir=root / ".cache")
            print(f"probe {probe}: {'built' if built else 'reusing the build at'} {data}")
            datasets[dataset_name(probe)] = data
    return datasets


# --- the table ----------------------------------------------------------------------------------------------


def _reference(manifest: Mapping, key: str) -> float | None:
    value = ((manifest.get("source") or {}).get(key) or {}).get(METRIC)
    return float(value) if isinstance(value, (int, float)) else None


def _percent(value: float | None) -> str:
    return "–" if value is None else _format(METRIC, value)


def _songs_phrase(manifests: Mapping[str, Mapping]) -> str:
    """How many songs stand behind the columns: generated per probe, and kept by the build where that differs
    (a song without an emotion tag is not kept)."""
    kept = {probe: (m.get("counts") or {}).get("kept") for probe, m in manifests.items()}
    generated = {(m.get("source") or {}).get("songs") for m in manifests.values()}
    if len(generated) == 1 and set(kept.values()) == generated:
        return f"{next(iter(generated))} songs each"
    text = (f"{next(iter(generated))} songs generated each" if len(generated) == 1 and None not in generated
            else "songs generated: " + ", ".join(f"{p} {(m.get('source') or {}).get('songs')}"
                                                  for p, m in manifests.items()))
    return text + "; kept (with an emotion tag): " + ", ".join(f"{p} {n}" for p, n in kept.items())


def probe_table(records: Sequence[dict], manifests: Mapping[str, Mapping]) -> RenderedTable:
    """Rows: models (Table 2's order); columns: probes (``manifests``' order, keyed by probe); each cell the test
    micro-F1 (%) mean ± std over rotations of the seed-averaged values; each header the probe's ceiling and
    constant baseline."""
    names = {dataset_name(p): p for p in manifests}
    ok: dict[tuple[str, str], list[dict]] = defaultdict(list)
    not_applicable: dict[tuple[str, str], str] = {}
    groups: dict[str, str] = {}
    for record in records:
        probe = names.get(record.get("dataset"))
        if probe is None:
            continue
        groups[record["model"]] = record.get("group", "")
        if record.get("status") == "ok":
            ok[(record["model"], probe)].append(record)
        elif record.get("status") == "not_applicable":
            not_applicable[(record["model"], probe)] = record.get("reason", "not applicable")
    present = _ordered(list(groups), groups)
    ceilings = {p: _reference(m, "ceiling") for p, m in manifests.items()}
    constants = {p: _reference(m, "constant_baseline") for p, m in manifests.items()}
    header = ["Group", "Approach"] + [f"{p} (ceiling {_percent(ceilings[p])}, constant {_percent(constants[p])})"
                                      for p in manifests]
    csv_header = ["group", "approach"] + [f"{p} miF1(%) {part}" for p in manifests for part in ("mean", "std",
                                                                                               "rotations")]
    csv_rows = [["reference", label] + [v for p in manifests for v in (_number(METRIC, values[p]), None, None)]
                for label, values in (("ceiling", ceilings), ("constant baseline", constants))]
    rows, counts = [], {}
    for model in present:
        row, csv_row, folds = [groups[model], model], [groups[model], model], set()
        for probe in manifests:
            if (model, probe) not in ok:
                row.append("–")
                csv_row += [None, None, None]
                continue
            summary = summarise(ok[(model, probe)], METRIC)
            folds |= set(summary.per_fold)
            row.append(_format(METRIC, summary.mean, summary.std))
            csv_row += [_number(METRIC, summary.mean), _number(METRIC, summary.std), summary.folds]
        counts[model] = sorted(folds)
        rows.append(row)
        csv_rows.append(csv_row)
    used = [r for rs in ok.values() for r in rs]
    title = "probe samples (synthetic, " + _songs_phrase(manifests) + ")"
    seeds = sorted({(m.get("source") or {}).get("seed") for m in manifests.values()} - {None})
    notes = [_folds_note({m: f for m, f in counts.items() if f}, " of the seed-averaged values"),
             protocol_note(used, title),
             "Each column is one probe sample (nemu-sample --probe COLUMN" + (f" --seed {seeds[0]}"
                                                                                if len(seeds) == 1 else "")
             + "); its header gives the micro-F1 of the generator's Bayes-optimal decision, computed from its own "
               "latent variables (ceiling), and of the best constant label set (constant baseline), as the probe's "
               "build records them (manifest source). A model above the ceiling, or on null above the constant "
               "baseline by more than its spread, points to a leak."]
    notes += [f"– {model} on {probe}: {reason}" for (model, probe), reason in sorted(not_applicable.items())
              if (model, probe) not in ok]
    caption = f"Test micro-F1 (%) of each model on the {title}."
    return RenderedTable(TABLE_NAME, header, rows, [n for n in notes if n], caption=caption, csv_header=csv_header,
                         csv_rows=csv_rows, label="tab:probe-table", text_columns=2, merge_first_column=True)


# --- the figure ---------------------------------------------------------------------------------------------


def probe_figure(records: Sequence[dict], manifests: Mapping[str, Mapping], out_dir: Path) -> list[Path]:
    """One panel per probe: each model's test micro-F1 (mean over rotations, error bar ± std) between the
    probe's constant baseline (dashed grey) and its ceiling (dashed green). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = probe_table(records, manifests)  # the same numbers as the table, read from its CSV rows
    probes = list(manifests)
    models = [row[1] for row in table.csv_rows if row[0] != "reference"]
    reference = {row[1]: row for row in table.csv_rows if row[0] == "reference"}
    fig, axes = plt.subplots(1, len(probes), figsize=(2.2 + 1.9 * len(probes), 4.2), sharey=True, squeeze=False)
    positions = np.arange(len(models))
    for index, (ax, probe) in enumerate(zip(axes[0], probes)):
        column = 2 + 3 * index
        means = [row[column] for row in table.csv_rows if row[0] != "reference"]
        stds = [row[column + 1] for row in table.csv_rows if row[0] != "reference"]
        shown = [i for i, m in enumerate(means) if m is not None]
        ax.errorbar(positions[shown], [means[i] for i in shown], yerr=[stds[i] or 0.0 for i in shown], fmt="o",
                    color="tab:blue", capsize=3)
        for label, colour in (("constant baseline", "grey"), ("ceiling", "tab:green")):
            value = reference[label][column]
            if value is not None:
                ax.axhline(value, linestyle="--", color=colour, linewidth=1, label=label if index == 0 else None)
        ax.set_title(probe, fontsize=10)
        ax.set_xticks(positions, models, rotation=70, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test micro-F1 (%)")
    axes[0][0].set_ylim(0, 100)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:  # beside the panels, where it hides no point
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    title = table.caption.rstrip(".") + "; mean ± std over rotations of the seeds' mean"
    fig.suptitle(textwrap.fill(title, width=max(60, 30 * len(probes))), fontsize=9)
    fig.tight_layout()
    out_dir = Path(out_dir)
    paths = []
    for suffix in FIGURE_FORMATS:
        path = out_dir / f"{FIGURE_NAME}.{suffix}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def write_report(records: Sequence[dict], datasets: Mapping[str, Path], out: Path) -> tuple[list[Path], list[Path]]:
    """The probe table (markdown, CSV, LaTeX) and the figure from the records of the current builds."""
    from baselines.tables import current_build

    by_name = {name: read_manifest(root) for name, root in datasets.items()}
    records = current_build(records, by_name)
    manifests = {name.removeprefix("probe-"): manifest for name, manifest in by_name.items()}
    table = probe_table(records, manifests)
    table.write(Path(out))
    if table.rows:
        figures = probe_figure(records, manifests, out)
    else:  # no result of this grid: an earlier run's figure must not stand beside this table
        figures = []
        for suffix in FIGURE_FORMATS:
            (Path(out) / f"{FIGURE_NAME}.{suffix}").unlink(missing_ok=True)
    return [Path(out) / f"{TABLE_NAME}.md"], figures


def run_suite(model_names: list[str], folds: list[int], seeds: list[int], profile: str, out: Path, *,
              probes: Sequence[str] | None = None, songs: int = PROBE_SONGS, seed: int = PROBE_SEED,
              progress: bool = True, jobs: int = 1, threads: int = 1, **grid) -> dict:
    """Build every probe (or reuse its build), run the grid of ``baselines.run_all`` on all of them (no Table 3),
    write the probe table and figure. ``grid`` passes on to :func:`baselines.run_all.run` (device, engine,
    input_normalization, threshold (default :data:`SUITE_THRESHOLD_RULE`), empty_union, overrides). Returns
    run_all's summary plus ``datasets``."""
    probes = check_probes(probes)
    grid.setdefault("threshold", SUITE_THRESHOLD_RULE)
    datasets = ensure_probes(probes, out, songs, seed, workers=jobs, progress=progress)
    summary = run_all.run(datasets, model_names, folds, seeds, profile, out, table3=False, progress=progress,
                          jobs=jobs, threads=threads, report=lambda records: write_report(records, datasets, out),
                          **grid)
    return summary | {"datasets": datasets}
