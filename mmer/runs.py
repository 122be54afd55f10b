"""The run folder: what one trained neural model leaves behind, for every model (HHMPN and the baselines).

Written by ``hhmpn.train`` and by every cell of ``baselines.run_all``; read by ``hhmpn.predict`` and Table 5
(``baselines.robustness``)::

    RUN/model.pt            a neural run: state_dict of the selected (best-validation) checkpoint, weights_only-loadable
    RUN/estimator.json/.npz an estimator's run (run.json's kind "estimator"): the fitted estimator without pickle
                            (``mmer.saved_estimators``), with run.json's selected, threshold_rule and decision
    RUN/run.json            model (registry name), config (resolved, with seed), modality_dims, labels,
                            fold, seed, input_normalization, dataset, data (the dataset's absolute path),
                            data_relative (its path relative to RUN), dataset_fingerprint, columns
    RUN/normalization.json  the input-normalisation statistics of the training split (nemu.normalization)
    RUN/train_labels.npy    the training split's 0/1 label matrix (int8), which some factories build
                            label graphs from (ML-GCN, KRF); loaded with allow_pickle=False

``run.json`` is written last (atomically), so a folder with a run.json is complete. A model is rebuilt as
``mmer.registry.models()[run["model"]].factory(run["config"], info)`` with ``info`` from the folder.

Run folders travel: :func:`find_dataset` looks for the run's dataset relative to the run folder first
(``data_relative``, so a run folder moved together with its dataset still finds it, from any working folder),
then at ``data`` (absolute; relative to the working folder in run.json files older than ``data_relative``),
and accepts a folder only when it is the run's build (:func:`check_build`: labels, modality dims and the
manifest's fingerprint). :func:`read_statistics` refuses statistics a float32 model cannot use.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from nemu.atomic import atomic_write_bytes, atomic_write_text
from nemu.normalization import NORMALIZATION_FILE, NodeStatistics, check_setting
from nemu.shards import MANIFEST_FILE, dataset_fingerprint, read_manifest

CHECKPOINT_FILE = "model.pt"
RUN_FILE = "run.json"
TRAIN_LABELS_FILE = "train_labels.npy"
RUN_FORMAT = "mmer-run/1"
REQUIRED_KEYS = ("model", "config", "modality_dims", "labels", "input_normalization")


class RunFolderError(ValueError):
    """A run folder that cannot be used: missing or unreadable files, or contents that do not fit."""

def start_run(run_dir: Path) -> Path:
    """Create the folder and drop an earlier run.json, so the folder counts as complete only when rewritten."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).unlink(missing_ok=True)
    return run_dir


def write_run(run_dir: Path, *, model: str, config: dict, info, fold: int | None, seed: int,
              statistics: NodeStatistics, data: Path, manifest: dict, extra: dict | None = None) -> dict:
    """Write normalization.json, train_labels.npy and (last) run.json; ``info`` is a ``DataInfo``."""
    run_dir = Path(run_dir)
    where = dataset_locations(run_dir, data)
    statistics.save(run_dir / NORMALIZATION_FILE)
    labels = io.BytesIO()
    np.save(labels, np.asarray(info.train_labels, dtype=np.int8), allow_pickle=False)
    atomic_write_bytes(run_dir / TRAIN_LABELS_FILE, labels.getvalue())
    run = {"format": RUN_FORMAT, "model": model, "config": dict(config), "modality_dims": dict(info.modality_dims),
           "modalities": list(info.modality_dims), "labels": list(info.label_names), "fold": fold, "seed": seed,
           "input_normalization": statistics.setting, "dataset": info.dataset, **where,
           "dataset_fingerprint": dataset_fingerprint(manifest), "columns": list(info.columns),
           "files": {"checkpoint": CHECKPOINT_FILE, "normalization": NORMALIZATION_FILE,
                     "train_labels": TRAIN_LABELS_FILE}} | (extra or {})
    atomic_write_text(run_dir / RUN_FILE, json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    return run


def dataset_locations(run_dir: Path, data: Path) -> dict:
    """run.json's record of where the dataset is: ``data`` (absolute) and ``data_relative`` (from the run folder;
    None where no relative path exists, as across Windows drives)."""
    absolute = os.path.abspath(data)
    try:
        relative = os.path.relpath(absolute, os.path.abspath(run_dir))
    except ValueError:
        relative = None
    return {"data": absolute, "data_relative": relative}


def check_build(run: dict, manifest: dict, data: Path, run_dir: Path | None = None) -> None:
    """RunFolderError unless ``manifest`` (of the dataset folder ``data``) is the build the run was trained on:
    the same labels, the run's modalities with the run's dims, and the fingerprint run.json recorded (runs
    written before fingerprints were recorded are checked on labels and dims only). The one check of
    ``hhmpn-predict --data`` and ``--raw``."""
    who = f"the run {run_dir}" if run_dir is not None else "the run"
    labels = list(manifest.get("labels") or [])
    if labels != list(run["labels"]):
        raise RunFolderError(f"{data}: labels {labels} differ from those {who} was trained on {run['labels']}: "
                             f"pass the run's own dataset, or retrain the run on {data}")
    dims = {m.get("name"): m.get("dim") for m in manifest.get("modalities") or []}
    for modality, dim in run["modality_dims"].items():
        if modality not in dims:
            raise RunFolderError(f"{data}: has no modality {modality!r}, which {who} needs (it has "
                                 f"{', '.join(map(str, dims)) or 'none'}): pass the run's own dataset")
        if dims[modality] != dim:
            raise RunFolderError(f"{data}: modality {modality!r} has dim {dims[modality]}, {who} was trained on "
                                 f"dim {dim}: pass the run's own dataset, or retrain the run on {data}")
    expected, found = run.get("dataset_fingerprint"), dataset_fingerprint(manifest)
    if expected and expected != found:
        raise RunFolderError(
            f"{data}: {who} was trained on build {expected[:12]}.., {data} is build {found[:12]}.. (another "
            f"fingerprint: a rebuild may have other features, settings, word vectors, seed or split): pass the "
            f"run's own dataset, or retrain the run on {data}")


def read_build(data: Path, run: dict, run_dir: Path | None = None) -> dict:
    """The manifest of the dataset folder ``data``, checked to be the run's build (:func:`check_build`);
    RunFolderError (one line: the folder does not exist, is not a built dataset, or is another build)."""
    data, who = Path(data), (f"the run {run_dir}" if run_dir is not None else "the run")
    if not data.exists():
        raise RunFolderError(f"{data}: does not exist; the dataset {who} was trained on is not there: pass --data "
                             f"with that dataset where it is now")
    if not data.is_dir():
        raise RunFolderError(f"{data}: not a folder; pass --data with the built dataset the run was trained on")
    try:
        manifest = read_manifest(data)
    except FileNotFoundError as exc:
        raise RunFolderError(str(exc)) from None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise RunFolderError(f"{data}/{MANIFEST_FILE}: unreadable ({str(exc).splitlines()[0] if str(exc) else ''})"
                             ) from None
    if not isinstance(manifest, dict):
        raise RunFolderError(f"{data}/{MANIFEST_FILE}: not a JSON object")
    check_build(run, manifest, data, run_dir)
    return manifest


def dataset_candidates(run_dir: Path, run: dict) -> list[Path]:
    """Where the run's dataset may be now, in the order tried: relative to the run folder, then ``data``."""
    out = []
    if run.get("data_relative"):
        relative = Path(run_dir) / run["data_relative"]
        out.append(relative.resolve() if relative.exists() else relative)  # shown without the ..
    if run.get("data"):
        out.append(Path(run["data"]))
    return out


def find_dataset(run_dir: Path, run: dict) -> Path:
    """The run's own dataset where it is now: the first of :func:`dataset_candidates` that holds a manifest of
    the run's build (:func:`check_build`). RunFolderError naming the places tried, or why the dataset found
    there is not the run's, otherwise."""
    candidates = dataset_candidates(run_dir, run)
    if not candidates:
        raise RunFolderError(f"{run_dir}/{RUN_FILE} names no dataset; pass --data with the dataset the run was "
                             f"trained on")
    refusal = None
    for candidate in candidates:
        if not (candidate / MANIFEST_FILE).is_file():
            continue
        try:
            read_build(candidate, run, run_dir)
        except RunFolderError as exc:
            refusal = refusal or exc
            continue
        return candidate
    if refusal is not None:
        raise RunFolderError(str(refusal)) from None
    tried = " or ".join(dict.fromkeys(str(c) for c in candidates))
    raise RunFolderError(f"{tried}: the dataset {run_dir} was trained on is not there (no {MANIFEST_FILE}); pass "
                         f"--data with that dataset where it is now")


def read_run(run_dir: Path) -> dict:
    """run.json of a run folder, checked for the keys a rebuild needs; RunFolderError otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: not a run folder (no such directory)")
    if not path.is_file():
        raise RunFolderError(f"{run_dir}: not a complete run folder (no {RUN_FILE})")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(run, dict):
        raise RunFolderError(f"{path}: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in run]
    if missing:
        raise RunFolderError(f"{path}: lacks {', '.join(missing)} (not written by this toolkit's hhmpn.train or "
                             "run_all; train it again)")
    dims, labels = run["modality_dims"], run["labels"]
    if not (isinstance(dims, dict) and dims and all(isinstance(v, int) and v > 0 for v in dims.values())):
        raise RunFolderError(f"{path}: modality_dims must map modality names to positive integers")
    if not (isinstance(labels, list) and labels and all(isinstance(v, str) for v in labels)):
        raise RunFolderError(f"{path}: labels must be a non-empty list of names")
    if not isinstance(run["config"], dict):
        raise RunFolderError(f"{path}: config must be a JSON object")
    try:
        check_setting(run["input_normalization"])
    except ValueError as exc:
        raise RunFolderError(f"{path}: {exc}") from None
    return run


def read_statistics(run_dir: Path, run: dict) -> NodeStatistics:
    path = Path(run_dir) / NORMALIZATION_FILE
    try:
        statistics = NodeStatistics.load(path)
    except (FileNotFoundError, ValueError, OverflowError) as exc:
        raise RunFolderError(str(exc)) from None
    if statistics.modality_dims != run["modality_dims"]:
        raise RunFolderError(f"{path}: statistics for {statistics.modality_dims}, the run has {run['modality_dims']}")
    if statistics.setting != run["input_normalization"]:
        raise RunFolderError(f"{path}: setting {statistics.setting!r}, run.json says {run['input_normalization']!r}")
    check_statistics(statistics, path)
    return statistics


FLOAT32 = np.finfo(np.float32)


def check_statistics(statistics: NodeStatistics, path: Path) -> None:
    """RunFolderError naming the file and key of the first mean or std that a float32 model cannot use:
    not finite, a mean beyond float32's range, a std that is not positive or outside float32's normal range
    (std 1e-300 or mean 1e300 would turn every feature into inf or NaN)."""
    for modality in statistics.modality_dims:
        for key, values in (("mean", statistics.mean[modality]), ("std", statistics.std[modality])):
            values = np.asarray(values, dtype=np.float64)
            if key == "mean":
                bad = ~np.isfinite(values) | (np.abs(values) > FLOAT32.max)
                rule = "finite and within float32's range"
            else:
                bad = ~np.isfinite(values) | (values < FLOAT32.tiny) | (values > FLOAT32.max)
                rule = f"positive and within float32's range ({FLOAT32.tiny:.3g} to {FLOAT32.max:.3g})"
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise RunFolderError(f"{path}: modalities.{modality}.{key}[{i}] = {values[i]!r} is not {rule}; "
                                     f"the statistics are damaged: restore the run folder or retrain")


def read_train_labels(run_dir: Path, run: dict) -> np.ndarray:
    path = Path(run_dir) / TRAIN_LABELS_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: missing (the training label statistics the model is rebuilt from)")
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise RunFolderError(f"{path}: unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                             ) from None
    if labels.ndim != 2 or labels.shape[1] != len(run["labels"]) or not np.isin(labels, (0, 1)).all():
        raise RunFolderError(f"{path}: not a 0/1 matrix with {len(run['labels'])} label columns "
                             f"(shape {labels.shape})")
    return labels.astype(np.int8)


def load_state_dict(run_dir: Path) -> dict:
    """model.pt loaded with ``weights_only=True`` on the CPU; anything else (pickled code) is refused."""
    import torch

    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: missing (no trained weights in this run folder)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-running pickles, RuntimeError/EOFError for broken files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(f"{path}: refused, not a weights-only state_dict ({reason[:200]})") from None
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in state.items())):
        raise RunFolderError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    return state


def check_state_fits(model, state: dict, path: Path) -> None:
    """RunFolderError naming the first missing, unexpected or wrongly shaped entry."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (first {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(expected[k].shape)} in the model)")
        raise RunFolderError(f"{path}: does not fit the model run.json describes: {'; '.join(parts)}")
