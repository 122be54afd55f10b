"""Message-passing building blocks of HHMPN (paper, equations 1-8 and 15-16).

Node sets in HHMPN are small and dense (a few dozen feature nodes per modality, a dozen labels), so
every graph here is a complete bipartite or complete graph given as dense, batched tensors with a
boolean mask over the sender nodes (True = real node). Following PyTorch Geometric's ``MessagePassing``,
each layer is split into ``message`` (per-edge terms), ``aggregate`` (sum over senders) and ``update``.

Shapes: B batch, N receiving nodes, S sending nodes, d hidden size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over ``dim`` restricted to ``mask`` (True = keep).

    Masked entries get weight exactly 0. A row with no unmasked entry (a modality with zero real
    nodes) gets all-zero weights instead of NaN, so it sends no message.
    """
    mask = mask.to(torch.bool)
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=dim)
    return weights * mask.to(weights.dtype)


def masked_uniform(mask: Tensor, shape: torch.Size, dtype: torch.dtype, dim: int = -1) -> Tensor:
    """Uniform weights 1/|real nodes| over ``mask`` broadcast to ``shape``; all-zero where nothing is real."""
    weights = mask.to(dtype).expand(shape)
    count = weights.sum(dim=dim, keepdim=True).clamp_min(1.0)
    return weights / count


class MPAtt(nn.Module):
    """Attention message function MP_att with the residual sum of eq. (6).

    (4) e_ij = (W^{v1} v_i)^T (W^{v2} v_j) / sqrt(d)
    (3) alpha_ij = softmax_j(e_ij) over the neighbourhood N(i) (the unmasked senders)
    (5) MP_att(v_i, v_j) = alpha_ij W^v v_j
    (6) g_i = v_i + sum_j MP_att(v_i, v_j)          (the residual is optional: eq. (9) has none)

    With ``attend=False`` the attention of (3)-(4) is removed: W^{v1}, W^{v2} do not exist and every
    receiver weighs the real senders uniformly (alpha_ij = 1/|N(i)|). The w/o-F2L ablation uses this.
    """

    def __init__(self, d: int, *, attend: bool = True):
        super().__init__()
        self.d = d
        self.attend = attend
        if attend:
            self.w_query = nn.Linear(d, d, bias=False)  # W^{v1}
            self.w_key = nn.Linear(d, d, bias=False)  # W^{v2}
        self.w_value = nn.Linear(d, d, bias=False)  # W^v

    def attention(self, receivers: Tensor, senders: Tensor, mask: Tensor) -> Tensor:
        """alpha of eqs. (3)-(4): (B, N, S); ``mask`` is (B, S) or (B, N, S)."""
        if mask.dim() == 2:
            mask = mask[:, None, :]
        shape = torch.Size((receivers.shape[0], receivers.shape[1], senders.shape[1]))
        if not self.attend:
            return masked_uniform(mask, shape, receivers.dtype)
        # (4): scaled dot product between node-wise linear transforms.
        scores = self.w_query(receivers) @ self.w_key(senders).transpose(1, 2) / math.sqrt(self.d)
        return masked_softmax(scores, mask.expand(shape))  # (3)

    def message(self, receivers: Tensor, senders: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-edge pieces of eq. (5): the weights alpha_ij (B, N, S) and the values W^v v_j (B, S, d)."""
        return self.attention(receivers, senders, mask), self.w_value(senders)

    @staticmethod
    def aggregate(alpha: Tensor, values: Tensor) -> Tensor:
        """sum_j alpha_ij W^v v_j (the sums of eqs. 1, 6, 9, 11, 13): (B, N, d)."""
        return alpha @ values

    def forward(
        self, receivers: Tensor, senders: Tensor, mask: Tensor, *, residual: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Return (g, alpha): g = [v_i +] sum_j alpha_ij W^v v_j (eq. 6), alpha of eq. (3)."""
        alpha, values = self.message(receivers, senders, mask)
        g = self.aggregate(alpha, values)
        if residual:
            g = receivers + g
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
    """

    def __init__(self, modalities: tuple[str, ...], d: int, dropout: float = 0.0):
        super().__init__()
        self.modalities = tuple(modalities)
        self.mp = MPAtt(d)  # W^1_xx = {W^{v1}, W^{v2}, W^v}
        self.upd = UPDMLP(len(self.modalities) * d, d, dropout)  # W^2_xx, W^r_xx: |M|d -> d

    def forward(
        self, states: dict[str, Tensor], masks: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """Return (new states, attention[receiver][sender] of shape (B, S_receiver, S_sender))."""
        new_states: dict[str, Tensor] = {}
        attention: dict[str, dict[str, Tensor]] = {}
        for receiver in self.modalities:
            blocks = []
            attention[receiver] = {}
            for sender in self.modalities:
                # (9): sum_{j in N^m(i)} MP_att(v_i, v_j; W^1_xx) for sender modality m.
                g_m, alpha = self.mp(states[receiver], states[sender], masks[sender], residual=False)
                blocks.append(g_m)
                attention[receiver][sender] = alpha
            g = torch.cat(blocks, dim=-1)  # (9): ⊕ over modalities -> (B, S, |M|d)
            new_states[receiver] = states[receiver] + self.upd(g)  # (10), residual on v_i (see above)
        return new_states, attention


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
