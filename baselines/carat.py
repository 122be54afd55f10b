"""CARAT (Peng, Chen, Shou and Chen, AAAI 2024): contrastive feature reconstruction and aggregation, after the paper.

Peng, Chen, Shou, Chen. "CARAT: Contrastive Feature Reconstruction and Aggregation for Multi-Modal Multi-Label
Emotion Recognition." AAAI 2024 (arXiv 2312.10201). Official code: github.com/chengzju/CARAT (no licence file:
read for the details the paper leaves out, nothing copied; ``bench/bench_carat.py`` runs it beside this one).

What the model does, for modalities ``M`` taken from the data (any number ``|M| >= 1``) and ``L`` labels:

1. **Uni-modal encoders** (paper "Uni-modal Feature Extraction"): per modality a LayerNorm over the feature vector
   of every node (official ``Normalize``, TF-style epsilon 1e-12), a linear embedding to ``d``, learned position
   embeddings, LayerNorm and dropout, then BERT-style post-LN transformer layers (self-attention with ``heads``
   heads, GELU feed-forward of width ``intermediate``, dropout on attention weights and both residual branches).
   Layers per modality: the paper's ``l_t = 6``, ``l_v = l_a = 4`` (``layers``: a count per modality name, the
   ``default_layers`` for the others).
2. **Label-specific representations** (paper eq. 1): per modality a label-wise attention ``softmax_S(W_m h)``
   (``W_m``: L x d, no bias) pools the node states into one vector per label, ``r_m`` (B, L, d).
3. **Contrastive representation learning** (paper "Contrastive Representation Learning", eqs. 2-5): 2-layer MLP
   encoders ``En_m`` (d -> d/2 -> d_z, ReLU) and decoders ``De_m`` (d_z -> d/2 -> d) per modality; the latent
   ``z = En_m(r_m)`` of stage 1 and of the two reconstruction stages (3 stages x |M| modalities x L labels per
   sample) are L2-normalised and trained with a supervised contrastive loss (temperature 0.07) against themselves
   and a queue of the last ``queue_size`` (8,192) latents of earlier batches. The class of a latent is
   (modality, label, present or absent): ``2 L |M|`` class ids (36 for MOSEI: 2 x 6 labels x 3 modalities, as the
   official ``get_cl_labels``); every stage of one (sample, modality, label) has the same id.
4. **Prototypes** (paper eqs. 6-7): per modality and label a positive and a negative prototype in the latent
   space, exponential moving averages (momentum 0.99) of the normalised stage-1 latents of the samples that have /
   lack the label, updated after every training batch. The prototype "padding" of modality m for label j is, in
   training, the softmax(cosine similarity)-weighted mix of its two prototypes, in evaluation the more similar one
   (a hard choice); it is decoded by ``De_m``.
5. **Feature reconstruction** (paper "Feature Reconstruction", FRR and SRR, eqs. 8-10): modality m is rebuilt from
   the others, ``a_m = R_m([x_1, ..., x_|M|])`` with ``x_k = De_k(En_k(r_k))`` for ``k != m`` and ``x_m`` = m's
   prototype padding (first stage, FRR), then ``b_m = R_m([a_1, ..., a_|M|])`` (second stage, SRR, the same
   ``R_m``: one linear layer |M| d -> d, as the official ``tv2a``/``ta2v``/``va2t``).
6. **Classifiers** (paper eq. 11): a label-wise linear classifier per modality (``w_{m,j} . x``, no bias), shared by
   the three stages (``r``, ``a``, ``b``); each stage's logit per label is the maximum over modalities.
7. **Shuffle-based aggregation** (paper "Sample-wise and Modality-wise Shuffle", eqs. 12-14): an MLP
   ``Agg`` (L d -> d -> L, ReLU) reads the L second-stage vectors of one modality and predicts all labels; in
   training it also reads shuffled compositions: for each label j and modality slot, vector j is taken from a random
   other sample (one permutation of the batch per label and slot) and a random modality (one permutation of the
   modalities per label and sample), with that sample's label j as target.
8. **Prediction**: score = (mean over modalities of sigmoid(Agg(b_m)) + sigmoid(max-over-modalities stage-2
   logit)) / 2, the official ``predict_final_scores_mean``. ``forward`` returns it as ``logits = logit(score)`` so
   the engine's sigmoid gives the score back.
9. **Loss** (paper eq. 15, weights of the official ``train.sh``, which match the paper's "Implementation Details"):
   ``0.01 BCE(stage 1) + 0.1 BCE(stage 2 = FRR) + 1 BCE(stage 3 = SRR) + 1 SupCon + 1 MSE(De(En(r)), r)
   + 1 MSE(a, r) + 0 MSE(b, r) + 1 BCE(Agg) + 0.1 BCE(Agg on shuffled)``; MSE and BCE are means over their elements,
   MSE summed over modalities.

Training as the official code (``main.py``, ``models/optimization.py``): BERT-style Adam (no bias correction,
epsilon 1e-6, decoupled weight decay 0.01 except biases and LayerNorm weights, every parameter's gradient clipped to
norm 1 on its own), learning rate 5e-5 with 10 % linear warm-up and linear decay to 0 over all steps; on top, the
global gradient clip at 1.0 (the engine's ``clip``, as the official training loop); batch 64; selection on
validation micro-F1. ``configure_optimizer`` hands that optimiser to the engine.

Buffers and the engine's best-epoch restore: the prototypes, the queue (latents, class ids, the write pointer)
are buffers, so they are in the state dict: ``fit`` keeps the best validation epoch's copy and loads it back, so the
checkpoint predicts with the prototypes it was validated with (evaluation uses them for the hard choice). The queue
comes back with it too; it is read only in training, so after the restore it does not change any prediction.
Buffers change only in training mode; evaluation (validation, test, ``hhmpn-predict``) never writes them.

Deviations from the paper and the official code, and why:

* **Any modality count.** The official code is written for text, visual, audio. Here every per-modality module
  exists once per data modality, the reconstruction input is the data's modalities in the data's order (MOSEI
  here: text, audio, vision; the official order is text, visual, audio — the bench permutes the weights), and the
  maxima and means run over |M|. With **two** modalities, ``a_m = R_m([x_m padding, De(En(r_other))])`` in data
  order; with **one**, there is no other modality: ``a_m = R_m(padding_m)`` — the modality is "reconstructed" from
  its own prototypes alone (R_m: d -> d), so every stage, loss term and the aggregation still run (Table 3's
  single-modality rows).
* **Real node masks.** The official loaders give all-ones masks over 60 zero-padded steps (aligned MOSEI; the
  attention sees the padding). Here every attention (self-attention, label-wise attention) reads only real nodes,
  positions count the real nodes from 0 (right padding), so a sample's output does not depend on its batch's
  padding (tested). The feed-forward parts run on the real nodes only (packed), which is also where most of the
  speed-up over the official code on MOSEI shapes comes from.
* **A modality with zero nodes** (NEMu songs without comments or images): its label-wise vectors are zero; it is
  left out of the stage-1 maximum (all modalities absent: logit 0), its slot in the others' reconstruction input
  is its prototype padding (not the decoding of a zero vector), its stage-1 latents join neither the contrastive
  loss nor the queue nor the prototype averages, and its MSE terms (which would pull reconstructions towards a zero
  target) are left out. Its reconstructions ``a_m``, ``b_m`` — what the model guesses for the missing modality —
  are kept everywhere. The official data never lacks a modality.
* **No CTC for unaligned data.** The official unaligned path soft-aligns audio and visual to the text length with
  an LSTM (``CTCModule``, no CTC loss of its own). Here each modality's encoder reads its own sequence of any
  length and the label-wise attention pools it to L vectors, so aligned and unaligned data take the same path.
  Position tables have ``max_positions`` (512) rows (official: 60 text, 500 audio/visual); later nodes share the
  last row.
* **Unordered modalities.** NEMu's comments and images carry no order: modalities named in
  ``unordered_modalities`` get no position embeddings (as MulT here).
* **Contrastive loss, computed, not changed.** The official ``SupConLoss`` builds the full (B·3|M|L + Q)^2
  similarity matrix (11,648^2 at batch 64) and uses every row — the queue's too — as an anchor, averaging over all
  of them (rows without a positive add 0). The same loss is computed here from three blocks: batch x batch and
  batch x queue with gradients, queue x queue without (it only enters the queue rows' normalisers); positive sums
  come from per-class sums of the features. Equal to the official value to float rounding (the official's 1e-12
  inside the logarithm is dropped; tested against a direct computation). The queue starts as the official one
  (Gaussian vectors normalised over the queue axis) with class id -1 ("no class": no positives; the official
  Gaussian class ids never match either).
* **Prototype update** is the official per-sample loop in closed form: samples of a batch enter the moving average
  one after another in batch order, ``p <- m^k p + (1 - m) sum_r m^(k - r) z_r`` (tested against the loop).
* **Random shuffles** draw from torch's generator (the official code mixes numpy's ``np.random.permutation``);
  same distribution, other numbers.
* **Official bugs not copied**: ``models.py`` uses ``np`` without importing it (NameError at the first shuffle);
  ``shuffle_total_aug.view(...)`` fails on current torch (advanced indexing with the permuted index tensors
  returns a non-contiguous tensor; checked); the validation loader shuffles with
  ``drop_last=True`` (a random subset is scored each epoch; its test loader keeps every sample in order, so does
  ours for both); ``get_metrics(pred, label)`` swaps the argument order, so its logged precision and recall are
  each other (F1 and accuracy are symmetric); ``MLLinear`` squeezes its last axis, which would drop the label axis
  with one label. The official weight decay also decays the input LayerNorm's weight (its name lacks
  "LayerNorm"); here no LayerNorm weight decays.
* **Threshold.** The official code predicts a label when its score exceeds 0.25; the harness applies its one
  decision rule to every model (``score >= 0.5``, or ``--threshold validation``), so CARAT is scored at 0.5 like
  every other row.
* **Validation loss** (the engine's divergence check): the terms that need no training-only machinery
  (classification BCEs, MSEs, aggregation BCE); the contrastive and shuffle terms are training-only.
* **Label order** is the data's (MOSEI: happy, sad, anger, surprise, disgust, fear — the official order).
* **Epochs** follow the benchmark's one tuning rule (``mmer.tuning``): paper profile 50 epochs (the paper trains
  20), the best validation epoch kept; quick 10 epochs at the shared learning rate 3e-3.

Configurations: ``paper`` is the official ``train.sh`` (d = 256, d_z = 64, 8 heads, feed-forward 256, dropout 0.3,
text-like modalities 6 layers and the others 4, queue 8,192, tau 0.07, momentum 0.99, lr 5e-5, batch 64, 10 %
warm-up, clip 1.0). ``quick`` is a small CPU setting for the benchmark (d = 32, d_z = 16, 4 heads, 1 layer per
modality, dropout 0.1, queue 1,024, batch 16) with smaller auxiliary weights (reconstruction MSEs 0.01, SupCon 0.1,
:data:`QUICK_LOSS_WEIGHTS`): at the paper's weights the short quick runs (10 epochs of ~8 steps on the sample) pull
the label-wise vectors towards what the reconstructions can match and stay at the constant baseline (measured on
the 160-song sample, rotations 0 and 1: test micro-F1 0.20 / 0.31 against constant 0.36 / 0.30); with them the
planted signal is learned (tests/test_carat.py: +0.157 micro-F1 over the constant, mean of rotations 0, 2, 4, 6, 8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmer.metrics import DEFAULT_THRESHOLD
from mmer.neural import check_modalities, masked_softmax
from mmer.registry import DataInfo, model_kwargs, register
from mmer.tuning import neural_budget

CITATION = ("Peng, Chen, Shou and Chen, CARAT: Contrastive Feature Reconstruction and Aggregation for Multi-Modal "
            "Multi-Label Emotion Recognition, AAAI 2024")

#: Loss weights of the official train.sh (paper: gamma_o, gamma_alpha, gamma_beta, gamma_s, gamma_r, gamma_sf).
LOSS_WEIGHTS = {"stage1_bce": 0.01, "stage2_bce": 0.1, "stage3_bce": 1.0, "contrastive": 1.0, "recon_mse": 1.0,
                "aug_mse": 1.0, "beta_mse": 0.0, "agg_bce": 1.0, "shuffle_bce": 0.1}
#: Modality names read as text (the paper's 6-layer text encoder); others get ``default_layers``.
TEXT_LAYERS = {"text": 6, "lyrics": 6, "comments": 6}


# ------------------------------------------------------------------------------------------------
# encoders


class EncoderLayer(nn.Module):
    """One BERT post-LN layer: self-attention, dense + dropout + LayerNorm(residual), GELU feed-forward, the same.

    Runs on the packed real nodes ``tokens`` (N, d); attention scatters them into the padded (B, S) grid.
    """

    def __init__(self, d: int, heads: int, intermediate: int, dropout: float, attention_dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not divisible by {heads} attention heads")
        self.d, self.heads, self.attention_dropout = d, heads, attention_dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.attention_out = nn.Linear(d, d)
        self.attention_norm = nn.LayerNorm(d, eps=1e-12)
        self.intermediate = nn.Linear(d, intermediate)
        self.output = nn.Linear(intermediate, d)
        self.output_norm = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, layout: "Layout") -> Tensor:
        b, s, h = layout.batch, layout.width, self.heads
        qkv = layout.unpack(self.qkv(tokens)).view(b, s, 3, h, self.d // h).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=layout.attention_mask,
                                                 dropout_p=self.attention_dropout if self.training else 0.0)
        context = layout.pack(context.transpose(1, 2).reshape(b, s, self.d))
        hidden = self.attention_norm(tokens + self.dropout(self.attention_out(context)))
        ffn = self.output(F.gelu(self.intermediate(hidden)))
        return self.output_norm(hidden + self.dropout(ffn))


class Layout:
    """Where the real nodes of a padded (B, S) batch are: pack (B, S, c) -> (N, c) and unpack back (zeros)."""

    def __init__(self, mask: Tensor):
        self.batch, self.width = mask.shape
        self.mask = mask
        self.dense = bool(mask.all())
        self.index = None if self.dense else mask.reshape(-1).nonzero().squeeze(1)
        # Keys: the real nodes; a row without any (a zero-node modality) attends to its zero padding instead, so
        # its (unused) outputs stay finite.
        keys = mask | ~mask.any(dim=1, keepdim=True)
        self.attention_mask = None if self.dense else keys[:, None, None, :]

    def pack(self, x: Tensor) -> Tensor:
        flat = x.reshape(self.batch * self.width, x.shape[-1])
        return flat if self.dense else flat.index_select(0, self.index)

    def unpack(self, tokens: Tensor) -> Tensor:
        if not self.dense:
            tokens = tokens.new_zeros(self.batch * self.width, tokens.shape[-1]).index_copy(0, self.index, tokens)
        return tokens.view(self.batch, self.width, -1)


class ModalityEncoder(nn.Module):
    """Input LayerNorm, embedding + learned positions + LayerNorm + dropout, ``layers`` post-LN layers: (B, S, d)."""

    def __init__(self, dim: int, d: int, layers: int, heads: int, intermediate: int, dropout: float,
                 attention_dropout: float, max_positions: int, positions: bool):
        super().__init__()
        self.input_norm = nn.LayerNorm(dim, eps=1e-12)
        self.embedding = nn.Linear(dim, d)
        self.positions = nn.Embedding(max_positions, d) if positions else None
        self.embedding_norm = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, intermediate, dropout, attention_dropout)
                                    for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        layout = Layout(mask)
        tokens = self.embedding(self.input_norm(layout.pack(x)))
        if self.positions is not None:
            steps = torch.arange(layout.width, device=x.device).clamp_max(self.positions.num_embeddings - 1)
            tokens = tokens + layout.pack(self.positions(steps).expand(layout.batch, -1, -1))
        tokens = self.dropout(self.embedding_norm(tokens))
        for layer in self.layers:
            tokens = layer(tokens, layout)
        return layout.unpack(tokens)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (the official ``MLLinear``, Xavier-uniform weights, zero biases)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(n_in, n_out)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear] if i == len(sizes) - 2 else [linear, nn.ReLU()]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------
# loss pieces


def supervised_contrastive(batch_feats: Tensor, batch_ids: Tensor, queue_feats: Tensor, queue_ids: Tensor,
                           temperature: float = 0.07, base_temperature: float = 0.07) -> Tensor:
    """The official ``SupConLoss`` over [batch; queue] with every row an anchor (paper eq. 5), in blocks.

    ``*_feats`` are L2-normalised (n, d_z); ``*_ids`` class ids (n,), ``-1`` = no class. For anchor i the
    positives are the other rows of its class; its term is ``-mean_pos log softmax_{j != i}(f_i . f_j / tau)``
    (0 without positives), and the loss is the mean over all rows, scaled by ``tau / base_tau``. The queue is
    constant (no gradient).
    """
    n_b = batch_feats.shape[0]
    queue_feats, queue_ids = queue_feats.detach().clone(), queue_ids.detach().clone()  # the caller updates them
    eye = torch.eye(n_b, dtype=torch.bool, device=batch_feats.device)
    bb = (batch_feats @ batch_feats.T / temperature).masked_fill(eye, -math.inf)
    bq = batch_feats @ queue_feats.T / temperature
    with torch.no_grad():
        qq = queue_feats @ queue_feats.T / temperature
        qq.fill_diagonal_(-math.inf)
        qq_lse = torch.logsumexp(qq, dim=1)
        del qq
    batch_lse = torch.logaddexp(torch.logsumexp(bb, dim=1), torch.logsumexp(bq, dim=1))
    queue_lse = torch.logaddexp(qq_lse, torch.logsumexp(bq, dim=0))
    # positive sums from per-class feature sums: sum_{j != i, c_j = c_i} f_i . f_j = f_i . (S_{c_i} - f_i)
    feats = torch.cat([batch_feats, queue_feats])
    ids = torch.cat([batch_ids, queue_ids]).long()
    valid = ids >= 0
    classes = int(ids.max()) + 1 if bool(valid.any()) else 1
    safe = torch.where(valid, ids, torch.zeros_like(ids))
    sums = feats.new_zeros(classes, feats.shape[1]).index_add(0, safe[valid], feats[valid])
    counts = torch.bincount(safe[valid], minlength=classes).to(feats.dtype)
    positives = torch.where(valid, counts[safe] - 1, torch.zeros_like(counts[safe]))
    positive_logits = ((sums[safe] - feats) * feats).sum(dim=1) / temperature
    lse = torch.cat([batch_lse, queue_lse])
    mean_log_prob = torch.where(positives > 0, (positive_logits - positives * lse) / positives.clamp_min(1),
                                torch.zeros_like(lse))
    return -(temperature / base_temperature) * mean_log_prob.mean()


def ema_update(prototypes: Tensor, feats: Tensor, members: Tensor, momentum: float) -> Tensor:
    """The official sequential EMA over a batch in closed form: (L, d_z) prototypes, (B, L, d_z) feats, (B, L) bool.

    For label j with members i_1 < ... < i_k (batch order): ``p <- m^k p + (1 - m) sum_r m^(k - r) f_{i_r}``.
    """
    members = members.to(feats.dtype)
    later = members.flip(0).cumsum(0).flip(0) - members  # members after i, per label
    weights = members * (1 - momentum) * momentum ** later
    return momentum ** members.sum(0)[:, None] * prototypes + torch.einsum("bl,bld->ld", weights, feats)


# ------------------------------------------------------------------------------------------------
# the model


class CARAT(nn.Module):
    """CARAT over any number of modalities; see the module docstring for the architecture and deviations."""

    def __init__(self, modality_dims: Mapping[str, int], num_labels: int, *, d: int = 256, latent: int = 64,
                 heads: int = 8, intermediate: int = 256, layers: Mapping[str, int] | None = None,
                 default_layers: int = 4, dropout: float = 0.3, attention_dropout: float = 0.3,
                 max_positions: int = 512, unordered_modalities: Sequence[str] = (), queue_size: int = 8192,
                 temperature: float = 0.07, momentum: float = 0.99, loss_weights: Mapping[str, float] | None = None,
                 warmup: float = 0.1, weight_decay: float = 0.01, init_range: float = 0.02):
        super().__init__()
        if not modality_dims:
            raise ValueError("CARAT needs at least one modality")
        unknown = set(loss_weights or {}) - set(LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown CARAT loss weights {sorted(unknown)}; known: {sorted(LOSS_WEIGHTS)}")
        self.modality_dims = {name: int(dim) for name, dim in modality_dims.items()}
        self.modalities = tuple(self.modality_dims)
        self.num_labels, self.d, self.latent = int(num_labels), int(d), int(latent)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.loss_weights = LOSS_WEIGHTS | dict(loss_weights or {})
        self.warmup, self.weight_decay = float(warmup), float(weight_decay)
        layers = dict(layers or {})
        unordered = set(unordered_modalities)
        self.encoders = nn.ModuleDict({
            name: ModalityEncoder(dim, d, layers.get(name, default_layers), heads, intermediate, dropout,
                                  attention_dropout, max_positions, positions=name not in unordered)
            for name, dim in self.modality_dims.items()})
        # BERT initialisation of the encoders (official: init_weights applied before the other modules exist)
        for module in self.encoders.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=init_range)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        L, M = self.num_labels, len(self.modalities)
        self.label_attention = nn.ParameterDict()
        self.classifier = nn.ParameterDict()
        for name in self.modalities:
            self.label_attention[name] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(L, d)))
            self.classifier[name] = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(L, d), a=math.sqrt(5)))
        self.encode = nn.ModuleDict({name: mlp([d, d // 2, latent]) for name in self.modalities})
        self.decode = nn.ModuleDict({name: mlp([latent, d // 2, d]) for name in self.modalities})
        self.reconstruct = nn.ModuleDict({name: mlp([M * d, d]) for name in self.modalities})
        self.aggregate = mlp([L * d, d, L])
        for name in self.modalities:
            self.register_buffer(f"positive_prototypes_{name}", torch.zeros(L, latent))
            self.register_buffer(f"negative_prototypes_{name}", torch.zeros(L, latent))
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, latent), dim=0))
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    # -- pieces ----------------------------------------------------------------------------------

    def prototypes(self, name: str) -> tuple[Tensor, Tensor]:
        return getattr(self, f"positive_prototypes_{name}"), getattr(self, f"negative_prototypes_{name}")

    def label_vectors(self, name: str, x: Tensor, mask: Tensor) -> Tensor:
        """Paper eq. 1: the label-wise attention pooling of modality ``name``'s node states, (B, L, d)."""
        states = self.encoders[name](x, mask)
        scores = torch.einsum("bsd,ld->bls", states, self.label_attention[name])
        weights = masked_softmax(scores, mask[:, None, :].expand_as(scores))
        return weights @ states

    def padding(self, name: str, latent: Tensor) -> Tensor:
        """Eqs. 6-7: the prototype mix (training) or choice (evaluation) for ``latent`` (B, L, d_z), decoded."""
        positive, negative = (p.clone() for p in self.prototypes(name))  # updated in place after this batch
        normed = F.normalize(latent, dim=-1)
        similarity = torch.stack([(normed * positive).sum(-1), (normed * negative).sum(-1)], dim=-1)
        if self.training:
            weight = torch.softmax(similarity, dim=-1)
        else:
            weight = F.one_hot((similarity[..., 0] <= similarity[..., 1]).long(), 2).to(latent.dtype)
        return self.decode[name](weight[..., :1] * positive + weight[..., 1:] * negative)

    def classify(self, features: Mapping[str, Tensor], present: Tensor | None = None) -> Tensor:
        """Eq. 11: label-wise classifiers per modality, maximum over modalities (absent ones left out): (B, L)."""
        logits = torch.stack([torch.einsum("bld,ld->bl", features[name], self.classifier[name])
                              for name in self.modalities], dim=-1)
        if present is None:
            return logits.amax(dim=-1)
        masked = logits.masked_fill(~present[:, None, :], -math.inf).amax(dim=-1)
        return torch.where(present.any(dim=1, keepdim=True), masked, torch.zeros_like(masked))

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, batch: Mapping) -> dict:
        inputs = check_modalities(batch, self.modality_dims)
        names = self.modalities
        present = torch.stack([inputs[name][1].any(dim=1) for name in names], dim=1)  # (B, M)
        r = {name: self.label_vectors(name, *inputs[name]) for name in names}
        z = {name: self.encode[name](r[name]) for name in names}
        recon = {name: self.decode[name](z[name]) for name in names}
        pad = {name: self.padding(name, z[name]) for name in names}
        slots = {name: torch.where(present[:, k, None, None], recon[name], pad[name]) for k, name in enumerate(names)}
        a = {m: self.reconstruct[m](torch.cat([pad[k] if k == m else slots[k] for k in names], dim=-1)) for m in names}
        stage2_in = torch.cat([a[k] for k in names], dim=-1)
        b = {m: self.reconstruct[m](stage2_in) for m in names}
        logits1, logits2, logits3 = self.classify(r, present), self.classify(a), self.classify(b)
        beta = torch.stack([b[name] for name in names], dim=1)  # (B, M, L, d)
        agg = self.aggregate(beta.flatten(2))  # (B, M, L)
        score = (torch.sigmoid(agg).mean(dim=1) + torch.sigmoid(logits3)) / 2
        outputs = {"logits": torch.logit(score, eps=1e-6), "score": score, "stage_logits": (logits1, logits2, logits3),
                   "aggregate_logits": agg, "r": r, "recon": recon, "a": a, "b": b, "present": present}
        if self.training and "labels" in batch:
            labels = batch["labels"].to(score.dtype)
            outputs["contrastive"] = self._contrastive_step(z, a, b, present, labels)
            outputs["shuffle_logits"], outputs["shuffle_labels"] = self._shuffled(beta, labels)
        return outputs

    def _class_ids(self, labels: Tensor) -> Tensor:
        """(B, M, L) official class ids: 2 L m + L (label absent) + j."""
        L, M = self.num_labels, len(self.modalities)
        j = torch.arange(L, device=labels.device)
        m = torch.arange(M, device=labels.device)[:, None]
        return (2 * L * m + L * (labels[:, None, :] < 0.5).long() + j).expand(labels.shape[0], M, L)

    def _contrastive_step(self, z, a, b, present, labels) -> Tensor:
        """SupCon over the three stages' latents and the queue; then enqueue them and update the prototypes."""
        names = self.modalities
        stages = [torch.stack([z[n] for n in names], 1),
                  torch.stack([self.encode[n](a[n]) for n in names], 1),
                  torch.stack([self.encode[n](b[n]) for n in names], 1)]  # each (B, M, L, d_z)
        feats = F.normalize(torch.stack(stages, dim=1), dim=-1)  # (B, 3, M, L, d_z): the official row order
        ids = self._class_ids(labels)[:, None].expand(-1, 3, -1, -1)
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[:, 0] = present[:, :, None]  # an absent modality's stage-1 latent is not a feature of anything
        flat_feats, flat_ids = feats.reshape(-1, self.latent)[keep.reshape(-1)], ids.reshape(-1)[keep.reshape(-1)]
        loss = supervised_contrastive(flat_feats, flat_ids, self.queue, self.queue_ids, self.temperature)
        with torch.no_grad():
            self._enqueue(flat_feats.detach(), flat_ids)
            positive = labels >= 0.5
            for k, name in enumerate(names):
                normed = F.normalize(z[name].detach(), dim=-1)
                here = present[:, k, None]
                pos, neg = self.prototypes(name)
                pos.copy_(ema_update(pos, normed, positive & here, self.momentum))
                neg.copy_(ema_update(neg, normed, ~positive & here, self.momentum))
        return loss

    def _enqueue(self, feats: Tensor, ids: Tensor) -> None:
        size = self.queue.shape[0]
        total = feats.shape[0]
        n = min(total, size)  # more rows than the queue holds: the last ``size`` win, where the ring puts them
        slots = (self.queue_pointer + (total - n) + torch.arange(n, device=feats.device)) % size
        self.queue[slots] = feats[total - n:]
        self.queue_ids[slots] = ids[total - n:]
        self.queue_pointer.copy_((self.queue_pointer + total) % size)

    def _shuffled(self, beta: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Eqs. 12-14: per (label, slot) a permutation of samples, per (label, sample) one of modalities."""
        B, M, L, _ = beta.shape
        samples, modalities = self.shuffle_indices(B, M, L, beta.device)
        label_index = torch.arange(L, device=beta.device).expand(B, M, L)
        shuffled = beta[samples, modalities, label_index]  # (B, M, L, d)
        return self.aggregate(shuffled.flatten(2)), labels[samples, label_index]

    @staticmethod
    def shuffle_indices(B: int, M: int, L: int, device) -> tuple[Tensor, Tensor]:
        """(B, M, L) source sample and source modality of every shuffled slot (a seam for the bench's check)."""
        samples = torch.argsort(torch.rand(L, M, B, device=device), dim=-1).permute(2, 1, 0)
        modalities = torch.argsort(torch.rand(L, B, M, device=device), dim=-1).permute(1, 2, 0)
        return samples, modalities

    # -- loss ------------------------------------------------------------------------------------

    def loss_terms(self, outputs: Mapping, batch: Mapping) -> dict[str, Tensor]:
        """Every term of eq. 15, unweighted (training-only terms only in training mode)."""
        labels = batch["labels"].to(outputs["score"].dtype)
        present = outputs["present"]
        logits1, logits2, logits3 = outputs["stage_logits"]
        bce = F.binary_cross_entropy_with_logits
        M = len(self.modalities)

        def mse(x: Mapping, target: Mapping) -> Tensor:
            total = labels.new_zeros(())
            for k, name in enumerate(self.modalities):
                weight = present[:, k].to(labels.dtype)[:, None, None]
                squared = (x[name] - target[name]).pow(2) * weight
                total = total + squared.sum() / (weight.sum() * squared.shape[1] * squared.shape[2]).clamp_min(1)
            return total

        terms = {"stage1_bce": bce(logits1, labels), "stage2_bce": bce(logits2, labels),
                 "stage3_bce": bce(logits3, labels), "recon_mse": mse(outputs["recon"], outputs["r"]),
                 "aug_mse": mse(outputs["a"], outputs["r"]), "beta_mse": mse(outputs["b"], outputs["r"]),
                 "agg_bce": bce(outputs["aggregate_logits"], labels[:, None, :].expand(-1, M, -1))}
        if "contrastive" in outputs:
            terms["contrastive"] = outputs["contrastive"]
            terms["shuffle_bce"] = bce(outputs["shuffle_logits"], outputs["shuffle_labels"])
        return terms

    def loss(self, outputs: Mapping, batch: Mapping) -> Tensor:
        terms = self.loss_terms(outputs, batch)
        return sum(self.loss_weights[name] * value for name, value in terms.items())

    # -- optimiser -------------------------------------------------------------------------------

    def configure_optimizer(self, lr: float, total_steps: int):
        """The official BertAdam with warm-up (see :class:`BertAdam`); the schedule lives in the optimiser."""
        decay, no_decay = [], []
        norms = {id(p) for module in self.modules() if isinstance(module, nn.LayerNorm) for p in module.parameters()}
        for name, parameter in self.named_parameters():
            (no_decay if name.endswith(".bias") or id(parameter) in norms else decay).append(parameter)
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return BertAdam(groups, lr=lr, warmup=self.warmup, total_steps=total_steps), None


class BertAdam(torch.optim.Optimizer):
    """The official ``BertAdam`` (``models/optimization.py``): Adam without bias correction, epsilon 1e-6, every
    parameter's gradient clipped to norm ``max_grad_norm`` on its own, decoupled weight decay, and the learning rate
    ``lr * warmup_linear(step / total_steps)`` (linear rise over the first ``warmup`` fraction from 0, then linear
    decay to 0). Multi-tensor (``foreach``) arithmetic; the same update as the official per-parameter loop."""

    def __init__(self, params, lr: float, warmup: float = 0.1, total_steps: int = -1, betas=(0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        defaults = dict(lr=lr, warmup=warmup, total_steps=total_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @staticmethod
    def schedule(progress: float, warmup: float) -> float:
        if progress < warmup:
            return progress / warmup
        return max((progress - 1.0) / (warmup - 1.0), 0.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p].update(step=0, next_m=torch.zeros_like(p), next_v=torch.zeros_like(p))
            step = self.state[params[0]]["step"]
            if group["max_grad_norm"] > 0:  # clip_grad_norm_(p, max_norm) per parameter
                norms = torch._foreach_norm(grads)
                scales = [(group["max_grad_norm"] / (norm + 1e-6)).clamp_max(1.0) for norm in norms]
                grads = torch._foreach_mul(grads, scales)
            beta1, beta2 = group["betas"]
            m = [self.state[p]["next_m"] for p in params]
            v = [self.state[p]["next_v"] for p in params]
            torch._foreach_mul_(m, beta1)
            torch._foreach_add_(m, grads, alpha=1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            update = torch._foreach_div(m, torch._foreach_add(torch._foreach_sqrt(v), group["eps"]))
            if group["weight_decay"] > 0:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            lr = group["lr"]
            if group["total_steps"] > 0:
                lr = lr * self.schedule(step / group["total_steps"], group["warmup"])
            torch._foreach_add_(params, update, alpha=-lr)
            for p in params:
                self.state[p]["step"] = step + 1
        return loss


# ------------------------------------------------------------------------------------------------
# registry entry

PAPER = {"d": 256, "latent": 64, "heads": 8, "intermediate": 256, "layers": dict(TEXT_LAYERS), "default_layers": 4,
         "dropout": 0.3, "attention_dropout": 0.3, "max_positions": 512,
         "unordered_modalities": ["comments", "images"], "queue_size": 8192, "temperature": 0.07, "momentum": 0.99,
         "loss_weights": dict(LOSS_WEIGHTS), "warmup": 0.1, "weight_decay": 0.01,
         "lr": 5e-5, "batch_size": 64, "clip": 1.0, "threshold": DEFAULT_THRESHOLD} | neural_budget("paper")
#: The quick profile's auxiliary weights: at the paper's (MSE 1, SupCon 1) the 40-step quick runs collapse the
#: label-wise vectors towards what the reconstructions can match and stay at the constant baseline on the sample
#: (measured: test miF1 0.18-0.31 vs constant 0.30-0.36); 1/100 and 1/10 of them let the signal through.
QUICK_LOSS_WEIGHTS = LOSS_WEIGHTS | {"recon_mse": 0.01, "aug_mse": 0.01, "contrastive": 0.1}
QUICK = PAPER | {"d": 32, "latent": 16, "heads": 4, "intermediate": 32, "layers": {}, "default_layers": 1,
                 "dropout": 0.1, "attention_dropout": 0.1, "queue_size": 1024, "loss_weights": QUICK_LOSS_WEIGHTS,
                 "batch_size": 16} | neural_budget("quick")


@register("CARAT", group="After the paper", citation=CITATION, kind="neural", quick=QUICK, paper=PAPER)
def build(config: dict, info: DataInfo) -> CARAT:
    return CARAT(info.modality_dims, info.num_labels, **model_kwargs(config))
