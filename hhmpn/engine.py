"""Training and evaluation loop shared by HHMPN and every neural baseline.

Batch interface (produced by the data loader): a dict with
    ``features``: modality -> float tensor (B, S_max, dim_m);
    ``masks``:    modality -> bool tensor (B, S_max), True = real node (a row may be all False);
    ``labels``:   float tensor (B, L);
    ``ids``:      list of B sample ids.
A model implements ``forward(batch) -> dict`` with at least ``"logits"`` (B, L) and
``loss(outputs, batch) -> scalar tensor``.

Protocol (paper, "Implementation Details"): Adam, gradient clipping at norm 10, a fixed number of
epochs, evaluation on the validation set after every epoch, and a single checkpoint -- the epoch with
the best validation micro-F1 (first such epoch on ties) -- used for every test metric. Thresholds are
0.5. The test set is never seen by :func:`fit`, and no metric gets its own best epoch.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nemu.metrics import DEFAULT_THRESHOLD, binarize, evaluate

#: The only metric used to select the checkpoint, computed on the validation set.
SELECTION_METRIC = "micro_f1"


def default_device() -> torch.device:
    """CUDA when available, otherwise CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(device: str | torch.device | None) -> torch.device:
    return default_device() if device is None else torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device).

    Call it before building the model too: weight initialisation draws from torch's global generator.
    DataLoaders with ``shuffle=True`` and no own generator also draw from it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def move_batch(batch, device: str | torch.device):
    """Copy every tensor in a (nested) batch to ``device``; other values (ids) are kept as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: move_batch(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(move_batch(value, device) for value in batch)
    if isinstance(batch, list):
        return [move_batch(value, device) for value in batch]
    return batch


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``torch.save`` a state dict (never a pickled model object), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state_dict), tmp)
    os.replace(tmp, path)


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, device: str | torch.device | None = None
) -> nn.Module:
    """Load a state dict saved by :func:`save_checkpoint` into ``model`` (``weights_only=True``)."""
    device = _device(device)
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device)


@dataclass
class TrainResult:
    """Outcome of :func:`fit`.

    ``best_epoch`` is 1-based; ``history`` has one record per epoch with ``epoch``, ``train_loss``,
    ``valid_loss``, ``valid`` (the :func:`nemu.metrics.evaluate` dict) and ``seconds``;
    ``best_state`` is a CPU copy of the selected state dict (already loaded into the model).
    """

    best_epoch: int
    history: list[dict]
    best_state: dict[str, torch.Tensor]
    best_valid: dict = field(default_factory=dict)
    num_parameters: int = 0
    train_seconds: float = 0.0
    peak_memory_bytes: int | None = None


@torch.no_grad()
def _infer(
    model: nn.Module, loader: Iterable, device: torch.device, *, with_loss: bool, progress: bool = False
) -> tuple[list[str], np.ndarray, np.ndarray | None, float | None]:
    """Run ``model`` in eval mode over ``loader``: ids, probabilities, labels (or None), mean loss."""
    model.eval()
    ids: list[str] = []
    probabilities, labels = [], []
    loss_sum, count = 0.0, 0
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        batch = move_batch(batch, device)
        outputs = model(batch)
        probabilities.append(torch.sigmoid(outputs["logits"]).float().cpu().numpy())
        ids.extend(batch.get("ids", []))
        if "labels" in batch:
            labels.append(batch["labels"].float().cpu().numpy())
            if with_loss:
                size = batch["labels"].shape[0]
                loss_sum += float(model.loss(outputs, batch)) * size
                count += size
    probs = np.concatenate(probabilities, axis=0) if probabilities else np.zeros((0, 0), np.float32)
    y = np.concatenate(labels, axis=0) if labels else None
    mean_loss = loss_sum / count if with_loss and count else None
    return ids, probs, y, mean_loss


def predict(
    model: nn.Module, loader: Iterable, device: str | torch.device | None = None, *, progress: bool = False
) -> tuple[list[str], np.ndarray]:
    """Sample ids and predicted probabilities sigmoid(logits), shape (N, L), in loader order."""
    device = _device(device)
    model.to(device)
    ids, probs, _, _ = _infer(model, loader, device, with_loss=False, progress=progress)
    return ids, probs


def evaluate_loader(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    label_names: Sequence[str] | None = None,
    with_loss: bool = False,
    progress: bool = False,
) -> dict:
    """:func:`nemu.metrics.evaluate` of the model's thresholded predictions on ``loader``.

    Adds ``threshold`` and, with ``with_loss``, the mean model loss under ``loss``.
    """
    device = _device(device)
    model.to(device)
    _, probs, labels, loss = _infer(model, loader, device, with_loss=with_loss, progress=progress)
    if labels is None:
        raise ValueError("evaluate_loader needs batches with 'labels'")
    metrics = evaluate(labels, binarize(probs, threshold), label_names)
    metrics["threshold"] = float(threshold)
    if with_loss:
        metrics["loss"] = loss
    return metrics


def fit(
    model: nn.Module,
    train_loader: Iterable,
    valid_loader: Iterable,
    *,
    epochs: int,
    lr: float,
    clip: float | None = 10.0,
    device: str | torch.device | None = None,
    seed: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    label_names: Sequence[str] | None = None,
) -> TrainResult:
    """Train ``model`` for exactly ``epochs`` epochs with Adam and keep the best validation micro-F1.

    After every epoch the model is evaluated on ``valid_loader`` (probabilities thresholded at
    ``threshold``); the state with the highest validation micro-F1 -- the earliest on ties -- is kept
    in memory, written to ``checkpoint_path`` (if given) with ``torch.save(state_dict)``, and loaded
    back into ``model`` at the end, so every later test metric comes from this one checkpoint.
    Gradients are clipped to total norm ``clip`` (None disables clipping). ``seed`` seeds Python,
    NumPy and torch before training (dropout, shuffling); seed again before building the model to
    make initialisation reproducible as well.
    """
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    device = _device(device)
    seed_everything(seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    history: list[dict] = []
    best_score, best_epoch = -float("inf"), 0
    best_state: dict[str, torch.Tensor] = {}
    best_valid: dict = {}
    started = time.perf_counter()
    epoch_bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress)
    for epoch in epoch_bar:
        epoch_start = time.perf_counter()
        model.train()
        loss_sum, count = 0.0, 0
        for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=not progress):
            batch = move_batch(batch, device)
            outputs = model(batch)
            loss = model.loss(outputs, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            size = len(batch["labels"])
            loss_sum += float(loss.detach()) * size
            count += size

        _, probs, labels, valid_loss = _infer(model, valid_loader, device, with_loss=True)
        if labels is None:
            raise ValueError("the validation loader must yield batches with 'labels'")
        valid_metrics = evaluate(labels, binarize(probs, threshold), label_names)
        valid_metrics["threshold"] = float(threshold)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(count, 1),
            "valid_loss": valid_loss,
            "valid": valid_metrics,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        score = valid_metrics[SELECTION_METRIC]
        if score > best_score:  # strict: the earliest epoch wins ties
            best_score, best_epoch, best_valid = score, epoch, valid_metrics
            best_state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
            if checkpoint_path is not None:
                save_checkpoint(best_state, checkpoint_path)
        epoch_bar.set_postfix(
            train_loss=f"{record['train_loss']:.4f}",
            valid_miF1=f"{score:.4f}",
            best_epoch=best_epoch,
        )

    model.load_state_dict(best_state)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return TrainResult(
        best_epoch=best_epoch,
        history=history,
        best_state=best_state,
        best_valid=best_valid,
        num_parameters=count_parameters(model),
        train_seconds=time.perf_counter() - started,
        peak_memory_bytes=peak,
    )


def make_loaders(datasets: Mapping[str, "torch.utils.data.Dataset"], batch_size: int, seed: int) -> dict:
    """DataLoaders over ``{"train", "valid", "test"}`` datasets with ``nemu.collate``.

    The train loader shuffles with its own generator seeded by ``seed`` (reproducible whatever else
    draws from torch's global generator); valid and test keep their order.
    """
    from torch.utils.data import DataLoader

    from nemu.loading import collate

    generator = torch.Generator().manual_seed(seed)
    return {split: DataLoader(ds, batch_size=batch_size, shuffle=split == "train", collate_fn=collate,
                              generator=generator if split == "train" else None)
            for split, ds in datasets.items()}


def train_and_test(
    model: nn.Module,
    datasets: Mapping,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    clip: float | None = 10.0,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    label_names: Sequence[str] | None = None,
) -> tuple[TrainResult, dict]:
    """:func:`fit` on train/valid, then the test metrics of the selected (best-validation) checkpoint."""
    loaders = make_loaders(datasets, batch_size, seed)
    result = fit(model, loaders["train"], loaders["valid"], epochs=epochs, lr=lr, clip=clip, device=device,
                 seed=seed, checkpoint_path=checkpoint_path, progress=progress, threshold=threshold,
                 label_names=label_names)
    test = evaluate_loader(model, loaders["test"], device, threshold=threshold, label_names=label_names)
    return result, test
