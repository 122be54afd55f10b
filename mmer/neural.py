"""Neural building blocks that several models share: masked softmax and pooling over padded node sequences,
the batch check, and recurrent encoders that read only the real nodes (``mmer.engine``'s batch interface:
``features[m]`` (B, S, dim) and bool ``masks[m]`` (B, S) per modality, right-padded)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over ``dim`` restricted to ``mask`` (True = keep).

    Masked entries get weight exactly 0. A row with no unmasked entry (a modality with zero real
    nodes) gets all-zero weights instead of NaN, so it sends no message.
    """
    mask = mask.to(torch.bool)
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=dim)
    return weights * mask.to(weights.dtype)


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` (B, S, d) with padded positions set to exactly 0 (also removes NaN/inf padding)."""
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real positions of ``x`` (B, S, d) -> (B, d); a row with no real position gives 0."""
    weights = mask.to(x.dtype)[..., None]
    return (zero_padding(x, mask) * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def last_real(x: Tensor, mask: Tensor) -> Tensor:
    """The last real position of every row of ``x`` (B, S, d) -> (B, d); a row with none gives 0.

    "Last" is the highest real index, so right padding (the loader's) never changes the result.
    """
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    index = torch.where(mask, positions, torch.zeros_like(positions)).amax(dim=1)
    picked = x[torch.arange(x.shape[0], device=x.device), index]
    return picked * mask.any(dim=1, keepdim=True).to(x.dtype)


def check_modalities(batch: Mapping, modality_dims: Mapping[str, int]) -> dict[str, tuple[Tensor, Tensor]]:
    """{modality: (features with zeroed padding (B, S, dim), bool mask (B, S))} for the model's modalities."""
    out = {}
    for name, dim in modality_dims.items():
        if name not in batch["features"] or name not in batch["masks"]:
            raise KeyError(f"batch has no modality {name!r} (model modalities: {tuple(modality_dims)})")
        x, mask = batch["features"][name], batch["masks"][name].to(torch.bool)
        if x.dim() != 3 or x.shape[-1] != dim:
            raise ValueError(f"features[{name!r}] must be (B, S, {dim}), got {tuple(x.shape)}")
        if mask.shape != x.shape[:2]:
            raise ValueError(f"masks[{name!r}] shape {tuple(mask.shape)} != features {tuple(x.shape[:2])}")
        out[name] = (zero_padding(x.float(), mask), mask)
    return out


def run_rnn(rnn: nn.RNNBase, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Run a batch-first ``rnn`` over the real nodes of every row only (right padding is never read).

    Returns (outputs (B, S, H) with zero padding, final hidden state of the last layer (B, H); for a
    bidirectional RNN the two directions' final states concatenated). A row with no real node gets
    zeros in both.
    """
    lengths = mask.sum(dim=1)
    present = lengths > 0
    packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
    output, hidden = rnn(packed)
    output, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])
    if isinstance(hidden, tuple):  # LSTM: (h, c)
        hidden = hidden[0]
    directions = 2 if rnn.bidirectional else 1
    final = hidden[-directions:].transpose(0, 1).reshape(x.shape[0], -1)
    return zero_padding(output, mask), final * present[:, None].to(final.dtype)


def to_front(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move every row's real nodes to the front, keeping their order.

    Returns ``(states (B, S', d), mask (B, S'), lengths (B,))`` with ``S' = max(1, max length)``; padded
    positions are zero.
    """
    mask = mask.to(torch.bool)
    lengths = mask.sum(dim=1)
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # real nodes first, in order
    width = max(1, int(lengths.max()) if lengths.numel() else 1)
    order = order[:, :width]
    states = torch.gather(states, 1, order[..., None].expand(-1, -1, states.shape[-1]))
    front = torch.arange(width, device=mask.device)[None, :] < lengths[:, None]
    return states * front[..., None], front, lengths


def run_packed(rnn: nn.RNNBase, states: torch.Tensor, mask: torch.Tensor):
    """Run a batch-first (bi)LSTM/GRU over the real nodes of each row only.

    Returns ``(outputs (B, S', hidden*directions), mask (B, S'), final hidden state)``; outputs are zero at
    padded positions. A row without any real node runs on one zero vector and gets an all-False mask.
    """
    states, front, lengths = to_front(states, mask)
    packed = pack_padded_sequence(states, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
    outputs, final = rnn(packed)
    outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=states.shape[1])
    return outputs * front[..., None], front, final
