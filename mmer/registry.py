"""The one list of models: every model is registered exactly once, next to its own code.

A model module decorates its factory with :func:`register` and is named once in the ``mmer.models`` entry-point
group (pyproject.toml); :func:`models` imports exactly those modules, so listing the models never loads the
benchmark harness (tables, figures, ``run_all``) and a model of another installed package is found the same way.
The harness, the tables, prediction and the command-line choices all read this registry and nothing else.

Two kinds of model share the harness:

* ``estimator``: ``factory(config, info) -> object`` with ``fit(X, Y)`` / ``predict_proba(X)`` on the
  early-fused features (``mmer.early_fusion``); ``config["grid"]`` (optional) is searched on the
  validation split only.
* ``neural``: ``factory(config, info) -> torch.nn.Module`` following the batch interface of
  ``mmer.engine``; trained by the shared engine with ``config``'s ``epochs``, ``lr``, ``batch_size``,
  ``clip`` and ``threshold``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

#: Table 2's row groups; "After the paper" holds the MMER models published since HHMPN (TAILOR, CARAT).
GROUPS = ("Classical", "Linguistic", "Non-linguistic", "Multi-modal", "Ours", "After the paper")
#: Table 2's row order in the paper (Zhang et al., AAAI 2021); models not listed follow in registration order.
PAPER_ORDER = ("BR", "CC", "LP", "LSAN", "Seq2Set", "KRF", "ML-GCN", "MLEE", "MulT", "CIA", "M3ER", "HHMPN",
               "HHMPN w/o F2F", "HHMPN w/o F2L", "HHMPN w/o L2L", "HHMPN w/o M2L")
KINDS = ("estimator", "neural")
TRAINING_KEYS = ("epochs", "lr", "batch_size", "clip", "threshold")

#: The entry-point group naming the modules that register models (pyproject.toml, ``[project.entry-points]``).
ENTRY_POINT_GROUP = "mmer.models"


def model_kwargs(config: Mapping) -> dict:
    """The model hyper-parameters of a registry configuration: training keys and the seed removed."""
    return {k: v for k, v in config.items() if k not in TRAINING_KEYS and k != "seed"}


@dataclass(frozen=True)
class DataInfo:
    """What a factory may know about the data: dims and labels, and training-set label statistics."""

    dataset: str
    modality_dims: dict[str, int]
    label_names: list[str]
    train_labels: np.ndarray  # (N_train, L) 0/1, for label co-occurrence statistics
    columns: tuple[str, ...] = ()  # every column the shards have (e.g. "dominant_emotion")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    group: str
    citation: str
    kind: str
    factory: Callable
    profiles: dict[str, dict] = field(default_factory=dict)  # "quick" / "paper" -> configuration
    # Returns None when the model can run on the data, else the reason it cannot (shown as "–").
    applicable: Callable[[DataInfo], str | None] = lambda info: None
    figure_source: bool = False  # trained checkpoints are kept for the attention figures
    # Per-sample columns the model trains on besides the labels (batch["extras"]), e.g. dominant_emotion;
    # a dataset where one is absent or all null cannot run the model ("–" in the tables).
    extra_columns: tuple[str, ...] = ()

    def config(self, profile: str) -> dict:
        if profile not in self.profiles:
            raise ValueError(f"{self.name} has no {profile!r} configuration; it has {sorted(self.profiles)}")
        return dict(self.profiles[profile])


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, group: str, citation: str, kind: str, quick: dict, paper: dict,
             applicable: Callable[[DataInfo], str | None] | None = None, figure_source: bool = False,
             extra_columns: tuple[str, ...] = ()):
    """Decorator registering ``factory`` under ``name``; a name registered twice is an error."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; choose from {GROUPS}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")

    def decorate(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        clash = next((other for other in _REGISTRY if name_key(other) == name_key(name)), None)
        if clash is not None:
            raise ValueError(f"model {name!r} cannot be told apart from {clash!r} (both match {name_key(name)!r})")
        _REGISTRY[name] = ModelSpec(name, group, citation, kind, factory, {"quick": quick, "paper": paper},
                                    applicable or (lambda info: None), figure_source, tuple(extra_columns))
        return factory

    return decorate


def models() -> dict[str, ModelSpec]:
    """Every registered model, in group order, then the paper's order (``PAPER_ORDER``), then registration order."""
    modules = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)
    if not modules:
        raise RuntimeError(f"no model modules in the {ENTRY_POINT_GROUP!r} entry points: install the project "
                           f"(make setup, or pip install -e .) so that its models are registered")
    for module in modules:
        module.load()  # importing the module runs its register() calls
    registered = list(_REGISTRY)
    order = sorted(registered, key=lambda n: (GROUPS.index(_REGISTRY[n].group),
                                              PAPER_ORDER.index(n) if n in PAPER_ORDER else len(PAPER_ORDER),
                                              registered.index(n)))
    return {name: _REGISTRY[name] for name in order}


CATALOGUE_FORMAT = 1


def _catalogue_sources() -> tuple[str, list[tuple[str, str]]]:
    """The digest the catalogue cache is keyed by: the entry points, and the bytes of every Python file of the
    packages holding the model modules (and of this module), so any change to a model's code rebuilds it."""
    points = sorted((point.name, point.value) for point in entry_points(group=ENTRY_POINT_GROUP))
    digest = hashlib.sha256(json.dumps([CATALOGUE_FORMAT, points]).encode())
    folders = set()
    for _, value in points:
        top = value.split(":")[0].split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is not None and spec.submodule_search_locations:
            folders.update(spec.submodule_search_locations)
        elif spec is not None and spec.origin:
            folders.add(spec.origin)
    files = [__file__]
    for folder in sorted(folders):
        files += sorted(str(f) for f in Path(folder).rglob("*.py")) if Path(folder).is_dir() else [folder]
    for name in files:
        digest.update(name.encode() + b"\0")
        digest.update(Path(name).read_bytes())
    return digest.hexdigest(), points


def catalogue_cache_dir() -> Path:
    """Where :func:`catalogue` keeps its cache: $NEMU_CACHE_DIR, else $XDG_CACHE_HOME/nemu-hhmpn, else
    ~/.cache/nemu-hhmpn."""
    if os.environ.get("NEMU_CACHE_DIR"):
        return Path(os.environ["NEMU_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nemu-hhmpn"


def catalogue() -> list[dict]:
    """Every registered model's name, group, kind and citation, in :func:`models`' order, without importing the
    model modules when nothing changed: the list is cached (``catalogue_cache_dir()``), keyed by a digest of the
    model modules' sources (:func:`_catalogue_sources`), and rebuilt by importing them when any source changes."""
    digest, _ = _catalogue_sources()
    path = catalogue_cache_dir() / f"catalogue-{digest[:32]}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("digest") == digest and isinstance(cached.get("models"), list):
            return cached["models"]
    except (OSError, ValueError, AttributeError):
        pass
    entries = [{"name": spec.name, "group": spec.group, "kind": spec.kind, "citation": spec.citation}
               for spec in models().values()]
    try:
        from nemu.atomic import atomic_write_text

        atomic_write_text(path, json.dumps({"digest": digest, "models": entries}, ensure_ascii=False) + "\n")
    except OSError:  # a read-only home: the list is still right, only not cached
        pass
    return entries


def name_key(name: str) -> str:
    """What ``--models`` compares: lower case, "w/o" and "without" read as "no", punctuation and spaces dropped
    (``ML-GCN`` = ``mlgcn``; ``HHMPN w/o F2F`` = ``hhmpn-no-f2f`` = ``HHMPN_no_F2F``, and the old run-folder
    spelling ``hhmpn-w-o-f2f``)."""
    text = re.sub(r"w/o|without|\bw[-_]o\b", " no ", name.lower())
    return re.sub(r"[^0-9a-z]+", "", text)


class UnknownModelError(KeyError, ValueError):
    """A model name that matches no registered model (a KeyError for lookups, a ValueError for arguments)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def resolve(name: str) -> str:
    """The registered name that ``name`` means (case and punctuation ignored), or UnknownModelError with a
    "did you mean" suggestion (difflib) and the registered names."""
    registry = models()
    if name in registry:
        return name
    keys = {name_key(registered): registered for registered in registry}
    wanted = name_key(name)
    if wanted in keys:
        return keys[wanted]
    close = difflib.get_close_matches(wanted, list(keys), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(keys[c]) for c in close)}?)" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint}; registered: {', '.join(registry)}")


def resolve_names(text: str) -> list[str]:
    """A comma-separated ``--models`` value as registered names, in the given order, without repeats."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UnknownModelError(f"no model named in {text!r}; registered: {', '.join(models())}")
    resolved = []
    for name in names:
        registered = resolve(name)
        if registered not in resolved:
            resolved.append(registered)
    return resolved


def get(name: str) -> ModelSpec:
    """The spec of ``name`` (matched as :func:`resolve` does)."""
    return models()[resolve(name)]
