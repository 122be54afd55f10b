"""CIA: Context-aware Interactive Attention (Chauhan et al., EMNLP 2019), a multi-modal baseline of Table 2.

Chauhan, Akhtar, Ekbal, Bhattacharyya. "Context-aware Interactive Attention for Multi-modal Sentiment and
Emotion Analysis." EMNLP-IJCNLP 2019. Authors' code (Keras): github.com/GussailRaat/EMNLP-19-IIM, read for
the layer sizes, activations, dropouts and losses the paper leaves out; nothing is copied.

The paper's unit is a video of ``u`` utterances, each with one feature vector per modality, aligned across
modalities (utterance ``i`` of the text is utterance ``i`` of the audio). Its parts, as in the authors' code:

1. **Inter-modal Interactive Module (IIM).** For every *ordered* pair of modalities ``m -> n`` an
   auto-encoder reads each utterance of ``m`` (Dense 3k-2k-k, tanh, dropout; ``k = td_units``) and its
   decoder (Dense 2k-3k-``dim_n``, tanh) is trained with MSE to produce the *same utterance* of ``n``. The
   bottleneck ``k`` is the interactive representation of ``m`` with respect to ``n``.
2. **Context.** A bidirectional GRU over the utterances of the video (``r_units`` per direction, dropout
   and recurrent dropout), dropout, and a time-distributed Dense(k, ReLU) turn each bottleneck sequence,
   and each raw modality sequence (the unimodal branch), into context-aware utterance states.
3. **Context-aware Attention Module (CAM)** per unordered pair ``{m, n}``: ``original`` = Dense(k, ReLU) of
   the concatenated unimodal states of ``m`` and ``n``; ``modified`` = the average of the two IIM states
   ``m -> n`` and ``n -> m``. ``CAM(x, y) = softmax(x y^T) y * x`` (attention over the utterances of the
   video, then an element-wise gate) is applied both ways, ``CAM(original, modified)`` and
   ``CAM(modified, original)``.
4. **Output.** All CAM outputs are concatenated per utterance, Dense(k, ReLU), averaged over time, and the
   classifier follows. Loss = cross-entropy + the sum of the auto-encoders' MSE (Keras' equal weights).

What "utterances" and "context" are here. The seed paper's samples (a NEMu song, a MOSEI utterance)
have no neighbouring samples: the loader shuffles them and the labels are per sample. So the video's
utterances become the *nodes within a sample* (lyric lines, comment sentences, audio frames, images; the
words/frames of a MOSEI utterance), and "context-aware" attention attends over the other nodes of the same
sample. This keeps both of the paper's mechanisms working on the data: sample-level neighbours would need
a second, unshuffled grouping of samples that neither dataset defines, and treating each sample as a
single utterance would turn CAM into a 1x1 softmax (always 1) and the GRUs into feed-forward layers, i.e.
remove the context module altogether.

Deviations forced by unaligned node lists (NEMu's modalities have different node counts and no
node-to-node correspondence; MOSEI's unaligned release neither):

* **IIM target.** Node ``i`` of ``m`` has no counterpart node in ``n``, so every node of ``m`` is decoded to
  the sample-level mean of ``n``'s nodes (the modality's summary for that sample). Samples where either
  modality has no node add no reconstruction loss.
* **Pair streams on a joint axis.** ``concat(t_m[i], t_n[i])`` and ``avg(t_mn[i], t_nm[i])`` need an aligned
  ``i``. For the pair ``{m, n}`` the "utterances" are the nodes of ``m`` followed by the nodes of ``n``
  (masks concatenated). ``original`` of a node of ``m`` is the paper's Dense(k, ReLU) applied to
  ``concat(t_m[i], 0)`` and of a node of ``n`` to ``concat(0, t_n[j])`` (the same Dense, the absent half
  zero); ``modified`` of a node of ``m`` is its own IIM state ``t_mn[i]``, of a node of ``n`` its ``t_nm[j]``
  (no average across unaligned nodes). CAM's attention then mixes the two modalities' nodes across the
  joint context, which is where the pair interacts.
* **Output order.** The pairs' joint axes differ in length, so the CAM outputs cannot be concatenated per
  node. Each CAM output is mean-pooled over its real nodes first, then concatenated, Dense(k, ReLU) and the
  output layer: mean and ReLU are swapped relative to the paper (Dense-ReLU-mean there, mean-Dense-ReLU here).
* **Scaling.** The authors divide each modality by its maximum before training. Here the inputs are the
  benchmark protocol's: every modality's nodes standardised per feature with the mean and standard
  deviation of the *training* nodes (``nemu.loading.split_datasets``, README "The benchmark protocol"),
  and the auto-encoders' targets are these standardised features; the model adds no scaling of its own
  (``input_norm=None``; the running standardisation of an earlier version duplicated the protocol and is
  gone). With the authors' ``x / max(x)`` NEMu's word-vector features shrink to a spread of about 0.07 and
  the model barely moved within our training budgets on the sample; ``input_norm="maxabs"`` adds that
  scaling on top (``RunningNorm``: the maximum absolute *training* value, accumulated online). The decoders
  keep the authors' tanh output layer.
* **Masks.** The context GRUs only advance at real nodes (padding never enters the recurrence, in either
  direction), CAM masks padded keys, every pooling ignores padding; a sample with zero nodes in a modality
  gets zero states there and no NaN (a pair where both modalities are empty pools to zero).
* **Recurrent dropout** (a Keras GRU option) is not applied; dropout ``rdrop`` acts on the GRU inputs and
  ``drop`` on its outputs. The 16 context GRUs of four modalities (4 unimodal + 12 interactive) run as one
  batched recurrence (``MultiStreamBiGRU``; each stream is exactly an independent ``nn.GRU``, tested).
* **Reconstruction weight.** The authors add the auto-encoders' MSE with weight 1, on targets divided by
  their maximum. On NEMu such targets carry about 0.5 % of the variance of standardised ones (0.05 % for
  the MFCCs), so with standardised targets weight 1 made reconstruction about 95 % of the loss and slowed
  the classifier (seeds 0/1/2 on the 160-song sample: test micro-F1 0.68/0.41/0.63). ``recon_weight =
  0.01`` restores roughly the authors' balance (0.68/0.70/0.53); ``recon_weight = 1`` is the literal value.
* **Multi-label output.** L sigmoid units with BCE in place of the softmax classifier (as the seed paper
  runs every multi-modal baseline). Single-modality case (``|M| = 1``, Table 3): there is no pair and no auto-encoder,
  so CAM is applied between the unimodal states and themselves.
* **Training.** The authors' Keras run has early stopping on validation loss and no gradient clipping;
  the shared engine trains a fixed number of epochs, keeps the best-validation-micro-F1 epoch and clips at
  norm 10 (the seed paper's protocol).

Configurations: ``paper`` uses the authors' released setting (``drop = 0.5`` for dense layers and GRU
outputs, ``rdrop = 0.3`` for the GRUs, ``r_units = 50``, ``td_units = 200``, Adam, batch 16, 50 epochs; the
learning rate is Keras' Adam default 1e-3); ``quick`` is a small setting for CPU runs of the benchmark
(``r_units = 16``, ``td_units = 32``, lighter dropout). Epochs and learning rate follow the benchmark's one tuning rule (``mmer.tuning``): paper 50 epochs (as the authors'
run) at lr 1e-3; quick 10 epochs at the shared 3e-3 (10 epochs at 6e-3 before the rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations, permutations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmer.metrics import DEFAULT_THRESHOLD
from mmer.tuning import neural_budget
from mmer.neural import check_modalities, masked_mean, masked_softmax, zero_padding
from mmer.registry import DataInfo, model_kwargs, register

CITATION = ("Chauhan, Akhtar, Ekbal and Bhattacharyya, Context-aware Interactive Attention for Multi-modal Sentiment "
            "and Emotion Analysis, EMNLP-IJCNLP 2019")


class RunningNorm(nn.Module):
    """Per-feature scaling of a modality's nodes by statistics of the training nodes, accumulated online.

    Every training-mode call adds the batch's real nodes to running sums (float64 buffers, saved with the
    model) and then scales with the statistics so far; evaluation uses them unchanged. Since each epoch
    revisits the same training nodes, the scaling is that of the whole training split from the end of the
    first epoch on, and valid/test nodes never enter it.

    ``mode="maxabs"`` divides by the largest absolute training value of the modality (the CIA authors'
    ``x / max(x)``, taken over the training split only). (Per-feature standardisation is the data layer's,
    ``nemu.normalization``, for every model.)
    """

    MODES = ("maxabs",)

    def __init__(self, dim: int, mode: str = "maxabs"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {self.MODES}")
        self.mode = mode
        self.register_buffer("maxabs", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor, mask: Tensor) -> None:
        """Add the real nodes of ``x`` (B, S, dim) to the running statistics."""
        real = x[mask].double()
        if real.numel():
            self.maxabs.copy_(torch.maximum(self.maxabs, real.abs().max()))

    def normalise(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` scaled with the statistics so far; padding stays zero."""
        scale = torch.where(self.maxabs > 0, self.maxabs, torch.ones_like(self.maxabs))
        return zero_padding(x / scale.to(x.dtype), mask)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Update with ``x`` in training mode, then normalise it."""
        if self.training:
            self.update(x, mask)
        return self.normalise(x, mask)


def cam(x: Tensor, x_mask: Tensor, y: Tensor, y_mask: Tensor) -> Tensor:
    """The paper's context-aware attention ``CAM(x, y) = softmax(x y^T) y * x`` with padding masks.

    ``x`` (B, S_x, k) attends over the real nodes of ``y`` (B, S_y, k); the attended summary gates ``x``
    element-wise. Padded rows of the output are zero; a row whose ``y`` has no real node gets zero.
    """
    weights = masked_softmax(x @ y.transpose(1, 2), y_mask[:, None, :].expand(-1, x.shape[1], -1))
    return zero_padding((weights @ y) * x, x_mask)


class MultiStreamBiGRU(nn.Module):
    """``G`` independent bidirectional GRUs, each over its own node sequence, run in lockstep.

    Stream ``g`` reads ``x_g`` (B, S_g, in_g) under its mask (B, S_g) with its own weights; each is exactly
    an ``nn.GRU(in_g, hidden, bidirectional=True)`` run on the real nodes of every row (tested against it):
    the state only advances at real nodes, so padding never enters either direction. Running all streams
    and both directions as one batched recurrence (``max S_g`` steps), instead of ``2 G`` separate ones,
    is what makes CIA's 16 context GRUs (four modalities) affordable on a CPU.
    """

    def __init__(self, input_sizes: list[int], hidden: int):
        super().__init__()
        self.hidden, self.streams = int(hidden), len(input_sizes)
        h = self.hidden
        # per stream: input-to-hidden for both directions (W_ir|W_iz|W_in forward, then backward)
        self.input = nn.ModuleList(nn.Linear(size, 6 * h) for size in input_sizes)
        # hidden-to-hidden, forward streams first then backward: (2G, H, 3H) and biases (2G, 1, 3H)
        self.weight_hh = nn.Parameter(torch.empty(2 * self.streams, h, 3 * h))
        self.bias_hh = nn.Parameter(torch.empty(2 * self.streams, 1, 3 * h))
        bound = h ** -0.5  # nn.GRU's initialisation
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, inputs: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        """Per stream, the (B, S_g, 2H) outputs [forward | backward], zero at padding."""
        g, h = self.streams, self.hidden
        steps = max(mask.shape[1] for mask in masks)
        projected = torch.stack([F.pad(layer(x), (0, 0, 0, steps - x.shape[1]))
                                 for layer, x in zip(self.input, inputs)])
        real = torch.stack([F.pad(mask, (0, steps - mask.shape[1])) for mask in masks])  # (G, B, S)
        gates_in = torch.cat([projected[..., :3 * h], projected[..., 3 * h:].flip(2)])  # (2G, B, S, 3H)
        real = torch.cat([real, real.flip(2)])[..., None]  # backward streams read the nodes in reverse
        state = projected.new_zeros(2 * g, projected.shape[1], h)
        outputs = []
        for t, gi in enumerate(gates_in.unbind(2)):  # unbind: one backward op, not one zero-filled copy per step
            gh = torch.baddbmm(self.bias_hh, state, self.weight_hh)
            reset = torch.sigmoid(gi[..., :h] + gh[..., :h])
            update = torch.sigmoid(gi[..., h:2 * h] + gh[..., h:2 * h])
            candidate = torch.tanh(gi[..., 2 * h:] + reset * gh[..., 2 * h:])
            state = torch.where(real[:, :, t], candidate + update * (state - candidate), state)
            outputs.append(state)
        stacked = torch.stack(outputs, dim=2)  # (2G, B, S, H)
        both = torch.cat([stacked[:g], stacked[g:].flip(2)], dim=-1)  # (G, B, S, 2H)
        return [zero_padding(both[i, :, :mask.shape[1]], mask) for i, mask in enumerate(masks)]


class ContextStreams(nn.Module):
    """CIA's context branches, all streams at once (authors' code, per stream): a BiGRU (``r_units`` per
    direction, input dropout ``rdrop``), dropout ``drop``, a time-distributed Dense(k, ReLU) and dropout.

    The streams of a modality are its raw nodes (unimodal branch) and the IIM bottlenecks of the same
    nodes (interactive branches); every stream has its own weights.
    """

    def __init__(self, input_sizes: list[int], r_units: int, td_units: int, drop: float, rdrop: float):
        super().__init__()
        self.input_dropout = nn.Dropout(rdrop)
        self.gru = MultiStreamBiGRU(input_sizes, r_units)
        self.output_dropout = nn.Dropout(drop)
        self.dense = nn.ModuleList(nn.Linear(2 * r_units, td_units) for _ in input_sizes)
        self.dense_dropout = nn.Dropout(drop)

    def forward(self, inputs: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        states = self.gru([self.input_dropout(x) for x in inputs], masks)
        return [zero_padding(self.dense_dropout(F.relu(dense(self.output_dropout(state)))), mask)
                for dense, state, mask in zip(self.dense, states, masks)]


class InteractiveAutoEncoder(nn.Module):
    """IIM auto-encoder ``m -> n``: Dense 3k-2k-k encoder, Dense 2k-3k-dim_n decoder, all tanh (authors' code)."""

    def __init__(self, d_source: int, d_target: int, k: int, drop: float):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_source, 3 * k), nn.Tanh(), nn.Dropout(drop),
                                     nn.Linear(3 * k, 2 * k), nn.Tanh(), nn.Dropout(drop),
                                     nn.Linear(2 * k, k), nn.Tanh(), nn.Dropout(drop))
        self.decoder = nn.Sequential(nn.Linear(k, 2 * k), nn.Tanh(), nn.Dropout(drop),
                                     nn.Linear(2 * k, 3 * k), nn.Tanh(), nn.Dropout(drop),
                                     nn.Linear(3 * k, d_target), nn.Tanh())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(bottleneck (…, k), reconstruction of the target modality (…, d_target))."""
        code = self.encoder(x)
        return code, self.decoder(code)


class CIA(nn.Module):
    """CIA over any number of modalities; see the module docstring for the architecture and deviations.

    Args:
        modality_dims: {modality: feature size}, in the data's order.
        num_labels: L.
        r_units: GRU units per direction (authors: 50).
        td_units: k, the width of the dense layers and the IIM bottleneck (authors: 200).
        drop: dropout of dense layers and GRU outputs (authors: 0.5).
        rdrop: dropout of the GRU inputs (authors' GRU dropout 0.3).
        recon_weight: weight of each auto-encoder's MSE in the loss (authors: 1 on max-scaled targets).
    """

    def __init__(self, modality_dims: Mapping[str, int], num_labels: int, *, r_units: int = 50,
                 td_units: int = 200, drop: float = 0.5, rdrop: float = 0.3, recon_weight: float = 0.01,
                 input_norm: str | None = None):
        super().__init__()
        if not modality_dims:
            raise ValueError("CIA needs at least one modality")
        self.modality_dims = {name: int(dim) for name, dim in modality_dims.items()}
        self.modalities = tuple(self.modality_dims)
        self.num_labels = int(num_labels)
        self.k, self.recon_weight = int(td_units), float(recon_weight)
        k = self.k
        self.norms = nn.ModuleDict({m: RunningNorm(dim, input_norm) for m, dim in self.modality_dims.items()}
                                   if input_norm is not None else {})
        self.ordered_pairs = tuple(permutations(self.modalities, 2))
        self.pairs = tuple(combinations(self.modalities, 2))
        # context streams: per modality its unimodal stream, then its M - 1 interactive streams m -> n
        self.streams = [(m, None) for m in self.modalities] + list(self.ordered_pairs)
        self.context = ContextStreams([self.modality_dims[m] if n is None else k for m, n in self.streams],
                                      r_units, k, drop, rdrop)
        # IIM: one auto-encoder and one context GRU per ordered pair
        self.autoencoders = nn.ModuleDict({self.key(m, n): InteractiveAutoEncoder(
            self.modality_dims[m], self.modality_dims[n], k, drop) for m, n in self.ordered_pairs})
        # per pair: the Dense(k, ReLU) over concat(t_m, t_n), as two halves of one weight
        self.original = nn.ModuleDict({self.key(m, n): nn.Linear(2 * k, k) for m, n in self.pairs})
        self.original_dropout = nn.Dropout(drop)
        n_cam = 2 * len(self.pairs) if self.pairs else 1
        self.merge = nn.Linear(n_cam * k, k)
        self.out_layer = nn.Linear(k, self.num_labels)

    @staticmethod
    def key(m: str, n: str) -> str:
        return f"{m}->{n}"

    def scaled_input(self, name: str, x: Tensor, mask: Tensor) -> Tensor:
        """A modality's nodes as the model uses them: padding zeroed, ``input_norm`` scaling if any."""
        return self.norms[name](x, mask) if name in self.norms else zero_padding(x, mask)

    def forward(self, batch: Mapping) -> dict:
        """``logits`` (B, L); ``reconstruction``: {"m->n": (prediction (B, S_m, dim_n), target (B, dim_n),
        weight mask (B, S_m))}; ``cam``: {"m|n": (CAM(original, modified), CAM(modified, original), mask)}."""
        inputs = {}
        for name, (x, mask) in check_modalities(batch, self.modality_dims).items():
            inputs[name] = (self.scaled_input(name, x, mask), mask)
        reconstruction, codes = {}, {}
        for m, n in self.ordered_pairs:
            (x_m, mask_m), (x_n, mask_n) = inputs[m], inputs[n]
            code, decoded = self.autoencoders[self.key(m, n)](x_m)
            target = masked_mean(x_n, mask_n)  # sample-level summary of n (see docstring)
            weight = mask_m & mask_n.any(dim=1, keepdim=True)
            reconstruction[self.key(m, n)] = (decoded, target, weight)
            codes[self.key(m, n)] = zero_padding(code, mask_m)
        states = self.context([inputs[m][0] if n is None else codes[self.key(m, n)] for m, n in self.streams],
                              [inputs[m][1] for m, _ in self.streams])
        unimodal = {m: state for (m, n), state in zip(self.streams, states) if n is None}
        interactive = {self.key(m, n): state for (m, n), state in zip(self.streams, states) if n is not None}

        pooled, cams = [], {}
        for m, n in self.pairs:
            mask = torch.cat([inputs[m][1], inputs[n][1]], dim=1)
            zeros_m, zeros_n = torch.zeros_like(unimodal[m]), torch.zeros_like(unimodal[n])
            halves = torch.cat([torch.cat([unimodal[m], zeros_m], dim=-1),
                                torch.cat([zeros_n, unimodal[n]], dim=-1)], dim=1)
            original = zero_padding(self.original_dropout(F.relu(self.original[self.key(m, n)](halves))), mask)
            modified = torch.cat([interactive[self.key(m, n)], interactive[self.key(n, m)]], dim=1)
            forward_cam, backward_cam = cam(original, mask, modified, mask), cam(modified, mask, original, mask)
            cams[f"{m}|{n}"] = (forward_cam, backward_cam, mask)
            pooled += [masked_mean(forward_cam, mask), masked_mean(backward_cam, mask)]
        if not self.pairs:  # one modality: CAM of the unimodal states with themselves
            (m,) = self.modalities
            mask = inputs[m][1]
            self_cam = cam(unimodal[m], mask, unimodal[m], mask)
            cams[f"{m}|{m}"] = (self_cam, self_cam, mask)
            pooled.append(masked_mean(self_cam, mask))
        merged = F.relu(self.merge(torch.cat(pooled, dim=-1)))
        return {"logits": self.out_layer(merged), "reconstruction": reconstruction, "cam": cams}

    def reconstruction_losses(self, outputs: Mapping) -> dict[str, Tensor]:
        """{"m->n": MSE of the auto-encoder over the real nodes of m in samples where n has nodes}."""
        losses = {}
        for key, (decoded, target, weight) in outputs["reconstruction"].items():
            squared = ((decoded - target[:, None, :]) ** 2).mean(dim=-1)
            w = weight.to(squared.dtype)
            losses[key] = (squared * w).sum() / w.sum().clamp_min(1.0)
        return losses

    def loss(self, outputs: Mapping, batch: Mapping) -> Tensor:
        """BCE over the L sigmoid outputs + ``recon_weight`` x the sum of the IIM auto-encoders' MSE."""
        logits = outputs["logits"]
        loss = F.binary_cross_entropy_with_logits(logits, batch["labels"].to(logits.dtype))
        for value in self.reconstruction_losses(outputs).values():
            loss = loss + self.recon_weight * value
        return loss


# ------------------------------------------------------------------------------------------------
# registry entry

PAPER = {"r_units": 50, "td_units": 200, "drop": 0.5, "rdrop": 0.3, "recon_weight": 0.01, "input_norm": None,
         "lr": 1e-3, "batch_size": 16, "clip": 10.0, "threshold": DEFAULT_THRESHOLD} | neural_budget("paper")
QUICK = PAPER | {"r_units": 16, "td_units": 32, "drop": 0.1, "rdrop": 0.0} | neural_budget("quick")


@register("CIA", group="Multi-modal", citation=CITATION, kind="neural", quick=QUICK, paper=PAPER)
def build(config: dict, info: DataInfo) -> CIA:
    return CIA(info.modality_dims, info.num_labels, **model_kwargs(config))
