"""Inputs broken at prediction time: a modality removed, a modality replaced by another song's, Gaussian noise.

Table 5 (README, "Robustness at prediction time", beyond the paper) and ``hhmpn-predict --drop-modality M
--corrupt KIND:ARG`` ask a trained run what it predicts when its inputs are not what it was trained on. Every
perturbation acts on the node lists a model reads, after the run's input normalisation (so on the
*standardised* features of the protocol), and on the named modality only:

* ``drop:M`` (``--drop-modality M``): every node of modality M absent, for every song: the situation of a song
  without comments or images (NEMu's partial time series), made total. Dropping every modality gives each song
  the run's empty-input prediction (``LoadedRun.empty_input_probabilities``).
* ``shuffle:M``: each song's M nodes replaced by those of *another* song of the same set (all its nodes, so the
  modality is real but belongs to someone else). The donors are one random cycle through the songs (a
  permutation without fixed points: nobody keeps its own), drawn from the seed; 2 songs at least.
* ``noise:LEVEL`` or ``noise:LEVEL:M``: independent Gaussian noise of standard deviation LEVEL added to every
  real node feature of every modality (or of M only). The features are standardised (unit variance per
  dimension on the training split), so LEVEL is in units of the training spread: 0 is the clean input, 1 noise
  as large as the signal's own variation. Padding stays padding, node counts do not change.

Randomness: a perturbation's draws come from ``numpy.random.default_rng([seed, crc32 of its spec])``, so equal
seeds give equal inputs, and two perturbations (another modality, another level) draw independent streams.
Table 5 uses each cell's training seed, so a cell's perturbed inputs are fixed by its grid place.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("drop", "shuffle", "noise")
#: Table 5's noise levels, in units of the training split's standard deviation of each feature.
NOISE_LEVELS = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: ``kind`` (drop, shuffle, noise), the ``modality`` it acts on (None: every modality,
    noise only) and the noise ``level`` (0 for the other kinds)."""

    kind: str
    modality: str | None = None
    level: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown perturbation {self.kind!r}; one of {', '.join(KINDS)}")
        if self.kind in ("drop", "shuffle") and not self.modality:
            raise ValueError(f"{self.kind} needs a modality ({self.kind}:MODALITY)")
        if self.kind == "noise" and not (np.isfinite(self.level) and self.level >= 0):
            raise ValueError(f"noise level must be a finite number >= 0, got {self.level!r}")
        if self.kind != "noise" and self.level:
            raise ValueError(f"{self.kind} takes no level")

    @property
    def spec(self) -> str:
        """The one spelling, as ``parse`` reads it: ``drop:lyrics``, ``shuffle:audio``, ``noise:0.5[:images]``."""
        if self.kind == "noise":
            return f"noise:{self.level:g}" + (f":{self.modality}" if self.modality else "")
        return f"{self.kind}:{self.modality}"

    def modalities(self, names: Sequence[str]) -> list[str]:
        return list(names) if self.modality is None else [self.modality]


def parse(text: str) -> Perturbation:
    """``drop:M``, ``shuffle:M``, ``noise:LEVEL`` or ``noise:LEVEL:M`` as a :class:`Perturbation`; ValueError
    (one line, quoting ``text``) otherwise."""
    parts = text.strip().split(":")
    kind = parts[0].lower()
    try:
        if kind in ("drop", "shuffle") and len(parts) == 2 and parts[1]:
            return Perturbation(kind, parts[1])
        if kind == "noise" and len(parts) in (2, 3) and re.fullmatch(r"[0-9.eE+-]+", parts[1] or "x"):
            return Perturbation("noise", parts[2] if len(parts) == 3 and parts[2] else None, float(parts[1]))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    raise ValueError(f"{text!r}: expected drop:MODALITY, shuffle:MODALITY, noise:LEVEL or noise:LEVEL:MODALITY")


def check(perturbations: Iterable[Perturbation], modality_names: Sequence[str], songs: int | None = None) -> None:
    """ValueError naming the first perturbation that cannot apply: an unknown modality, or a shuffle of fewer
    than 2 songs (a song can only get another song's nodes when there is another song)."""
    for p in perturbations:
        if p.modality is not None and p.modality not in modality_names:
            raise ValueError(f"{p.spec}: no modality {p.modality!r}; the run has {', '.join(modality_names)}")
        if p.kind == "shuffle" and songs is not None and songs < 2:
            raise ValueError(f"{p.spec}: needs 2 songs or more to give each another song's {p.modality} "
                             f"(there is {songs})")


def rng_for(perturbation: Perturbation, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(perturbation.spec.encode("utf-8"))])


def donors(songs: int, rng: np.random.Generator) -> np.ndarray:
    """``donor[i]``: the song whose nodes song i gets: one random cycle through all songs (no fixed point)."""
    order = rng.permutation(songs)
    donor = np.empty(songs, dtype=np.int64)
    donor[order] = np.roll(order, -1)
    return donor


def _take_rows(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = offsets[rows + 1] - offsets[rows]
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    index = np.repeat(offsets[rows] - new_offsets[:-1], counts) + np.arange(new_offsets[-1], dtype=np.int64)
    return values[index], new_offsets


def perturb_nodes(nodes: dict[str, tuple[np.ndarray, np.ndarray]], perturbations: Sequence[Perturbation],
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """New node lists ``{modality: (values (total, dim), offsets (N+1,))}`` with ``perturbations`` applied in
    order; the modalities none of them names are the very arrays given (never copied, never changed)."""
    out = dict(nodes)
    songs = len(next(iter(nodes.values()))[1]) - 1 if nodes else 0
    check(perturbations, list(nodes), songs)
    for p in perturbations:
        rng = rng_for(p, seed)
        for modality in p.modalities(list(out)):
            values, offsets = out[modality]
            if p.kind == "drop":
                out[modality] = (values[:0].copy(), np.zeros_like(offsets))
            elif p.kind == "shuffle":
                out[modality] = _take_rows(values, offsets, donors(songs, rng))
            else:  # noise on the real nodes only: the standardised features, float32 as the model reads them
                noise = rng.standard_normal(values.shape).astype(values.dtype) * values.dtype.type(p.level)
                out[modality] = (values + noise, offsets)
    return out


def node_lists(dataset, modalities: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{modality: (values, offsets)}`` of any dataset with the batch interface (an ``MMERDataset``'s own arrays
    when it has them, else read item by item)."""
    nodes = getattr(dataset, "_nodes", None)
    n = len(dataset)
    if isinstance(nodes, dict) and all(m in nodes and len(nodes[m][1]) == n + 1 for m in modalities):
        return {m: (np.asarray(nodes[m][0]), np.asarray(nodes[m][1], dtype=np.int64)) for m in modalities}
    items = [dataset[i]["features"] for i in range(n)]
    out = {}
    for m in modalities:
        arrays = [np.asarray(item[m].numpy() if hasattr(item[m], "numpy") else item[m], dtype=np.float32)
                  for item in items]
        dim = dataset.modality_dims[m]
        counts = np.array([len(a) for a in arrays], dtype=np.int64)
        values = np.concatenate([a.reshape(-1, dim) for a in arrays]) if n else np.zeros((0, dim), np.float32)
        out[m] = (values, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    return out


class PerturbedDataset:
    """A dataset (``MMERDataset``, ``mmer.inference.NewSongs`` or any with the batch interface) with perturbed
    node lists: the same ids, labels, statistics and modalities; items as ``MMERDataset`` gives them."""

    def __init__(self, dataset, perturbations: Sequence[Perturbation], seed: int = 0):
        self.dataset = dataset
        self.perturbations = tuple(perturbations)
        self.seed = int(seed)
        self.root = getattr(dataset, "root", "the data")
        self.ids = list(dataset.ids)
        self.labels = np.asarray(dataset.labels) if hasattr(dataset, "labels") else None
        self.normalization = getattr(dataset, "normalization", None)
        self.modality_dims = dict(dataset.modality_dims)
        self._nodes = perturb_nodes(node_lists(dataset, list(self.modality_dims)), self.perturbations, self.seed)

    def node_values(self) -> dict[str, np.ndarray]:
        return {m: values for m, (values, _) in self._nodes.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        import torch

        item = self.dataset[index]
        item = dict(item, features={m: torch.from_numpy(values[offsets[index]:offsets[index + 1]])
                                    for m, (values, offsets) in self._nodes.items()})
        return item


def describe(perturbations: Sequence[Perturbation], seed: int = 0) -> str:
    """One phrase for messages: ``drop:lyrics, noise:0.5 (seed 0)``; ``clean`` for none."""
    if not perturbations:
        return "clean"
    random = any(p.kind != "drop" for p in perturbations)
    return ", ".join(p.spec for p in perturbations) + (f" (seed {seed})" if random else "")
