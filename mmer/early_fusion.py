"""Early fusion for the classical multi-label baselines: one fixed-length vector per sample.

The paper (Table 2, note 1) runs the uni-modal multi-label baselines on "the multi-modal data early
fused as a new input". For the classical baselines (BR, CC, LP in ``baselines.classical``) that means a
plain feature matrix: each modality's variable-length node list is mean-pooled, and the pooled vectors
are concatenated.

Column layout, one block per modality in ``dataset.modality_dims`` order::

    [ mean of the modality's nodes (dim columns) | has_nodes (1 column, 0.0 or 1.0) ]

so ``X.shape == (len(dataset), sum(dims) + number of modalities)``. A sample with no node of a modality
(NEMu's partial time series: a song without comments or images, say) gets zeros for that mean and 0 in
the indicator; the indicator keeps "absent" distinguishable from "present with a zero mean" — a
deviation from a bare concatenation of means, which the paper does not specify.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def column_names(modality_dims: dict[str, int]) -> list[str]:
    """Names of ``mean_pooled``'s columns: ``"{modality}:mean[{i}]"`` then ``"{modality}:has_nodes"``."""
    names: list[str] = []
    for modality, dim in modality_dims.items():
        names.extend(f"{modality}:mean[{i}]" for i in range(dim))
        names.append(f"{modality}:has_nodes")
    return names


def modality_slices(modality_dims: dict[str, int]) -> dict[str, tuple[slice, int]]:
    """{modality: (slice of its mean columns, index of its has_nodes column)} in ``mean_pooled``'s output."""
    out, start = {}, 0
    for modality, dim in modality_dims.items():
        out[modality] = (slice(start, start + dim), start + dim)
        start += dim + 1
    return out


def _pool_segments(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-row means (N, dim) float64, per-row node counts (N,)) of rows ``values[offsets[i]:offsets[i+1]]``.

    Vectorised with ``np.add.reduceat`` over the non-empty rows only: reduceat returns ``values[i]``
    (not 0) for an empty segment and refuses a start index equal to ``len(values)``, so empty rows
    are left out and keep zeros. Between two consecutive non-empty rows lie only empty rows, so each
    reduceat segment is exactly one row's nodes.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    means = np.zeros((len(counts), values.shape[1]), dtype=np.float64)
    nonempty = counts > 0
    if nonempty.any():
        sums = np.add.reduceat(values, offsets[:-1][nonempty], axis=0, dtype=np.float64)
        means[nonempty] = sums / counts[nonempty, None]
    return means, counts


def _node_lists(dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{modality: (values (total, dim), offsets (N+1,))} of a dataset.

    ``nemu.MMERDataset`` keeps exactly this in its private ``_nodes`` attribute; it is used when present
    and consistent with ``len(dataset)`` (fast path, no per-item tensors). Any other object with the
    dataset interface (``modality_dims``, ``__len__``, ``__getitem__`` returning
    ``{"features": {modality: (nodes, dim)}}``) is read item by item.
    """
    n = len(dataset)
    nodes = getattr(dataset, "_nodes", None)
    if isinstance(nodes, dict) and all(
            m in nodes and len(nodes[m][1]) == n + 1 and int(nodes[m][1][-1]) == len(nodes[m][0])
            and np.ndim(nodes[m][0]) == 2 and np.shape(nodes[m][0])[1] == dim
            for m, dim in dataset.modality_dims.items()):
        return {m: (np.asarray(nodes[m][0]), np.asarray(nodes[m][1])) for m in dataset.modality_dims}

    chunks: dict[str, list[np.ndarray]] = {m: [] for m in dataset.modality_dims}
    for index in range(n):
        features = dataset[index]["features"]
        for modality, dim in dataset.modality_dims.items():
            array = features[modality]
            array = array.numpy() if hasattr(array, "numpy") else np.asarray(array)
            chunks[modality].append(np.asarray(array, dtype=np.float32).reshape(-1, dim))
    out = {}
    for modality, dim in dataset.modality_dims.items():
        counts = np.array([len(c) for c in chunks[modality]], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        values = np.concatenate(chunks[modality]) if n else np.zeros((0, dim), dtype=np.float32)
        out[modality] = (values, offsets)
    return out


def mean_pooled(dataset) -> np.ndarray:
    """Early-fused features of a dataset: float32 (N, sum(dims) + number of modalities).

    Per modality, in ``dataset.modality_dims`` order: the mean of its nodes (zeros when the sample has
    none) followed by a 0/1 "has nodes" indicator column (see the module docstring and
    ``column_names``/``modality_slices`` for the layout). Means are accumulated in float64.
    """
    n = len(dataset)
    node_lists = _node_lists(dataset)
    width = sum(dim + 1 for dim in dataset.modality_dims.values())
    X = np.zeros((n, width), dtype=np.float32)
    for modality, (cols, flag) in modality_slices(dataset.modality_dims).items():
        values, offsets = node_lists[modality]
        means, counts = _pool_segments(values, offsets)
        X[:, cols] = means
        X[:, flag] = counts > 0
    return X


def early_fused(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(``mean_pooled(dataset)``, ``dataset.labels`` as a 0/1 int8 (N, L) array)."""
    return mean_pooled(dataset), (np.asarray(dataset.labels) > 0.5).astype(np.int8)


class EarlyFusionSequence(nn.Module):
    """Early fusion for the neural uni-modal baselines: one node sequence from all modalities.

    The paper runs its uni-modal multi-label baselines (LSAN, Seq2Set, KRF, ML-GCN, MLEE) on "the
    multi-modal data early fused as a new input". Here that is: each modality's nodes are projected to
    a common width ``d`` by a learned linear map (``W_m``), tagged with a learned modality embedding, and
    the modalities' node lists are concatenated in ``modality_dims`` order; padding stays padding (the
    fused mask is the concatenation of the modality masks, and padded positions are zero).
    """

    def __init__(self, modality_dims: dict[str, int], d: int):
        super().__init__()
        self.modalities = tuple(modality_dims)
        self.project = nn.ModuleDict({m: nn.Linear(dim, d) for m, dim in modality_dims.items()})
        self.modality_embedding = nn.Parameter(torch.zeros(len(modality_dims), d))
        self.d = d

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S_total, d) fused node states and their (B, S_total) bool mask (True = real node)."""
        states, masks = [], []
        for index, name in enumerate(self.modalities):
            mask = batch["masks"][name].to(torch.bool)
            x = torch.where(mask[..., None], batch["features"][name], torch.zeros((), device=mask.device))
            states.append((self.project[name](x) + self.modality_embedding[index]) * mask[..., None])
            masks.append(mask)
        return torch.cat(states, dim=1), torch.cat(masks, dim=1)
