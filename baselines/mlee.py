"""MLEE (Ando, Masumura, Kamiyama, Kobashikawa and Aono, Interspeech 2019, "Speech Emotion Recognition
Based on Multi-Label Emotion Existence Model") as a non-linguistic multi-label baseline of the HHMPN paper
(Table 2).

The idea of the paper: an utterance may contain several emotions, of which one is dominant. The
**multi-label emotion existence (MLEE) model** estimates, for every emotion independently, whether it
is present (one sigmoid output per emotion, binary cross-entropy; an emotion "exists" when any
annotator perceived it), and **dominant-emotion recognition** (a softmax over the emotions) is done by
means of the MLEE model's intermediate outputs. The HHMPN paper uses it as "a multi-task framework to
jointly predict multi-label emotions and dominant emotion, which provides the auxiliary information for
each other", and reports no NEMu result because NEMu has no dominant-emotion annotation.

Here:

* **Input (early fusion, sequential).** MLEE is a sequence model (a recurrent encoder over spectrogram
  frames with attention pooling), so it takes the multi-modal data as one node sequence,
  :class:`mmer.early_fusion.EarlyFusionSequence` (each modality's nodes projected to width
  ``d`` plus a modality embedding, concatenated in manifest order), rather than a mean-pooled vector,
  which would throw the time axis away. The modalities' raw scales differ by orders of magnitude; the
  inputs are the benchmark protocol's (each modality standardised per dimension on the training split by
  ``split_datasets``), so the model adds no normaliser of its own. The real nodes of each sample are packed to the front
  (:func:`compact`), keeping their order, before the encoder.
* **Shared encoder.** A one-layer bidirectional LSTM (``hidden`` units per direction) and additive
  attention pooling over the real nodes (:class:`AttentionPool`; a sample with no node at all pools to
  the zero vector, never NaN).
* **Emotion-existence head** (the MLEE model): ``z = dropout(ReLU(W_e h))``, the "intermediate output",
  then one logit per emotion. Its sigmoid outputs are the model's multi-label prediction
  (``outputs["logits"]``, thresholded by the engine at 0.5).
* **Dominant-emotion head**, built on the existence head's intermediate output ``z`` (the paper's
  "by means of the intermediate outputs of the MLEE model"): ``ReLU(W_d z)`` then a softmax over the
  emotions (``outputs["dominant_logits"]``). It informs training only: at prediction time the
  multi-label answer is the existence outputs alone (the dominant head never changes ``logits``).
* **Targets.** Existence: the dataset's 0/1 label vector (MOSEI: intensity > 0, which is the
  paper's rule, since an average intensity is positive iff some annotator gave the emotion).
  Dominant: ``batch["extras"]["dominant_emotion"]``, the label of highest annotated intensity,
  recorded when building MOSEI; samples where it is null (index -1: no emotion annotated) are left
  out of the dominant loss, and a batch without any such sample has a dominant loss of 0.
* **Loss.** ``BCE(existence) + dominant_weight · CE(dominant)`` (mean over labelled samples).
* **Applicability.** Registered with ``extra_columns=("dominant_emotion",)``: on a dataset without that
  column (NEMu) or where it is null throughout (a MOSEI build from the aligned ``.pt`` or the ``.pkl``,
  which carry no intensities) the runner returns "not applicable" with the reason, and the tables show
  "–", as the HHMPN paper does for NEMu. No dominant label is ever invented.

Deviations from the paper, and why:

1. **Joint multi-task training instead of two steps.** The paper first trains the MLEE model, then
   trains the dominant-emotion recogniser on its intermediate outputs. We train both heads jointly from
   the start with one summed loss (the HHMPN paper's description of MLEE as a multi-task framework,
   and the shared single-phase training engine). The dominant head still reads the existence head's
   intermediate output, so its gradient shapes that representation.
2. **No CNN front end.** The paper's encoder starts with convolutions over log-mel spectrograms; our
   nodes are already feature vectors (word vectors, COVAREP/MFCC frames, FACET or CNN image features),
   so the learned per-modality projection of the early fusion takes the CNN's place.
3. **Sizes and optimiser** are not those of the paper's speech setting: all neural baselines share the
   HHMPN paper's protocol (``mmer.engine``: Adam, clipping at 10, fixed epochs, best validation
   micro-F1); the paper profile uses d = 256 (HHMPN's hidden size), 128 LSTM units per direction,
   batch 64, 50 epochs, lr 1e-4, dropout 0.3, dominant-loss weight 1.0 (the paper weights nothing).
4. **Fused multi-modal input** instead of speech only (the HHMPN paper's early fusion, note 1 of its
   Table 2), on the benchmark protocol's standardised inputs (an earlier LayerNorm after the fusion is gone).

Profiles: ``paper`` as above; ``quick`` (CPU smoke runs) keeps the structure with d = 64, 64 LSTM units
per direction, fc 128, batch 32. Epochs and learning rate follow the benchmark's one tuning rule (``mmer.tuning``): paper 50 epochs at lr 1e-4 as
above; quick 10 epochs at the shared 3e-3 (20 epochs at 2e-3 before the rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmer.early_fusion import EarlyFusionSequence
from mmer.metrics import DEFAULT_THRESHOLD
from mmer.tuning import neural_budget
from mmer.registry import DataInfo, register

CITATION = "Ando et al., Interspeech 2019"
DOMINANT = "dominant_emotion"


def compact(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real nodes to the front, in their original order: (states, lengths (B,))."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    packed = torch.gather(states, 1, order[..., None].expand_as(states))
    lengths = mask.sum(dim=1)
    keep = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
    return packed * keep[..., None], lengths


class AttentionPool(nn.Module):
    """Additive attention pooling ``Σ_t softmax_t(vᵀ tanh(W h_t)) h_t`` over the real positions only;
    a row without any real position gives the zero vector."""

    def __init__(self, width: int, attention: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(width, attention), nn.Tanh(), nn.Linear(attention, 1, bias=False))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(states).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        weights = torch.nan_to_num(weights, nan=0.0) * mask  # all -inf rows → 0 weights
        return (weights[..., None] * states).sum(dim=1), weights


class MLEE(nn.Module):
    """Shared fused-sequence encoder; emotion-existence head (the prediction); dominant head on its
    intermediate output."""

    def __init__(self, modality_dims: dict[str, int], num_labels: int, *, d: int = 256, hidden: int = 128,
                 fc: int = 256, dropout: float = 0.3, dominant_weight: float = 1.0):
        super().__init__()
        self.fusion = EarlyFusionSequence(modality_dims, d)
        self.encoder = nn.LSTM(d, hidden, batch_first=True, bidirectional=True)
        self.pool = AttentionPool(2 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.existence_hidden = nn.Linear(2 * hidden, fc)
        self.existence_out = nn.Linear(fc, num_labels)
        self.dominant_hidden = nn.Linear(fc, fc)
        self.dominant_out = nn.Linear(fc, num_labels)
        self.dominant_weight = dominant_weight

    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2·hidden) pooled utterance vectors and the (B, S) attention weights over the packed nodes."""
        states, mask = self.fusion(batch)
        states, lengths = compact(states, mask)
        packed = pack_padded_sequence(states, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        encoded, _ = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=states.shape[1])
        real = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
        return self.pool(encoded, real)

    def forward(self, batch: dict) -> dict:
        pooled, attention = self.encode(batch)
        intermediate = self.dropout(F.relu(self.existence_hidden(self.dropout(pooled))))
        existence = self.existence_out(intermediate)
        dominant = self.dominant_out(self.dropout(F.relu(self.dominant_hidden(intermediate))))
        return {"logits": existence, "dominant_logits": dominant, "attention": attention}

    def dominant_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        """Cross-entropy of the dominant head over the samples with a dominant emotion (index >= 0)."""
        extras = batch.get("extras", {})
        if DOMINANT not in extras:
            raise KeyError("MLEE trains on batch['extras']['dominant_emotion']: load the dataset with "
                           "extra_columns=('dominant_emotion',)")
        target = extras[DOMINANT].long()
        labelled = target >= 0
        if not bool(labelled.any()):
            return outputs["dominant_logits"].sum() * 0.0
        return F.cross_entropy(outputs["dominant_logits"][labelled], target[labelled])

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        existence = F.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"].float())
        return existence + self.dominant_weight * self.dominant_loss(outputs, batch)


PAPER = {"d": 256, "hidden": 128, "fc": 256, "dropout": 0.3, "dominant_weight": 1.0,
         "lr": 1e-4, "batch_size": 64, "clip": 10.0, "threshold": DEFAULT_THRESHOLD} | neural_budget("paper")
QUICK = PAPER | {"d": 64, "hidden": 64, "fc": 128, "batch_size": 32} | neural_budget("quick")


@register("MLEE", group="Non-linguistic", citation=CITATION, kind="neural", quick=QUICK, paper=PAPER,
          extra_columns=(DOMINANT,))
def mlee(config: dict, info: DataInfo) -> MLEE:
    return MLEE(info.modality_dims, info.num_labels, d=config["d"], hidden=config["hidden"], fc=config["fc"],
                dropout=config["dropout"], dominant_weight=config["dominant_weight"])
