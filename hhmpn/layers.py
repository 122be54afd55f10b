"""Message-passing building blocks of HHMPN (paper, equations 1-8 and 15-16).

Node sets in HHMPN are small and dense (a few dozen feature nodes per modality, a dozen labels), so
every graph here is a complete bipartite or complete graph given as dense, batched tensors with a
boolean mask over the sender nodes (True = real node). Following PyTorch Geometric's ``MessagePassing``,
each layer is split into ``message`` (per-edge terms), ``aggregate`` (sum over senders) and ``update``.

Shapes: B batch, N receiving nodes, S sending nodes, d hidden size.

Cost (issues "training near the hardware limit"): F2F projects every node once per layer and reuses the
projections for every (receiver, sender) modality pair; the update UPD_mlp runs once over the nodes of all
modalities. The label rounds score all modality copies at once. Two products are evaluated in a cheaper
order, both exact rewritings of the paper's sums: e_ij of eq. (4) as (W^{v2}^T W^{v1} v_i) . v_j, so the
senders are never projected by W^{v2} (F2F: one GEMM over the nodes instead of two; the label rounds: the 180
feature nodes are not projected at all), and eq. (5)'s sum_j alpha_ij W^v v_j as W^v (sum_j alpha_ij v_j) where
there are fewer sums than senders (the label rounds). At the paper configuration on MOSEI shapes this is 26%
less counted work per training sample (1.79 instead of 2.41 GFLOP) for the same outputs and gradients within
float rounding (tests/test_hhmpn_speed_equality.py holds those of the code before). Parameters, their names
and the dropout draws are unchanged, so checkpoints, optimizer state and seeded runs carry over.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmer.neural import masked_softmax


def masked_uniform(mask: Tensor, shape: torch.Size, dtype: torch.dtype, dim: int = -1) -> Tensor:
    """Uniform weights 1/|real nodes| over ``mask`` broadcast to ``shape``; all-zero where nothing is real."""
    weights = mask.to(dtype).expand(shape)
    count = weights.sum(dim=dim, keepdim=True).clamp_min(1.0)
    return weights / count


def masked_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor, *, fused: bool
) -> tuple[Tensor, Tensor | None]:
    """(sum_j alpha_ij value_j, alpha) with alpha = masked_softmax(query_i . key_j / sqrt(d)) over senders j.

    ``query`` (B, N, d), ``key``/``value`` (B, S, d), ``mask`` (B, S) over the senders. The weights are
    those of eqs. (3)-(4) (d is the key size, the d of eq. 4); a sample without any real sender gets the
    zero message, as :func:`masked_softmax` gives it. ``fused`` uses
    ``torch.nn.functional.scaled_dot_product_attention`` (flash/efficient kernels on CUDA) and returns
    alpha as None; there a row without any real sender would be NaN, so such a sample attends to its
    (finite) padding and its message is multiplied by 0 -- no NaN in the output or in any gradient.
    Both paths compute the same function (tests/test_hhmpn_model.py checks it).
    """
    if not fused:
        scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])  # (4)
        alpha = masked_softmax(scores, mask[:, None, :].expand_as(scores))  # (3)
        return alpha @ value, alpha  # (5)
    present = mask.any(dim=-1)  # (B,)
    safe = mask | ~present[:, None]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=safe[:, None, :],
                                         scale=1.0 / math.sqrt(query.shape[-1]))
    return out * present[:, None, None].to(out.dtype), None


def use_fused_attention(x: Tensor) -> bool:
    """Whether :func:`masked_attention` takes the fused kernel for ``x``: on accelerators.

    On CPU the fused kernel with a mask was measured slower than the explicit matmul-softmax-matmul
    for HHMPN's sizes (60-180 nodes, d=256: 54 ms vs 42 ms forward + backward per batch of 64), so
    the explicit form runs there.
    """
    return x.device.type != "cpu"


class MPAtt(nn.Module):
    """Attention message function MP_att with the residual sum of eq. (6).

    (4) e_ij = (W^{v1} v_i)^T (W^{v2} v_j) / sqrt(d)
    (3) alpha_ij = softmax_j(e_ij) over the neighbourhood N(i) (the unmasked senders)
    (5) MP_att(v_i, v_j) = alpha_ij W^v v_j
    (6) g_i = v_i + sum_j MP_att(v_i, v_j)          (the residual is optional: eq. (9) has none)

    With ``attend=False`` the attention of (3)-(4) is removed: W^{v1}, W^{v2} do not exist and every
    receiver weighs the real senders uniformly (alpha_ij = 1/|N(i)|). The w/o-F2L ablation uses this.

    Masks: (B, S) or (B, N, S) for one sender set; (B, C, 1, S) or (B, C, N, S) for C subsets of the
    same senders (the modality copies of the label rounds), which gives alpha (B, C, N, S) and
    messages (B, C, N, d) from one scoring of the receivers against all senders.
    """

    def __init__(self, d: int, *, attend: bool = True):
        super().__init__()
        self.d = d
        self.attend = attend
        if attend:
            self.w_query = nn.Linear(d, d, bias=False)  # W^{v1}
            self.w_key = nn.Linear(d, d, bias=False)  # W^{v2}
        self.w_value = nn.Linear(d, d, bias=False)  # W^v

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(W^{v2}^T W^{v1} x, x, W^v x) of every node (requires ``attend``): a query, key and value whose
        scaled dot products q_i . k_j are exactly e_ij of eq. (4) (before the 1/sqrt(d)).

        (W^{v1} v_i)^T (W^{v2} v_j) = (W^{v2}^T W^{v1} v_i)^T v_j: one d x d product of the two weights and one
        GEMM over the nodes replace the two GEMMs over the nodes (and two of the backward pass's four). The
        parameters are W^{v1} and W^{v2} themselves, so gradients, optimizer state and checkpoints are unchanged.
        """
        return self.query_key(x), x, self.w_value(x)

    def query_key(self, receivers: Tensor) -> Tensor:
        """W^{v2}^T W^{v1} v_i for every receiver (B, N, d): scores of eq. (4) are this . v_j (see :meth:`project`).

        Computed as (W^{v1} v_i) W^{v2} when there are fewer receivers than d, else as v_i (W^{v1}^T W^{v2}) with
        the d x d product formed once (F2F's thousands of nodes; the label rounds' B x 6 labels at batch 64).
        """
        rows = receivers.numel() // receivers.shape[-1]
        if rows < self.d:
            return self.w_query(receivers) @ self.w_key.weight
        return receivers @ (self.w_query.weight.T @ self.w_key.weight)

    def attention(self, receivers: Tensor, senders: Tensor, mask: Tensor) -> Tensor:
        """alpha of eqs. (3)-(4): (B, N, S), or (B, C, N, S) for a 4-dim mask (see the class docstring)."""
        if mask.dim() == 2:
            mask = mask[:, None, :]
        shape = torch.Size((*mask.shape[:-2], receivers.shape[-2], senders.shape[-2]))
        if not self.attend:
            return masked_uniform(mask, shape, receivers.dtype)
        # (4): scaled dot product between node-wise linear transforms, W^{v2} moved to the receivers' side
        # (see project): the senders, usually far more than the receivers, are not projected.
        scores = self.query_key(receivers) @ senders.transpose(-1, -2) / math.sqrt(self.d)
        if len(shape) == 4:
            scores = scores[:, None]  # the same scores for every sender subset
        return masked_softmax(scores.expand(shape), mask.expand(shape))  # (3)

    def message(self, receivers: Tensor, senders: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-edge pieces of eq. (5): the weights alpha_ij (B, [C,] N, S) and the values W^v v_j (B, S, d)."""
        return self.attention(receivers, senders, mask), self.w_value(senders)

    @staticmethod
    def aggregate(alpha: Tensor, values: Tensor) -> Tensor:
        """sum_j alpha_ij values_j (the sums of eqs. 1, 6, 9, 11, 13): (B, [C,] N, d)."""
        if alpha.dim() == 4:  # (B, C, N, S): one (C*N x S) @ (S x d) product per sample, no broadcast copies
            batch, copies, receivers, senders = alpha.shape
            return (alpha.reshape(batch, copies * receivers, senders) @ values).view(batch, copies, receivers, -1)
        return alpha @ values

    def messages(self, alpha: Tensor, senders: Tensor) -> Tensor:
        """sum_j alpha_ij W^v v_j (eq. 5 summed over j): W^v applied after the sum when there are fewer
        weighted sums than senders (the label rounds read 180 nodes with 6 labels per copy), since
        sum_j alpha_ij W^v v_j = W^v sum_j alpha_ij v_j; else to the senders first (as :meth:`message` does)."""
        sums = alpha.numel() // alpha.shape[-1]
        if sums < senders.numel() // senders.shape[-1]:
            return self.w_value(self.aggregate(alpha, senders))
        return self.aggregate(alpha, self.w_value(senders))

    def forward(
        self, receivers: Tensor, senders: Tensor, mask: Tensor, *, residual: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Return (g, alpha): g = [v_i +] sum_j alpha_ij W^v v_j (eq. 6), alpha of eq. (3)."""
        alpha = self.attention(receivers, senders, mask)
        g = self.messages(alpha, senders)
        if residual:
            g = (receivers[:, None] if g.dim() == 4 else receivers) + g
        return g, alpha


class UPDMLP(nn.Module):
    """Node update UPD_mlp, eq. (7): ReLU(W^r g + b_1)^T W^b + b_2.

    ``d_in`` is the size of the message g: d in every module except F2F, where the messages of all
    |M| modalities are concatenated (W^r_xx is d x |M|d, paper after eq. 10). The hidden size is d,
    as the paper's W^r shapes imply. Dropout acts on the hidden layer and on the update.
    """

    def __init__(self, d_in: int, d: int, dropout: float = 0.0):
        super().__init__()
        self.w_r = nn.Linear(d_in, d)  # W^r, b_1
        self.w_b = nn.Linear(d, d)  # W^b, b_2
        self.dropout = nn.Dropout(dropout)

    def forward(self, g: Tensor) -> Tensor:
        hidden = self.dropout(torch.relu(self.w_r(g)))  # (7)
        return self.dropout(self.w_b(hidden))


class MessagePassingBlock(nn.Module):
    """One MP_att + UPD_mlp step, eqs. (6)-(8): v_i' = g_i + UPD_mlp(g_i).

    Used for feature-to-label (eqs. 11-12) and label-to-label (eqs. 13-14) message passing.
    """

    def __init__(self, d: int, dropout: float = 0.0, *, attend: bool = True):
        super().__init__()
        self.mp = MPAtt(d, attend=attend)
        self.upd = UPDMLP(d, d, dropout)

    def update(self, g: Tensor) -> Tensor:
        return g + self.upd(g)  # (8)

    def forward(self, receivers: Tensor, senders: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        g, alpha = self.mp(receivers, senders, mask)  # (5)-(6)
        return self.update(g), alpha


class F2FLayer(nn.Module):
    """Feature-to-feature message passing over all modalities, eqs. (9)-(10).

    Every feature node i attends to the real nodes of each modality m separately (its own modality and
    every other, self-loop included); the |M| aggregated messages are concatenated in the fixed order
    ``modalities`` (eq. 9, ⊕) and W^r_xx maps the |M|d vector back to d (eq. 10). One MP_att parameter
    set W^1_xx serves every (receiver, sender) modality pair, as eq. (9) writes a single W^1_xx; the
    per-modality input embeddings W_x^m already place all modalities in the same d-dimensional space.

    Decision (paper ambiguity): eq. (9) has no residual term and eq. (10) would add the |M|d-sized g_i
    to the d-sized update, which does not type-check. We use the node's own state as the residual,
    z_i = v_i + UPD_mlp(g_i), which is the residual of eq. (6) moved to where the sizes agree.

    Cost: the nodes of all modalities are processed packed along one node axis: each node gets its query
    W^{v2}^T W^{v1} v_i and value W^v v_i once per layer (not once per modality pair; the key is the node
    itself, see :meth:`MPAtt.project`), and UPD_mlp runs once over all nodes. Each (receiver, sender) pair
    only adds its attention.
    """

    def __init__(self, modalities: tuple[str, ...], d: int, dropout: float = 0.0):
        super().__init__()
        self.modalities = tuple(modalities)
        self.mp = MPAtt(d)  # W^1_xx = {W^{v1}, W^{v2}, W^v}
        self.upd = UPDMLP(len(self.modalities) * d, d, dropout)  # W^2_xx, W^r_xx: |M|d -> d

    def forward(
        self, states: dict[str, Tensor], masks: dict[str, Tensor], *, return_attention: bool = True
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]] | None]:
        """Return (new states, attention[receiver][sender] of shape (B, S_receiver, S_sender) or None)."""
        sizes = [states[name].shape[1] for name in self.modalities]
        packed = torch.cat([states[name] for name in self.modalities], dim=1)
        new, attention = self.forward_packed(packed, sizes, [masks[name] for name in self.modalities],
                                             return_attention=return_attention)
        return dict(zip(self.modalities, new.split(sizes, dim=1))), attention

    def forward_packed(
        self, x: Tensor, sizes: list[int], masks: list[Tensor], *, return_attention: bool = False
    ) -> tuple[Tensor, dict[str, dict[str, Tensor]] | None]:
        """One F2F layer on the packed node states ``x`` (B, sum(sizes), d), modality blocks in order.

        ``masks[m]`` (B, sizes[m]) marks the real senders of modality m. Padded nodes are updated too (as
        receivers they are harmless) but never send. Returns the new packed states and, if asked, the
        attention maps (explicit weights; without them the fused kernel may run, see :func:`masked_attention`).
        """
        queries, keys, values = self.mp.project(x)  # W^{v2}^T W^{v1} v_i, v_j, W^v v_j: once per layer
        keys, values = keys.split(sizes, dim=1), values.split(sizes, dim=1)
        fused = not return_attention and use_fused_attention(x)
        blocks = []
        attention = {receiver: {} for receiver in self.modalities} if return_attention else None
        for sender, key, value, mask in zip(self.modalities, keys, values, masks):
            # (9): sum_{j in N^m(i)} MP_att(v_i, v_j; W^1_xx) for sender modality m, every receiver at once.
            message, alpha = masked_attention(queries, key, value, mask, fused=fused)  # (3)-(5)
            blocks.append(message)
            if return_attention:
                for receiver, block in zip(self.modalities, alpha.split(sizes, dim=1)):
                    attention[receiver][sender] = block
        g = torch.cat(blocks, dim=-1)  # (9): ⊕ over modalities -> (B, S, |M|d)
        return x + self.upd(g), attention  # (10), residual on v_i (see above)


class M2LReadout(nn.Module):
    """Modality-to-label readout attention, eqs. (15)-(16).

    (16) alpha_i^m = softmax over modalities of W^l u_i^{m,t+1}
    (15) u_i^{t+1} = sum_m alpha_i^m u_i^{m,t+1}

    Modalities with no real node in a sample are left out of the softmax (weight 0): they carry no
    evidence. A sample with no real node in any modality keeps its previous label state.
    """

    def __init__(self, d: int):
        super().__init__()
        self.w_l = nn.Linear(d, 1, bias=False)  # W^l (a bias would cancel in the softmax)

    def forward(self, states: Tensor, present: Tensor, previous: Tensor) -> tuple[Tensor, Tensor]:
        """``states`` (B, M, L, d), ``present`` (B, M) bool, ``previous`` (B, L, d).

        Returns (u^{t+1} of shape (B, L, d), weights alpha of shape (B, L, M)).
        """
        scores = self.w_l(states).squeeze(-1).transpose(1, 2)  # (B, L, M)
        weights = masked_softmax(scores, present[:, None, :].expand_as(scores))  # (16)
        fused = torch.einsum("blm,bmld->bld", weights, states)  # (15)
        return _keep_previous_if_empty(fused, present, previous), weights


class SumReadout(nn.Module):
    """Sum readout replacing M2L in the w/o-M2L ablation: u_i^{t+1} = sum_m u_i^{m,t+1}.

    Only modalities with a real node count, so an empty modality contributes nothing here either.
    """

    def forward(self, states: Tensor, present: Tensor, previous: Tensor) -> tuple[Tensor, None]:
        fused = torch.einsum("bm,bmld->bld", present.to(states.dtype), states)
        return _keep_previous_if_empty(fused, present, previous), None


def _keep_previous_if_empty(fused: Tensor, present: Tensor, previous: Tensor) -> Tensor:
    any_present = present.any(dim=1)[:, None, None]
    return torch.where(any_present, fused, previous)
