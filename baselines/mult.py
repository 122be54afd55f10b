"""MulT: the Multimodal Transformer (Tsai et al., ACL 2019), a multi-modal baseline of the paper's Table 2.

Tsai, Bai, Liang, Kolter, Morency, Salakhutdinov. "Multimodal Transformer for Unaligned Multimodal
Language Sequences." ACL 2019. Reference code: github.com/yaohungt/Multimodal-Transformer (read for the
details the paper leaves out; nothing is copied).

What the model does, for modalities ``M`` taken from the data (any number ``|M| >= 1``):

1. **Temporal convolution** (paper eq. 3; ``Conv1d`` without bias in the official code): each modality's
   node features are projected to the common width ``d`` by a 1-D convolution over its node sequence.
2. **Positions**: the input of every transformer is scaled by ``sqrt(d)`` and gets fairseq-style
   sinusoidal position embeddings (positions 1, 2, ... of the real nodes), then embedding dropout.
3. **Crossmodal transformers** (paper section 3.2, eq. 5): one for every *ordered* pair ``(source ->
   target)`` of distinct modalities, so ``|M| (|M| - 1)`` streams (12 for NEMu's four modalities, 6 for
   MOSEI's three). Each has ``layers`` pre-LayerNorm blocks; in every block the target sequence queries
   the *low-level* (projected, positioned) source sequence with multi-head attention, then a position-wise
   feed-forward block (width ``4 d``, ReLU) follows; residual connections, a final LayerNorm.
4. **Self-attention transformers**: per target modality the ``|M| - 1`` crossmodal outputs are concatenated
   (width ``(|M| - 1) d``) and passed through a self-attention transformer of ``max(layers, 3)`` blocks
   (the official ``get_network(..., layers=3)``).
5. **Readout and output**: one vector per target stream, concatenated (``|M| (|M| - 1) d``), a residual
   block ``proj2(dropout(relu(proj1(h)))) + h``, and the L-unit output layer; sigmoid + BCE, as the seed
   paper runs every multi-modal baseline ("a linear layer of L dimensions with sigmoid activation").

Deviations from the paper and the official code, and why:

* **Padding masks.** The official code feeds fixed-length padded tensors without key masks. NEMu's node
  lists vary in length, so every attention here masks padded keys, padded positions are zeroed before
  each convolution (so a kernel > 1 sees zeros beyond the last real node, as with unpadded input), and the
  readout ignores padding: the output for a sample does not depend on how much padding its batch adds
  (tested). A source modality with zero nodes sends no message (its attention weights are all zero, not
  NaN); a target modality with zero nodes reads out as a zero vector.
* **No causal mask.** The official code's default ``attn_mask=True`` applies a "future" mask even inside
  crossmodal attention between sequences of different lengths; the paper does not describe it and the
  authors say removing it does not matter (issue #15). Attention here is over all real nodes.
* **Readout.** The official code takes the last time step of each stream (which, under its causal mask,
  is the only position that has seen the whole sequence). Without the causal mask, and with unordered
  modalities, ``readout="mean"`` (default) takes the masked mean over the real nodes instead;
  ``readout="last"`` takes the last real node, as the official code.
* **Unordered modalities.** NEMu's comments and images carry no order (the manifest marks them
  non-sequential), but the model only sees modality names and dims. Modalities named in
  ``unordered_modalities`` (default: NEMu's ``comments`` and ``images``; names absent from the data are
  ignored) get no position embeddings and a kernel-1 projection, so their output does not depend on node
  order (tested). All other modalities use ``conv_kernel`` and positions.
* **Convolution kernel.** The paper lists kernel sizes 1 or 3 per modality for MOSEI (L/V/A = 1-or-3/3/3);
  the released code uses 1 for every modality. One ``conv_kernel`` is used for every ordered modality
  (``paper`` profile: 3; the model cannot tell language from vision by name); odd kernels only.
* **Dropouts.** The official code applies its embedding dropout once more to the *language* input before
  the projection; that extra dropout is not applied (the model cannot tell which modality is language).
  The encoder-level embedding dropout, which the official code applies to every modality, is kept.
  The official separate attention dropouts for audio and vision sources (``attn_dropout_a/_v``, default 0)
  become one ``attn_dropout`` for all sources (paper: "crossmodal attention block dropout").
* **One modality.** With ``|M| = 1`` there is no crossmodal pair; the single stream is the projected,
  positioned modality itself through the self-attention transformer (MulT reduced to a transformer
  encoder), so Table 3's single-modality rows still run.
* **Multi-label output.** L sigmoid units with BCE (the official code regresses sentiment with L1 or
  classifies IEMOCAP with cross-entropy). No learning-rate schedule (the official code uses
  ``ReduceLROnPlateau``): the shared engine trains every model with plain Adam.

Configurations: ``paper`` is MulT's CMU-MOSEI setting (paper, Table 5: batch 16, lr 1e-3, d = 40, 4
crossmodal blocks, 8 heads, embedding dropout 0.3, attention dropout 0.1, output dropout 0.1, gradient clip
1.0, 20 epochs; ReLU and residual dropouts 0.1 from the official defaults). ``quick`` is a small setting
for CPU runs of the benchmark (d = 16, 4 heads, 1 crossmodal block, so 3-block self-attention
transformers, embedding dropout 0.1, batch 32). Epochs and learning rate follow the benchmark's one tuning rule (``mmer.tuning``): the paper profile
trains 50 epochs, not the paper's 20 (every neural model gets the same budget; the best validation epoch is
kept), at its lr 1e-3; quick 10 epochs at the shared 3e-3 (12 epochs at 2e-3 before the rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import permutations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmer.metrics import DEFAULT_THRESHOLD
from mmer.tuning import neural_budget
from mmer.neural import check_modalities, last_real, masked_mean, masked_softmax, zero_padding
from mmer.registry import DataInfo, model_kwargs, register

CITATION = ("Tsai, Bai, Liang, Kolter, Morency and Salakhutdinov, Multimodal Transformer for Unaligned Multimodal "
            "Language Sequences, ACL 2019")
READOUTS = ("mean", "last")


# ------------------------------------------------------------------------------------------------
# transformer pieces


def sinusoidal_positions(mask: Tensor, dim: int) -> Tensor:
    """fairseq/tensor2tensor sinusoidal embeddings of positions 1..S (0 at padding): (B, S, dim).

    As in the official MulT code (``SinusoidalPositionalEmbedding`` with ``padding_idx=0``): half the
    channels are sines, half cosines, frequencies ``10000^(-k / (half - 1))``; an odd ``dim`` gets a zero
    last channel. The real nodes of a right-padded row are numbered from 1, so padding changes nothing.
    """
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=mask.device) * -scale)
    positions = torch.cumsum(mask.to(torch.float32), dim=1)  # 1, 2, ... at real nodes (right padding)
    angles = positions[..., None] * frequencies
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table * mask[..., None].to(table.dtype)


class MultiheadAttention(nn.Module):
    """Scaled dot-product multi-head attention with a key padding mask.

    Keys that are padding get weight exactly 0; a query whose source has no real key at all gets all-zero
    weights (no message) instead of NaN. Dropout on the attention weights (``attn_dropout``).
    """

    def __init__(self, d: int, heads: int, attn_dropout: float = 0.0):
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not divisible by {heads} attention heads")
        self.d, self.heads = d, heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(attn_dropout)
        for layer in (self.query, self.key, self.value, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def weights(self, query: Tensor, key: Tensor, key_mask: Tensor) -> Tensor:
        """Attention weights (B, heads, S_q, S_k), before dropout."""
        b, s_q, s_k, h = query.shape[0], query.shape[1], key.shape[1], self.heads
        q = self.query(query).view(b, s_q, h, -1).transpose(1, 2)
        k = self.key(key).view(b, s_k, h, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return masked_softmax(scores, key_mask[:, None, None, :].expand_as(scores))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor) -> Tensor:
        b, s_q, s_k, h = query.shape[0], query.shape[1], key.shape[1], self.heads
        attention = self.dropout(self.weights(query, key, key_mask))
        v = self.value(value).view(b, s_k, h, -1).transpose(1, 2)
        return self.out((attention @ v).transpose(1, 2).reshape(b, s_q, self.d))


class TransformerLayer(nn.Module):
    """One pre-LayerNorm block (official ``TransformerEncoderLayer``, ``normalize_before=True``).

    Crossmodal when ``source`` is given: the LayerNorm-ed target queries the LayerNorm-ed source (the same
    LayerNorm for both, as the official code). Self-attention otherwise.
    """

    def __init__(self, d: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float):
        super().__init__()
        self.attention = MultiheadAttention(d, heads, attn_dropout)
        self.norm_attention = nn.LayerNorm(d)
        self.norm_ffn = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.relu_dropout, self.res_dropout = nn.Dropout(relu_dropout), nn.Dropout(res_dropout)

    def forward(self, x: Tensor, mask: Tensor, source: Tensor | None = None,
                source_mask: Tensor | None = None) -> Tensor:
        residual = x
        x = self.norm_attention(x)
        if source is None:
            kv, kv_mask = x, mask
        else:
            kv, kv_mask = self.norm_attention(source), source_mask
        x = residual + self.res_dropout(self.attention(x, kv, kv, kv_mask))
        residual = x
        x = self.fc2(self.relu_dropout(F.relu(self.fc1(self.norm_ffn(x)))))
        return residual + self.res_dropout(x)


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerLayer` (official ``TransformerEncoder``): self- or crossmodal.

    Inputs (target and, if crossmodal, source) are scaled by ``sqrt(d)``, get sinusoidal positions unless
    their modality is unordered, and embedding dropout; a final LayerNorm follows the stack. Padded
    positions of the output are zero.
    """

    def __init__(self, d: int, heads: int, layers: int, *, attn_dropout: float = 0.0, relu_dropout: float = 0.0,
                 res_dropout: float = 0.0, embed_dropout: float = 0.0):
        super().__init__()
        self.d = d
        self.scale = math.sqrt(d)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.layers = nn.ModuleList(TransformerLayer(d, heads, attn_dropout, relu_dropout, res_dropout)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def embed(self, x: Tensor, mask: Tensor, positions: bool) -> Tensor:
        x = self.scale * x
        if positions:
            x = x + sinusoidal_positions(mask, self.d)
        return self.embed_dropout(x)

    def forward(self, x: Tensor, mask: Tensor, *, positions: bool = True, source: Tensor | None = None,
                source_mask: Tensor | None = None, source_positions: bool = True) -> Tensor:
        x = self.embed(x, mask, positions)
        if source is not None:
            source = self.embed(source, source_mask, source_positions)
        for layer in self.layers:
            x = layer(x, mask, source, source_mask)
        return zero_padding(self.norm(x), mask)


# ------------------------------------------------------------------------------------------------
# the model


class MulT(nn.Module):
    """MulT over any number of modalities; see the module docstring for the architecture and deviations.

    Args:
        modality_dims: {modality: feature size}, in the data's order.
        num_labels: L.
        d: transformer width per crossmodal stream (paper: 40).
        heads: attention heads (paper, MOSEI: 8); must divide ``d`` and ``(|M| - 1) d``.
        layers: crossmodal blocks D (paper: 4); the self-attention transformers get ``max(layers, 3)``.
        conv_kernel: kernel of the temporal convolution of ordered modalities (odd).
        unordered_modalities: modality names treated as sets (no positions, kernel 1).
        attn_dropout, relu_dropout, res_dropout, embed_dropout, out_dropout: as in the official code.
        readout: ``"mean"`` (masked mean of each stream) or ``"last"`` (its last real node).
    """

    def __init__(self, modality_dims: Mapping[str, int], num_labels: int, *, d: int = 40, heads: int = 8,
                 layers: int = 4, conv_kernel: int = 1, unordered_modalities: Sequence[str] = (),
                 attn_dropout: float = 0.1, relu_dropout: float = 0.1, res_dropout: float = 0.1,
                 embed_dropout: float = 0.25, out_dropout: float = 0.0, readout: str = "mean"):
        super().__init__()
        if not modality_dims:
            raise ValueError("MulT needs at least one modality")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; choose from {READOUTS}")
        if conv_kernel < 1 or conv_kernel % 2 == 0:
            raise ValueError("conv_kernel must be a positive odd number")
        self.modality_dims = {name: int(dim) for name, dim in modality_dims.items()}
        self.modalities = tuple(self.modality_dims)
        self.num_labels = int(num_labels)
        self.d, self.readout = int(d), readout
        self.ordered = {name: name not in set(unordered_modalities) for name in self.modalities}
        # 1. temporal convolutions (no bias, as the official proj_l/a/v).
        self.project = nn.ModuleDict()
        for name, dim in self.modality_dims.items():
            kernel = conv_kernel if self.ordered[name] else 1
            self.project[name] = nn.Conv1d(dim, self.d, kernel_size=kernel, padding=kernel // 2, bias=False)
        dropouts = dict(attn_dropout=attn_dropout, relu_dropout=relu_dropout, res_dropout=res_dropout,
                        embed_dropout=embed_dropout)
        # 3. one crossmodal transformer per ordered pair (source -> target).
        self.pairs = tuple(permutations(self.modalities, 2))
        self.crossmodal = nn.ModuleDict({self.pair_key(source, target): TransformerEncoder(
            self.d, heads, layers, **dropouts) for source, target in self.pairs})
        # 4. one self-attention transformer per target over its merged crossmodal streams.
        self.stream_width = self.d * max(len(self.modalities) - 1, 1)
        self.memory = nn.ModuleDict({name: TransformerEncoder(self.stream_width, heads, max(layers, 3), **dropouts)
                                     for name in self.modalities})
        # 5. residual output block and the L-unit output layer.
        combined = self.stream_width * len(self.modalities)
        self.proj1, self.proj2 = nn.Linear(combined, combined), nn.Linear(combined, combined)
        self.out_dropout = nn.Dropout(out_dropout)
        self.out_layer = nn.Linear(combined, self.num_labels)

    @staticmethod
    def pair_key(source: str, target: str) -> str:
        return f"{source}->{target}"

    def projected(self, batch: Mapping) -> dict[str, tuple[Tensor, Tensor]]:
        """{modality: (conv-projected nodes (B, S, d) with zero padding, mask (B, S))}."""
        out = {}
        for name, (x, mask) in check_modalities(batch, self.modality_dims).items():
            h = self.project[name](x.transpose(1, 2)).transpose(1, 2)
            out[name] = (zero_padding(h, mask), mask)
        return out

    def streams(self, batch: Mapping) -> dict[str, Tensor]:
        """Per target modality, its merged stream after the self-attention transformer: (B, S, stream_width)."""
        inputs = self.projected(batch)
        out = {}
        for target in self.modalities:
            x, mask = inputs[target]
            sources = [name for name in self.modalities if name != target]
            if sources:
                merged = torch.cat([self.crossmodal[self.pair_key(source, target)](
                    x, mask, positions=self.ordered[target], source=inputs[source][0],
                    source_mask=inputs[source][1], source_positions=self.ordered[source])
                    for source in sources], dim=-1)
            else:  # one modality: no crossmodal pair, the stream is the modality itself
                merged = x
            out[target] = self.memory[target](merged, mask, positions=self.ordered[target])
        return out

    def forward(self, batch: Mapping) -> dict:
        """``logits`` (B, L); ``representation`` (B, |M| stream_width): the concatenated stream readouts."""
        masks = {name: batch["masks"][name].to(torch.bool) for name in self.modalities}
        pool = masked_mean if self.readout == "mean" else last_real
        streams = self.streams(batch)
        h = torch.cat([pool(streams[name], masks[name]) for name in self.modalities], dim=-1)
        h = self.proj2(self.out_dropout(F.relu(self.proj1(h)))) + h
        return {"logits": self.out_layer(h), "representation": h}

    def loss(self, outputs: Mapping, batch: Mapping) -> Tensor:
        """Binary cross-entropy over the L sigmoid outputs, averaged over labels and samples."""
        return F.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"].to(outputs["logits"].dtype))


# ------------------------------------------------------------------------------------------------
# registry entry

PAPER = {"d": 40, "heads": 8, "layers": 4, "conv_kernel": 3, "unordered_modalities": ["comments", "images"],
         "attn_dropout": 0.1, "relu_dropout": 0.1, "res_dropout": 0.1, "embed_dropout": 0.3, "out_dropout": 0.1,
         "readout": "mean", "lr": 1e-3, "batch_size": 16, "clip": 1.0, "threshold": DEFAULT_THRESHOLD} | neural_budget("paper")
QUICK = PAPER | {"d": 16, "heads": 4, "layers": 1, "embed_dropout": 0.1,
                 "batch_size": 32} | neural_budget("quick")


@register("MulT", group="Multi-modal", citation=CITATION, kind="neural", quick=QUICK, paper=PAPER)
def build(config: dict, info: DataInfo) -> MulT:
    return MulT(info.modality_dims, info.num_labels, **model_kwargs(config))
