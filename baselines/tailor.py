"""TAILOR (Zhang, Chen, Shen and Wang, AAAI 2022), a model published after the paper ("After the paper" group).

Zhang, Chen, Shen, Wang. "Tailor Versatile Multi-modal Learning for Multi-label Emotion Recognition." AAAI 2022
(arXiv:2201.05834). Official code: github.com/kniter1/TAILOR (MIT), read for every detail below (``train.py``,
``train.sh``, ``src/models/models.py``, ``module_{bert,visual,audio,cross,decoder}.py``, ``until_module.py``,
``optimization.py``, the ``*-base/*_config.json`` files); nothing is copied.

What the model does, for modalities ``M = (m_1, ..., m_K)`` in the data's order (any ``K >= 1``; MOSEI's
``text, audio, vision`` gives exactly the official text/audio/visual roles, NEMu's first modality, lyrics, takes
text's):

1. **Unimodal Extractor** (paper section "Unimodal Extractor"; official ``NormalizeText/Video/Audio`` and
   ``BertModel``/``VisualModel``/``AudioModel``): a per-feature LayerNorm of each modality's input, then a
   BERT-style post-LN transformer encoder per modality: a linear "word embedding" to ``d``, learned position
   embeddings, LayerNorm, dropout, and ``primary_layers`` (m_1; official text: 6) or ``layers`` (the others;
   official visual and audio: 4) layers of [self-attention -> dense -> dropout -> LayerNorm(+residual); dense
   (``intermediate``) -> GELU (erf) -> dense -> dropout -> LayerNorm(+residual)]. d = 256, 8 heads, FFN width
   256, dropout 0.3 on hidden states and attention probabilities (the config files).
2. **Adversarial Multi-modal Refinement** (paper section of that name): a private extractor per modality
   (Linear -> Dropout 0.1 -> Tanh) and one shared common extractor (Linear -> Dropout 0.3 -> Tanh) applied to every
   modality's encoded nodes; the common sequence is the sum over modalities (official ``common_feature``).
   A token-level modality discriminator (Linear d -> d/2 -> Dropout 0.1 -> ReLU -> Linear -> K classes)
   classifies every private node as its modality (plain cross-entropy, :meth:`TAILOR.loss`) and every common
   node through a gradient reversal layer (:class:`GradientReversal`, coefficient 1): the discriminator learns
   to tell the modalities apart, the extractors beneath it are pushed to make common features indistinguishable.
   Orthogonality ("difference") losses: ``||P_a P_b^T||_F^2`` of the token Gram matrices of every pair of
   private sequences and of each modality's common and private sequences, averaged over the batch
   (:func:`orthogonality_loss`).
3. **Label-Modal Alignment** (paper section of that name): BERT-like cross encoders (official ``CrossModel``:
   concatenation, position and type embeddings, LayerNorm, dropout, ``cross_layers`` = 3 post-LN layers of
   self-attention over the concatenation) fuse "in a granularity descent way": starting from the last
   modality's private nodes ``h = P_{m_K}``, each earlier modality is put in front, ``h = Cross([P_m (type 0),
   h (type 1)])`` for ``m = m_{K-1}, ..., m_1`` (MOSEI: audio+vision, then text, as the official ``va_cross``
   and ``vat_cross``), and a last cross encoder fuses ``[h (type 0), common (type 1)]`` (official
   ``pc_cross``). A 1-layer label decoder (official ``DecoderModel``): label embeddings -> LayerNorm ->
   dropout; self-attention among the L labels, cross-attention of the labels onto the fused sequence, FFN, each
   post-LN; one shared Linear(d, 1) per label representation, dropout 0.1 on its output (official
   ``EmotionClassifier``: dense -> dropout -> sigmoid) gives the L logits. (The issue's "per-label sigmoid
   heads" is one head shared by every label's own representation.)
4. **Loss** (official ``TAILOR.forward``, aligned branch): ``BCE + 0.01 (adv_common + adv_private) + 5e-6
   (orth_private + orth_common) + 0.5 BCE_common``, where ``BCE_common`` is the BCE of a classifier
   (Linear(d, L) -> Dropout 0.1 -> sigmoid) on the common sequence's first node.
5. **Optimiser** (official ``BertAdam``, ``prep_optimizer`` and ``train.py``): :meth:`TAILOR.configure_optimizer`
   gives ``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-6, decoupled weight decay 0.01 on every parameter except
   biases and the encoders' LayerNorms, as the official grouping) with a ``LambdaLR`` linear warm-up over the
   first 10% of the engine's steps, then linear decay to 0 (official ``warmup_linear``; the first step runs at
   lr 0 in both). Gradient clipping at global norm 1.0 (``clip``), as ``train.py``.

Deviations from the paper and from the official code, and why:

* **Optimiser: AdamW, not BertAdam.** BertAdam skips Adam's bias correction: its update is ``m / (sqrt(v) +
  eps)`` with raw moving averages, about ``(1 - 0.9^t) / sqrt(1 - 0.999^t)`` times AdamW's (3.2x at the first
  step, 1.0x after some thousand steps); AdamW corrects both moments. BertAdam also clips each parameter
  tensor to norm 1.0 inside ``step``; after ``train.py``'s global clipping to 1.0 that is a no-op (no tensor's
  norm exceeds the global one), so it is not repeated. Weight decay is decoupled in both (``p -= lr (update +
  0.01 p)``). The official grouping's names are inverted (``no_decay_param_tp`` holds the parameters that *do*
  decay) but its effect is the one used here; its input-LayerNorm gains (named ``text_norm2d.weight``, which
  matches neither ``bias`` nor ``LayerNorm``) do decay there, and here (``input_norm``) too.
* **Real node masks.** The official loader gives all-ones masks (every one of the 60 padded MOSEI steps attends
  and is attended, the discriminator and the Gram matrices include padding, ``common_mask`` is all ones). Here
  every attention masks padded keys (:func:`mmer.neural.masked_softmax` semantics: weight 0; a source with no
  real node sends nothing, not NaN), the discriminator's cross-entropy averages over real nodes only, padded
  nodes are zero in the Gram matrices, and the output of a sample does not depend on its batch's padding
  (tested). Positions count real nodes from 0: in each unimodal encoder (the official left-padded aligned MOSEI
  numbers its first real step ``60 - length``) and in each cross encoder's concatenation, whose real nodes are
  moved to the front so the second part's positions start after the first part's *real* nodes (official: after
  its padded length). Positions past the table (``max_positions``; cross encoders ``(K + 1) max_positions``,
  240 for MOSEI as the official 240) reuse the last embedding.
* **Common sequence over unequal lengths.** The official sum over modalities is token-wise and needs equal
  lengths (aligned MOSEI; unaligned, after CTC alignment to text's 50 steps). Here modality ``m``'s j-th real
  node adds to common node j, and common node j is real when any modality has a j-th node: on aligned MOSEI
  (one mask for all modalities) exactly the official sum; on NEMu or unaligned MOSEI a sum by node index.
  The common classifier reads common node 0 (official ``common_feature[:, 0]``), zero for a sample with no node.
* **No CTC path (unaligned MOSEI).** The official unaligned branch (``aligned=False``) maps audio and visual onto
  text's steps with ``CTCModule`` (a 2-layer LSTM whose width is the fixed target length 50 + blank) and adds
  ``0.5 * CTC`` (warp-ctc, targets 1..50) to the loss. It is not implemented: our loader gives each modality
  its own node sequence with its own real-node mask, the cross encoders (self-attention over a concatenation)
  and the decoder work on unaligned lengths as they are, and the module needs one fixed target length, which
  NEMu's per-sample, per-modality lengths do not have. Unaligned MOSEI therefore trains with the aligned loss.
* **Any number of modalities.** The official code hard-codes three (three private extractors, a 3-way
  discriminator, two private cross encoders). Here K private extractors, a K-way discriminator, K - 1 private
  cross encoders in the order above and the private-private orthogonality over all K (K - 1) / 2 pairs. With
  K = 1 there is no private fusion: the private sequence and the common sequence go into the last cross
  encoder (the discriminator then has one class and its losses are 0).
* **Decision threshold.** The official code predicts ``sigmoid > 0.35``; the harness's one decision rule is used
  for every model (``threshold``: 0.5, or ``--threshold validation``), so TAILOR is thresholded like every row.
* **Training protocol.** The shared engine: ``epochs`` follows the benchmark's tuning rule (paper profile 50, not
  the official 20; quick 10, ``mmer.tuning``), the warm-up/decay schedule spans those epochs' steps, the best
  validation micro-F1 epoch (the earliest on ties) is kept *as a copy* and tested once on the whole, ordered
  test split. Official bugs not copied: ``best_model = model`` keeps a reference, so the official test scores
  the *last* epoch's weights; its validation and test loaders are ``shuffle=True, drop_last=True`` (a random
  subset of the test set, 4,608 of 4,659 MOSEI test samples at batch 64); ``get_metrics(pred, label)`` is called
  with the arguments swapped, so its logged precision is the recall and vice versa; it selects on ``<=``
  (the latest tie). The engine reports Acc, HL, micro- and macro-F1 (the official logs neither HL nor macro-F1).
* **Dropout on the logits** is kept (official ``EmotionClassifier`` and ``common_classfier`` apply dropout after
  the dense layer); BCE is computed on logits (``binary_cross_entropy_with_logits``), the same loss as the
  official ``BCELoss`` on sigmoid outputs without its clamp of log at -100.
* **Validation loss.** The engine's validation loss is the same total loss in eval mode (the official code
  computes no validation loss); it does not take part in selection.
* **Unused official pieces omitted**: every encoder's pooler (``BertPooler`` etc., computed, never used by the
  loss or the prediction), the MLM heads, ``coef_lr`` (unused). Our MOSEI parameter count is therefore about
  0.4M below the official 10.8M.
* **Labels.** L and the label order come from the data (MOSEI: happy, sad, anger, surprise, disgust, fear, the
  official ``emotion_dict`` order; NEMu: its 12 labels); label embeddings are ``nn.Embedding(L, d)`` over
  ``0..L-1`` as the official ``label_input = arange(6)`` with an all-ones label mask.
* **Weight initialisation** as the official ``init_weights``: N(0, 0.02) for every Linear and Embedding weight,
  zero biases, LayerNorm 1/0 (applied to the whole model, as the official ``self.apply``).

Configurations: ``paper`` is ``train.sh`` with the config files (d 256, 8 heads, FFN 256, dropout 0.3, text 6 /
other 4 unimodal layers, 3 cross layers, 1 decoder layer, lr 5e-5, batch 64, 10% warm-up, clip 1.0), 50 epochs
by the tuning rule. ``quick`` is a small setting for CPU runs on the sample (d 128, 4 heads, FFN 128, 1 layer everywhere,
dropout 0.1, batch 16) at the shared quick lr 3e-3 and 10 epochs. Known shortfall: with the official N(0, 0.02)
initialisation a sample's information reaches the label representations scaled by about ``(0.02 sqrt(d))^2`` per
attention block (value and output projections) against the unit-norm residual of the label embeddings (measured at
d = 32: the logits' spread over samples is 2e-4 at initialisation, over labels 0.08), so the ~80-120 optimizer steps
of 10 quick epochs on the sample leave TAILOR near the label prior: d = 32 and 64 predict no label at threshold 0.5;
d = 128 gains +0.06 micro-F1 over the best constant on average over rotations 0-4 of the 240-song sample at lr 3e-3
(validation micro-F1 falling back to 0 between epochs: 3e-3 is high for post-LN transformers), and +0.076 on the
160-song test sample (tests/test_tailor.py, ``test_learns_the_planted_signal``, marked xfail; the bar is 0.15).
Tried there and not better: init std 1/sqrt(d) (-0.045), batch 32 (-0.012), d 64 at batch 8 (-0.276).
On the same batch with the same weights the loss equals the official code's (``bench/bench_tailor.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmer.metrics import DEFAULT_THRESHOLD
from mmer.neural import check_modalities, zero_padding
from mmer.registry import DataInfo, model_kwargs, register
from mmer.tuning import neural_budget

CITATION = ("Zhang, Chen, Shen and Wang, Tailor Versatile Multi-modal Learning for Multi-label Emotion Recognition, "
            "AAAI 2022")
#: Loss weights of the official aligned branch (``models.py``): adversarial, orthogonality, common BCE.
ADVERSARIAL_WEIGHT = 0.01
ORTHOGONALITY_WEIGHT = 5e-6
COMMON_WEIGHT = 0.5
LAYER_NORM_EPS = 1e-12  # the official TF-style LayerNorm (epsilon inside the square root, as nn.LayerNorm)
INIT_STD = 0.02  # official initializer_range


# ------------------------------------------------------------------------------------------------
# loss pieces


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-coefficient`` (official ``GradReverse``)."""

    @staticmethod
    def forward(ctx, x: Tensor, coefficient: float) -> Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.coefficient * grad, None


def reverse_gradient(x: Tensor, coefficient: float = 1.0) -> Tensor:
    return GradientReversal.apply(x, coefficient)


def orthogonality_loss(first: Tensor, second: Tensor) -> Tensor:
    """``mean_b ||first_b second_b^T||_F^2`` over token Gram matrices (B, S1, d) x (B, S2, d); padded nodes must be
    zero (they then add nothing). The official ``calculate_orthogonality_loss``."""
    gram = torch.bmm(first, second.transpose(1, 2))
    return gram.pow(2).sum(dim=(1, 2)).mean()


def masked_token_cross_entropy(logits: Tensor, target: int, mask: Tensor) -> Tensor:
    """Mean cross-entropy of every real node's logits (B, S, K) against class ``target``; 0 without a real node."""
    real = logits[mask]
    if real.shape[0] == 0:
        return logits.sum() * 0.0  # keeps the graph (and the device) for a batch where the modality is absent
    return F.cross_entropy(real, torch.full((real.shape[0],), target, dtype=torch.long, device=logits.device))


# ------------------------------------------------------------------------------------------------
# BERT-style post-LN blocks


def _positions(mask: Tensor, limit: int) -> Tensor:
    """0, 1, ... along each right-padded row (padding numbered on, unused), capped at ``limit - 1``."""
    return torch.arange(mask.shape[1], device=mask.device).clamp_max(limit - 1).expand(mask.shape)


class Attention(nn.Module):
    """Multi-head attention with key padding mask, dropout on the probabilities, then dense -> dropout ->
    LayerNorm(+ the query residual): official ``BertAttention`` / ``DecoderAttention``.

    A query whose keys are all padding gets a zero context (no message) instead of NaN."""

    def __init__(self, d: int, heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not divisible by {heads} attention heads")
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attention_dropout = attention_dropout
        self.dense = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, source: Tensor, source_mask: Tensor) -> Tensor:
        b, s_q, d = x.shape
        s_k, h = source.shape[1], self.heads
        q = self.query(x).view(b, s_q, h, -1).transpose(1, 2)
        k = self.key(source).view(b, s_k, h, -1).transpose(1, 2)
        v = self.value(source).view(b, s_k, h, -1).transpose(1, 2)
        present = source_mask.any(dim=1)
        # A sample without any real key attends to all its (padded) keys; its context is zeroed below.
        keys = source_mask | ~present[:, None]
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys[:, None, None, :],
            dropout_p=self.attention_dropout if self.training else 0.0)
        context = context.transpose(1, 2).reshape(b, s_q, d) * present[:, None, None].to(x.dtype)
        return self.norm(x + self.dropout(self.dense(context)))


class FeedForward(nn.Module):
    """dense -> GELU (erf) -> dense -> dropout -> LayerNorm(+ residual): official ``BertIntermediate``+``BertOutput``."""

    def __init__(self, d: int, intermediate: int, dropout: float):
        super().__init__()
        self.intermediate, self.dense = nn.Linear(d, intermediate), nn.Linear(intermediate, d)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.dense(F.gelu(self.intermediate(x)))))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, intermediate: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.attention = Attention(d, heads, dropout, attention_dropout)
        self.ffn = FeedForward(d, intermediate, dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.ffn(self.attention(x, x, mask))


class Encoder(nn.Module):
    """Embedding (optional input projection, learned positions, optional type embeddings, LayerNorm, dropout)
    and post-LN layers; padded outputs are zero. Official ``BertModel``/``VisualModel``/``AudioModel``
    (``project``) and ``CrossModel`` (``types``)."""

    def __init__(self, d: int, heads: int, intermediate: int, layers: int, dropout: float, attention_dropout: float,
                 max_positions: int, input_dim: int | None = None, types: int = 0):
        super().__init__()
        self.project = nn.Linear(input_dim, d) if input_dim is not None else None
        self.positions = nn.Embedding(max_positions, d)
        self.types = nn.Embedding(types, d) if types else None
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, intermediate, dropout, attention_dropout)
                                    for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor, types: Tensor | None = None) -> Tensor:
        if self.project is not None:
            x = self.project(x)
        x = x + self.positions(_positions(mask, self.positions.num_embeddings))
        if self.types is not None:
            x = x + self.types(types)
        x = self.dropout(self.norm(x))
        for layer in self.layers:
            x = layer(x, mask)
        return zero_padding(x, mask)


def front_pack(x: Tensor, mask: Tensor, types: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The real nodes of every row moved to the front in order (width max(1, most real nodes)); padding zero."""
    lengths = mask.sum(dim=1)
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    width = max(1, int(lengths.max()) if lengths.numel() else 1)
    order = order[:, :width]
    packed_mask = torch.arange(width, device=mask.device)[None, :] < lengths[:, None]
    packed = torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1])) * packed_mask[..., None].to(x.dtype)
    return packed, packed_mask, torch.gather(types, 1, order) * packed_mask


class LabelDecoder(nn.Module):
    """Official ``DecoderModel``: label embeddings -> LayerNorm -> dropout; per layer self-attention among the
    labels, cross-attention onto the fused sequence, FFN (each post-LN)."""

    def __init__(self, num_labels: int, d: int, heads: int, intermediate: int, layers: int, dropout: float,
                 attention_dropout: float):
        super().__init__()
        self.embeddings = nn.Embedding(num_labels, d)
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.self_attention = nn.ModuleList(Attention(d, heads, dropout, attention_dropout) for _ in range(layers))
        self.cross_attention = nn.ModuleList(Attention(d, heads, dropout, attention_dropout) for _ in range(layers))
        self.ffn = nn.ModuleList(FeedForward(d, intermediate, dropout) for _ in range(layers))

    def forward(self, memory: Tensor, memory_mask: Tensor) -> Tensor:
        b = memory.shape[0]
        labels = self.dropout(self.norm(self.embeddings.weight)).expand(b, -1, -1)
        every_label = torch.ones(labels.shape[:2], dtype=torch.bool, device=memory.device)
        for self_attention, cross_attention, ffn in zip(self.self_attention, self.cross_attention, self.ffn):
            labels = ffn(cross_attention(self_attention(labels, labels, every_label), memory, memory_mask))
        return labels


# ------------------------------------------------------------------------------------------------
# the model


class TAILOR(nn.Module):
    """TAILOR over any number of modalities; see the module docstring for the architecture and deviations.

    Args:
        modality_dims: {modality: feature size}, in the data's order (the first takes text's role).
        num_labels: L.
        d, heads, intermediate: width, attention heads, FFN width of every transformer (official 256, 8, 256).
        primary_layers, layers: unimodal encoder layers of the first modality and of the others (6, 4).
        cross_layers, decoder_layers: layers of each cross encoder and of the label decoder (3, 1).
        dropout, attention_dropout: hidden-state and attention-probability dropout (0.3, 0.3).
        max_positions: position embeddings of each unimodal encoder (60); cross encoders get (K + 1) times it.
        warmup, weight_decay: the optimiser's warm-up fraction of all steps (0.1) and decoupled weight decay (0.01).
    """

    def __init__(self, modality_dims: Mapping[str, int], num_labels: int, *, d: int = 256, heads: int = 8,
                 intermediate: int = 256, primary_layers: int = 6, layers: int = 4, cross_layers: int = 3,
                 decoder_layers: int = 1, dropout: float = 0.3, attention_dropout: float = 0.3,
                 max_positions: int = 60, warmup: float = 0.1, weight_decay: float = 0.01):
        super().__init__()
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup must be a fraction of the training steps in [0, 1), got {warmup!r}")
        self.warmup, self.weight_decay = float(warmup), float(weight_decay)
        if not modality_dims:
            raise ValueError("TAILOR needs at least one modality")
        self.modality_dims = {name: int(dim) for name, dim in modality_dims.items()}
        self.modalities = tuple(self.modality_dims)
        self.num_labels = int(num_labels)
        k = len(self.modalities)
        blocks = dict(d=d, heads=heads, intermediate=intermediate, dropout=dropout,
                      attention_dropout=attention_dropout)
        # 1. unimodal extractor
        self.input_norm = nn.ModuleDict({m: nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
                                         for m, dim in self.modality_dims.items()})
        self.encoders = nn.ModuleDict({m: Encoder(layers=primary_layers if i == 0 else layers,
                                                  max_positions=max_positions, input_dim=dim, **blocks)
                                       for i, (m, dim) in enumerate(self.modality_dims.items())})
        # 2. adversarial multi-modal refinement
        self.private = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Dropout(0.1), nn.Tanh())
                                      for m in self.modalities})
        self.common = nn.Sequential(nn.Linear(d, d), nn.Dropout(0.3), nn.Tanh())
        self.discriminator = nn.Sequential(nn.Linear(d, d // 2), nn.Dropout(0.1), nn.ReLU(), nn.Linear(d // 2, k))
        self.common_classifier = nn.Sequential(nn.Linear(d, self.num_labels), nn.Dropout(0.1))
        # 3. label-modal alignment: K - 1 private fusions (m_{K-1} .. m_1 put in front), then private + common
        cross = dict(layers=cross_layers, max_positions=(k + 1) * max_positions, types=2, **blocks)
        self.fusion = nn.ModuleList(Encoder(**cross) for _ in range(k - 1))
        self.private_common = Encoder(**cross)
        self.decoder = LabelDecoder(self.num_labels, d, heads, intermediate, decoder_layers, dropout,
                                    attention_dropout)
        self.classifier = nn.Sequential(nn.Linear(d, 1), nn.Dropout(0.1))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @staticmethod
    def cross(encoder: Encoder, first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """One cross encoder over [first (type 0), second (type 1)], real nodes packed to the front."""
        (x1, m1), (x2, m2) = first, second
        types = torch.cat([torch.zeros_like(m1, dtype=torch.long), torch.ones_like(m2, dtype=torch.long)], dim=1)
        x, mask, types = front_pack(torch.cat([x1, x2], dim=1), torch.cat([m1, m2], dim=1), types)
        return encoder(x, mask, types), mask

    def features(self, batch: Mapping) -> dict:
        """Everything the loss needs: per modality its mask, private and common sequences; the common sequence and
        its mask; the fused sequence and its mask."""
        inputs = check_modalities(batch, self.modality_dims)
        masks, private, common = {}, {}, {}
        for m, (x, mask) in inputs.items():
            encoded = self.encoders[m](zero_padding(self.input_norm[m](x), mask), mask)
            masks[m] = mask
            private[m] = zero_padding(self.private[m](encoded), mask)
            common[m] = zero_padding(self.common(encoded), mask)
        width = max(c.shape[1] for c in common.values())
        summed = sum(F.pad(c, (0, 0, 0, width - c.shape[1])) for c in common.values())
        common_mask = torch.stack([F.pad(masks[m], (0, width - masks[m].shape[1])) for m in self.modalities]).any(0)
        fused = (private[self.modalities[-1]], masks[self.modalities[-1]])
        for encoder, m in zip(self.fusion, reversed(self.modalities[:-1])):
            fused = self.cross(encoder, (private[m], masks[m]), fused)
        fused = self.cross(self.private_common, fused, (summed, common_mask))
        return {"masks": masks, "private": private, "common": common, "common_sequence": summed,
                "common_mask": common_mask, "fused": fused}

    def forward(self, batch: Mapping) -> dict:
        parts = self.features(batch)
        labels = self.decoder(*parts["fused"])
        logits = self.classifier(labels).squeeze(-1)
        common_logits = self.common_classifier(parts["common_sequence"][:, 0])
        return {"logits": logits, "common_logits": common_logits, "private": parts["private"],
                "common": parts["common"], "masks": parts["masks"]}

    def loss_terms(self, outputs: Mapping, batch: Mapping) -> dict[str, Tensor]:
        """The official loss terms, unweighted: ``bce``, ``common_bce``, ``adversarial_private``,
        ``adversarial_common`` (through gradient reversal), ``orthogonality_private``, ``orthogonality_common``."""
        target = batch["labels"].to(outputs["logits"].dtype)
        private, common, masks = outputs["private"], outputs["common"], outputs["masks"]
        zero = outputs["logits"].sum() * 0.0
        adversarial_private, adversarial_common = zero, zero
        for index, m in enumerate(self.modalities):
            adversarial_private = adversarial_private + masked_token_cross_entropy(
                self.discriminator(private[m]), index, masks[m])
            adversarial_common = adversarial_common + masked_token_cross_entropy(
                self.discriminator(reverse_gradient(common[m])), index, masks[m])
        orthogonality_private = sum((orthogonality_loss(private[a], private[b])
                                     for a, b in combinations(self.modalities, 2)), zero)
        orthogonality_common = sum((orthogonality_loss(common[m], private[m]) for m in self.modalities), zero)
        return {"bce": F.binary_cross_entropy_with_logits(outputs["logits"], target),
                "common_bce": F.binary_cross_entropy_with_logits(outputs["common_logits"], target),
                "adversarial_private": adversarial_private, "adversarial_common": adversarial_common,
                "orthogonality_private": orthogonality_private, "orthogonality_common": orthogonality_common}

    def loss(self, outputs: Mapping, batch: Mapping) -> Tensor:
        """BCE + 0.01 (adv_common + adv_private) + 5e-6 (orth_private + orth_common) + 0.5 BCE_common."""
        t = self.loss_terms(outputs, batch)
        return (t["bce"] + ADVERSARIAL_WEIGHT * (t["adversarial_common"] + t["adversarial_private"])
                + ORTHOGONALITY_WEIGHT * (t["orthogonality_private"] + t["orthogonality_common"])
                + COMMON_WEIGHT * t["common_bce"])

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Decay every parameter but biases and the encoders' LayerNorms (the input LayerNorms' gains decay, as in
        the official grouping); see the module docstring."""
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            in_norm = ".norm." in f".{name}" and not name.startswith("input_norm.")
            (no_decay if name.endswith("bias") or in_norm else decay).append(parameter)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizer(self, lr: float, total_steps: int):
        """AdamW + the official ``warmup_linear`` schedule as a LambdaLR (see the module docstring)."""
        warmup = self.warmup
        device = next(self.parameters()).device
        kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
        optimizer = torch.optim.AdamW(self.parameter_groups(self.weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-6,
                                      **kind)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_linear(
            step / max(1, total_steps), warmup))


def warmup_linear(progress: float, warmup: float) -> float:
    """The official schedule factor at ``progress`` = step / total steps: linear warm-up to 1 over ``warmup``, then
    linear decay to 0 at the end."""
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


# ------------------------------------------------------------------------------------------------
# registry entry

PAPER = {"d": 256, "heads": 8, "intermediate": 256, "primary_layers": 6, "layers": 4, "cross_layers": 3,
         "decoder_layers": 1, "dropout": 0.3, "attention_dropout": 0.3, "max_positions": 60, "warmup": 0.1,
         "weight_decay": 0.01,
         "lr": 5e-5, "batch_size": 64, "clip": 1.0, "threshold": DEFAULT_THRESHOLD} | neural_budget("paper")
QUICK = PAPER | {"d": 128, "heads": 4, "intermediate": 128, "primary_layers": 1, "layers": 1, "cross_layers": 1,
                 "dropout": 0.1, "attention_dropout": 0.1, "batch_size": 16} | neural_budget("quick")


@register("TAILOR", group="After the paper", citation=CITATION, kind="neural", quick=QUICK, paper=PAPER)
def build(config: dict, info: DataInfo) -> TAILOR:
    return TAILOR(info.modality_dims, info.num_labels, **model_kwargs(config))
