"""A fitted scikit-learn estimator (BR, CC, LP, ECC) saved without pickle, and loaded without running its code.

An estimator's run folder (``mmer.runs``) holds ``estimator.json`` (the object tree: each object's class and
attributes, plain JSON values, lists, tuples and dicts) and ``estimator.npz`` (every numpy array
of the tree, saved and loaded with ``allow_pickle=False``, so no object array).

Why it is safe to load a file from elsewhere: nothing is unpickled, and the only code a file can make run is
creating objects of *allowed* classes (``cls.__new__``, no ``__init__``, no ``__setstate__``) whose
attributes are then set from the file. Allowed classes are the fixed list :data:`SKLEARN_CLASSES` and the scikit-learn
estimator classes (``BaseEstimator`` subclasses) defined in the model's own registering module (the module the
registry loaded, e.g. ``baselines.classical``; it is never imported by name from the file). Any other class,
any value of another type and any array of object dtype is refused with :class:`EstimatorFileError`, naming
the file and the place in the tree. A ``numpy.random.RandomState`` (an estimator's ``random_state`` may hold
one) is stored as its ``get_state()`` and rebuilt with ``set_state``.

The scikit-learn version is recorded; another version loads with a warning naming the file (scikit-learn does
not promise that a fitted estimator's attributes mean the same across versions).

Shared references (one array referred to by two attributes) are saved twice and loaded as two equal copies:
prediction reads them only, so the loaded estimator predicts exactly as the saved one.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import sklearn
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import ClassifierChain, MultiOutputClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from nemu.atomic import atomic_write_bytes, atomic_write_text

STATE_FILE = "estimator.json"
ARRAYS_FILE = "estimator.npz"
FORMAT = "mmer-estimator/1"
SKLEARN_CLASSES = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in
                   (LogisticRegression, StandardScaler, Pipeline, ClassifierChain, MultiOutputClassifier, LinearSVC)}
MAX_DEPTH = 64


class EstimatorFileError(ValueError):
    """An estimator file that cannot be saved or loaded safely (the message names the file and the place)."""


def _class_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def save_estimator(run_dir: Path, estimator, module: ModuleType) -> list[Path]:
    """Write ``estimator.json`` and ``estimator.npz`` into ``run_dir`` (atomically); returns both paths."""
    arrays: list[np.ndarray] = []
    allowed = allowed_classes(module)

    def encode(value, where: str, depth: int):
        if depth > MAX_DEPTH:
            raise EstimatorFileError(f"{where}: nested deeper than {MAX_DEPTH} (a cycle?)")
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, (np.integer, np.floating)):
            return value if np.isfinite(value) else {"float": repr(float(value))}
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return {"scalar": value.dtype.str, "value": value.item() if np.isfinite(value) else repr(value.item())}
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise EstimatorFileError(f"{where}: an array of Python objects cannot be saved without pickle")
            arrays.append(value)
            return {"array": len(arrays) - 1}
        if isinstance(value, list):
            return [encode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"tuple": [encode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]}
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):  # LP's labelset index: tuple keys
                return {"items": [[encode(k, f"{where} key", depth + 1), encode(v, f"{where}[{k!r}]", depth + 1)]
                                  for k, v in value.items()]}
            return {"dict": {k: encode(v, f"{where}.{k}", depth + 1) for k, v in value.items()}}
        if isinstance(value, np.random.RandomState):
            return {"random_state": encode(value.get_state(), f"{where}.random_state", depth + 1)}
        name = _class_name(value)
        if name not in allowed:
            raise EstimatorFileError(f"{where}: an object of class {name}, which is not an allowed estimator class")
        return {"object": name, "state": {k: encode(v, f"{where}.{k}", depth + 1) for k, v in vars(value).items()}}

    tree = {"format": FORMAT, "module": module.__name__, "sklearn": sklearn.__version__,
            "estimator": encode(estimator, "estimator", 0)}
    buffer = io.BytesIO()
    np.savez(buffer, **{f"a{i}": a for i, a in enumerate(arrays)}, allow_pickle=False)
    run_dir = Path(run_dir)
    atomic_write_bytes(run_dir / ARRAYS_FILE, buffer.getvalue())
    atomic_write_text(run_dir / STATE_FILE, json.dumps(tree, ensure_ascii=False, allow_nan=False) + "\n")
    return [run_dir / STATE_FILE, run_dir / ARRAYS_FILE]


def allowed_classes(module: ModuleType) -> dict[str, type]:
    """:data:`SKLEARN_CLASSES` and the ``BaseEstimator`` subclasses defined in ``module`` (the model's own)."""
    own = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in vars(module).values()
           if isinstance(cls, type) and issubclass(cls, BaseEstimator) and cls.__module__ == module.__name__}
    return SKLEARN_CLASSES | own


def load_estimator(run_dir: Path, module: ModuleType):
    """The estimator saved in ``run_dir`` by :func:`save_estimator`; :class:`EstimatorFileError` (one line)
    for a missing or damaged file, another model's module, or anything outside the allowed classes and types."""
    run_dir = Path(run_dir)
    state_path, arrays_path = run_dir / STATE_FILE, run_dir / ARRAYS_FILE
    for path in (state_path, arrays_path):
        if not path.is_file():
            raise EstimatorFileError(f"{path}: missing (the fitted estimator of this run folder)")
    try:
        tree = json.loads(state_path.read_text(encoding="utf-8"))
        with np.load(arrays_path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EstimatorFileError(f"{run_dir}: {STATE_FILE}/{ARRAYS_FILE} unreadable ({reason[:200]})") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise EstimatorFileError(f"{state_path}: not an estimator file of format {FORMAT}")
    if tree.get("module") != module.__name__:
        raise EstimatorFileError(f"{state_path}: an estimator of module {tree.get('module')!r}, the run's model is "
                                 f"defined in {module.__name__}")
    allowed = allowed_classes(module)
    if tree.get("sklearn") != sklearn.__version__:
        warnings.warn(f"{state_path}: saved with scikit-learn {tree.get('sklearn')}, this is {sklearn.__version__}; "
                      f"its predictions may differ (retrain the run to be sure)", stacklevel=2)

    def decode(value, where: str, depth: int):
        if depth > MAX_DEPTH:
            raise EstimatorFileError(f"{state_path}: {where}: nested deeper than {MAX_DEPTH}")
        if value is None or isinstance(value, (bool, str, int, float)):
            return value
        if isinstance(value, list):
            return [decode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if not isinstance(value, dict) or len(value) not in (1, 2):
            raise EstimatorFileError(f"{state_path}: {where}: not a value this format writes")
        if "float" in value:
            return float(value["float"])
        if "scalar" in value:
            return np.dtype(value["scalar"]).type(float(value["value"]) if isinstance(value["value"], str)
                                                  else value["value"])
        if "array" in value:
            key = f"a{value['array']}"
            if key not in arrays:
                raise EstimatorFileError(f"{arrays_path}: lacks array {key} ({where})")
            return arrays[key]
        if "tuple" in value:
            return tuple(decode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value["tuple"]))
        if "dict" in value:
            return {k: decode(v, f"{where}.{k}", depth + 1) for k, v in value["dict"].items()}
        if "items" in value:
            try:
                return {decode(k, f"{where} key", depth + 1): decode(v, f"{where}[{i}]", depth + 1)
                        for i, (k, v) in enumerate(value["items"])}
            except (TypeError, ValueError) as exc:
                raise EstimatorFileError(f"{state_path}: {where}: not a mapping this format writes ({exc})") from None
        if "random_state" in value:
            generator = np.random.RandomState()
            generator.set_state(decode(value["random_state"], f"{where}.random_state", depth + 1))
            return generator
        if "object" in value:
            cls = allowed.get(value["object"])
            if cls is None:
                raise EstimatorFileError(f"{state_path}: {where}: class {value['object']!r} is not allowed (only "
                                         f"scikit-learn's {', '.join(sorted(SKLEARN_CLASSES))} and the estimators of "
                                         f"{module.__name__})")
            obj = cls.__new__(cls)
            obj.__dict__.update({k: decode(v, f"{where}.{k}", depth + 1) for k, v in value["state"].items()})
            return obj
        raise EstimatorFileError(f"{state_path}: {where}: not a value this format writes")

    return decode(tree.get("estimator"), "estimator", 0)
