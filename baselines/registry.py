"""The one list of models: every model is registered exactly once, next to its own code.

A model module decorates its factory with :func:`register`; :func:`models` imports every module of the
``baselines`` package (and ``MODEL_MODULES``), so adding a baseline is adding its module. The harness, the tables and the command-line choices
all read this registry and nothing else.

Two kinds of model share the harness:

* ``estimator``: ``factory(config, info) -> object`` with ``fit(X, Y)`` / ``predict_proba(X)`` on the
  early-fused features (``baselines.early_fusion``); ``config["grid"]`` (optional) is searched on the
  validation split only.
* ``neural``: ``factory(config, info) -> torch.nn.Module`` following the batch interface of
  ``hhmpn.engine``; trained by the shared engine with ``config``'s ``epochs``, ``lr``, ``batch_size``,
  ``clip`` and ``threshold``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GROUPS = ("Classical", "Linguistic", "Non-linguistic", "Multi-modal", "Ours")
KINDS = ("estimator", "neural")
TRAINING_KEYS = ("epochs", "lr", "batch_size", "clip", "threshold")

#: Modules outside the ``baselines`` package's own files that register models.
MODEL_MODULES: tuple[str, ...] = ()


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
        _REGISTRY[name] = ModelSpec(name, group, citation, kind, factory, {"quick": quick, "paper": paper},
                                    applicable or (lambda info: None), figure_source, tuple(extra_columns))
        return factory

    return decorate


def models() -> dict[str, ModelSpec]:
    """Every registered model, in group order then registration order."""
    package = Path(__file__).resolve().parent
    for module in sorted(p.stem for p in package.glob("*.py") if not p.stem.startswith("_")):
        importlib.import_module(f"baselines.{module}")
    for module in MODEL_MODULES:
        importlib.import_module(module)
    return {spec.name: spec for group in GROUPS for spec in _REGISTRY.values() if spec.group == group}


def get(name: str) -> ModelSpec:
    registry = models()
    if name not in registry:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(registry)}")
    return registry[name]
