"""The benchmark protocol's input normalisation: the same standardised node features for every model.

Each modality's node features are standardised per dimension, ``z = (x - mean) / std``, with the mean
and the (population) standard deviation of the real nodes of the *training* split of the rotation in
use: padding is never counted (the shards store only real nodes; padding appears at collation), the
validation and test splits never enter the statistics. A dimension that is constant on the training
nodes is only centred (divided by 1); a modality without any training node keeps mean 0 and std 1.

Settings (``INPUT_NORMALIZATIONS``): ``"standardize"`` (the toolkit's default) and ``"raw"`` (the
features exactly as stored, the toolkit's behaviour before this protocol; the statistics are then the
identity). The fitted statistics travel with every run as ``normalization.json`` (plain JSON, floats
written with Python's round-trip ``repr``, so a saved file re-applies bit for bit) and are applied again
by ``hhmpn.predict``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nemu.atomic import atomic_write_text

STANDARDIZE = "standardize"
RAW = "raw"
INPUT_NORMALIZATIONS = (STANDARDIZE, RAW)
DEFAULT_INPUT_NORMALIZATION = STANDARDIZE
NORMALIZATION_FILE = "normalization.json"
FORMAT = "mmer-input-normalization/1"

# A dimension whose training standard deviation is below this fraction of its mean's magnitude holds one
# value up to float32 rounding (a float32 feature cannot vary by less than ~6e-8 of its magnitude).
_CONSTANT_RELATIVE_STD = 1e-9


def check_setting(setting: str) -> str:
    if setting not in INPUT_NORMALIZATIONS:
        raise ValueError(f"unknown input normalisation {setting!r}; choose from {', '.join(INPUT_NORMALIZATIONS)}")
    return setting


@dataclass(frozen=True)
class NodeStatistics:
    """Per-modality, per-dimension mean and std of the training nodes (identity for ``"raw"``).

    ``mean``/``std`` map modality -> float64 (dim,) arrays; ``std`` already has 1 on constant dimensions;
    ``nodes`` counts the training nodes each modality's statistics come from.
    """

    setting: str
    modality_dims: dict[str, int]
    mean: dict[str, np.ndarray] = field(repr=False)
    std: dict[str, np.ndarray] = field(repr=False)
    nodes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, node_values: Mapping[str, np.ndarray], setting: str = DEFAULT_INPUT_NORMALIZATION
            ) -> "NodeStatistics":
        """Statistics of ``{modality: (real training nodes, dim) array}`` under ``setting``."""
        check_setting(setting)
        dims, mean, std, nodes = {}, {}, {}, {}
        for modality, values in node_values.items():
            values = np.asarray(values)
            if values.ndim != 2:
                raise ValueError(f"{modality}: node features must be (nodes, dim); got shape {values.shape}")
            dim = values.shape[1]
            dims[modality], nodes[modality] = dim, int(len(values))
            if setting == RAW or len(values) == 0:
                mean[modality], std[modality] = np.zeros(dim), np.ones(dim)
                continue
            mu = values.mean(axis=0, dtype=np.float64)
            sigma = np.sqrt(((values - mu) ** 2).mean(axis=0))  # two passes: no cancellation
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                bad = int(np.flatnonzero(~(np.isfinite(mu) & np.isfinite(sigma)))[0])
                raise ValueError(f"{modality}: non-finite training node features (dimension {bad}); "
                                 "cannot standardise")
            constant = sigma <= _CONSTANT_RELATIVE_STD * np.abs(mu)
            mean[modality], std[modality] = mu, np.where(constant, 1.0, sigma)
        return cls(setting, dims, mean, std, nodes)

    @classmethod
    def identity(cls, modality_dims: Mapping[str, int]) -> "NodeStatistics":
        """The ``"raw"`` setting's statistics (no change) for these modalities."""
        return cls(RAW, dict(modality_dims), {m: np.zeros(d) for m, d in modality_dims.items()},
                   {m: np.ones(d) for m, d in modality_dims.items()}, {m: 0 for m in modality_dims})

    def apply(self, modality: str, values: np.ndarray) -> np.ndarray:
        """A new float32 (nodes, dim) array: ``values`` standardised with ``modality``'s statistics."""
        if modality not in self.mean:
            raise ValueError(f"no normalisation statistics for modality {modality!r}; "
                             f"they cover {', '.join(self.mean) or 'none'}")
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.modality_dims[modality]:
            raise ValueError(f"{modality}: statistics are for dim {self.modality_dims[modality]}, "
                             f"features have shape {values.shape}")
        if self.setting == RAW:
            return np.array(values, dtype=np.float32)  # a copy: callers own what they get
        return ((values - self.mean[modality]) / self.std[modality]).astype(np.float32)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "setting": self.setting, "modalities": {
            m: {"dim": self.modality_dims[m], "nodes": self.nodes.get(m, 0),
                "mean": [float(v) for v in self.mean[m]], "std": [float(v) for v in self.std[m]]}
            for m in self.modality_dims}}

    @classmethod
    def from_dict(cls, data: dict, source: str = "normalisation statistics") -> "NodeStatistics":
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r} is not {FORMAT!r}")
            setting = check_setting(data["setting"])
            dims, mean, std, nodes = {}, {}, {}, {}
            for modality, entry in data["modalities"].items():
                dim = int(entry["dim"])
                mu = np.asarray(entry["mean"], dtype=np.float64)
                sigma = np.asarray(entry["std"], dtype=np.float64)
                if mu.shape != (dim,) or sigma.shape != (dim,):
                    raise ValueError(f"{modality}: mean/std do not have dim {dim} entries")
                if not (np.isfinite(mu).all() and np.isfinite(sigma).all() and (sigma > 0).all()):
                    raise ValueError(f"{modality}: mean/std must be finite with std > 0")
                dims[modality], mean[modality], std[modality] = dim, mu, sigma
                nodes[modality] = int(entry.get("nodes", 0))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{source}: not valid input-normalisation statistics ({exc})") from None
        return cls(setting, dims, mean, std, nodes)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as JSON (deterministic bytes), atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NodeStatistics":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no input-normalisation statistics") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable input-normalisation statistics ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not valid input-normalisation statistics (not a JSON object)")
        return cls.from_dict(data, str(path))

    def same_as(self, other: "NodeStatistics") -> bool:
        return (self.setting == other.setting and self.modality_dims == other.modality_dims
                and all(np.array_equal(self.mean[m], other.mean[m]) and np.array_equal(self.std[m], other.std[m])
                        for m in self.modality_dims))
