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

Speed options of :func:`fit` (and :func:`train_and_test`): ``precision`` "fp32" (default, the exact
float32 path), "bf16" or "fp16" (``torch.autocast`` on the model's forward pass and loss; fp16 adds a
gradient scaler; bf16 is the one to use on CPU), and ``compile=True`` (``torch.compile`` of the model's
forward; with dropout the compiled model draws other dropout masks than eager unless
``torch._inductor.config.fallback_random`` is set). Per batch the loop only moves the batch, steps and
keeps the detached loss; losses and validation logits are brought to the CPU once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import io
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmer.metrics import DEFAULT_THRESHOLD, binarize, evaluate, evaluate_probabilities, micro_f1
from nemu.atomic import atomic_write_bytes
from nemu.loading import collate

#: The only metric used to select the checkpoint, computed on the validation set.
SELECTION_METRIC = "micro_f1"
#: ``precision`` options of :func:`fit`: autocast dtype (None = plain float32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: ``epoch_metrics`` options of :func:`fit`: every metric each epoch, or only the selection metric
#: each epoch and every metric once, for the selected epoch.
EPOCH_METRICS = ("all", "selection")


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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The mixed-precision context for ``precision`` (see :data:`PRECISIONS`); fp32 is no context at all."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _forward_fn(model: nn.Module, compile: bool) -> Callable:
    """``model`` itself, or its ``torch.compile``d forward (parameters and train/eval mode are shared)."""
    return torch.compile(model) if compile else model


def _mean(values: list[torch.Tensor], sizes: list[int]) -> float | None:
    """sum(value * size) / sum(size) with one device-to-host copy; the same float arithmetic as a running sum."""
    if not values:
        return None
    total = 0.0
    for value, size in zip(torch.stack(values).tolist(), sizes):
        total += value * size
    return total / sum(sizes)


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``torch.save`` a state dict (never a pickled model object), atomically."""
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class TrainResult:
    """Outcome of :func:`fit`.

    ``best_epoch`` is 1-based; ``history`` has one record per epoch with ``epoch``, ``train_loss``,
    ``valid_loss``, ``valid`` (the :func:`mmer.metrics.evaluate` dict) and ``seconds``;
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
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    with_loss: bool,
    progress: bool = False,
    precision: str = "fp32",
    forward: Callable | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray | None, float | None]:
    """Run ``model`` in eval mode over ``loader``: ids, probabilities, labels (or None), mean loss.

    Logits, labels and losses stay on the device until the end: one sigmoid and one copy to the host.
    """
    model.eval()
    forward = model if forward is None else forward
    ids: list[str] = []
    logits, labels, losses, sizes = [], [], [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        batch = move_batch(batch, device)
        with autocast(device, precision):
            outputs = forward(batch)
            if with_loss and "labels" in batch:
                losses.append(model.loss(outputs, batch).detach())
                sizes.append(batch["labels"].shape[0])
        logits.append(outputs["logits"])
        ids.extend(batch.get("ids", []))
        if "labels" in batch:
            labels.append(batch["labels"])
    if logits:
        stacked = torch.cat(logits)
        if stacked.dtype in (torch.bfloat16, torch.float16):
            stacked = stacked.float()  # mixed precision: the sigmoid in float32
        probs = torch.sigmoid(stacked).float().cpu().numpy()
    else:
        probs = np.zeros((0, 0), np.float32)
    y = torch.cat(labels).float().cpu().numpy() if labels else None
    mean_loss = _mean(losses, sizes) if with_loss else None
    return ids, probs, y, mean_loss


def predict(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device | None = None,
    *,
    progress: bool = False,
    precision: str = "fp32",
) -> tuple[list[str], np.ndarray]:
    """Sample ids and predicted probabilities sigmoid(logits), shape (N, L), in loader order."""
    device = _device(device)
    model.to(device)
    ids, probs, _, _ = _infer(model, loader, device, with_loss=False, progress=progress, precision=precision)
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
    precision: str = "fp32",
) -> dict:
    """:func:`mmer.metrics.evaluate` of the model's thresholded predictions on ``loader``.

    Adds ``threshold`` and, with ``with_loss``, the mean model loss under ``loss``.
    """
    device = _device(device)
    model.to(device)
    _, probs, labels, loss = _infer(model, loader, device, with_loss=with_loss, progress=progress,
                                    precision=precision)
    if labels is None:
        raise ValueError("evaluate_loader needs batches with 'labels'")
    metrics = evaluate_probabilities(labels, probs, label_names, threshold=threshold)
    if with_loss:
        metrics["loss"] = loss
    return metrics


def make_optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam over the model's parameters (PyTorch's default betas), unless the model brings its own.

    A model whose paper trains it otherwise (e.g. TAILOR's BERT-style Adam with warm-up) defines
    ``configure_optimizer(lr, total_steps) -> (optimizer, scheduler or None)``; :func:`fit` calls that instead
    and steps the scheduler after every optimizer step. Everything else (clipping, selection) stays shared.

    The fused kernel on CUDA. On CPU the multi-tensor (``foreach``) implementation: the same bits as
    the per-tensor loop PyTorch uses by default there (tests/test_engine.py), and faster for HHMPN's
    many small tensors (2.3 vs 3.2 ms per step for the quick profile's 72 tensors; equal at d=256).
    The fused CPU kernel is faster still (0.7 ms) but rounds differently, so it is not used.
    """
    if device.type == "cuda":
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


def train_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    clip: float | None = 10.0,
    precision: str = "fp32",
    forward: Callable | None = None,
    scaler: "torch.amp.GradScaler | None" = None,
    progress: bool = False,
    desc: str = "train",
    scheduler=None,
) -> float:
    """One pass over ``loader`` in train mode: forward, loss, backward, clipping, step. Returns the mean loss.

    ``forward`` is the (possibly compiled) model call; ``scaler`` a gradient scaler for fp16. The
    detached losses stay on the device and are summed once at the end, in the order a running sum
    would add them.
    """
    model.train()
    forward = model if forward is None else forward
    losses, sizes = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        batch = move_batch(batch, device)
        with autocast(device, precision):
            outputs = forward(batch)
            loss = model.loss(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
        else:
            loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
        sizes.append(len(batch["labels"]))
    mean = _mean(losses, sizes)
    return 0.0 if mean is None else mean


def _steps(loader: Iterable) -> int:
    """Optimizer steps per epoch: the loader's length (a loader without one counts as one step)."""
    try:
        return max(1, len(loader))
    except TypeError:
        return 1


class TrainingDiverged(ValueError):
    """Training produced a non-finite loss or weights; the message names the epoch and the quantity."""


def _check_finite_epoch(model: nn.Module, epoch: int, train_loss: float, valid_loss: float | None) -> None:
    """Raise :class:`TrainingDiverged` when the epoch's losses or the model's weights are not finite."""
    for name, value in (("training loss", train_loss), ("validation loss", valid_loss)):
        if value is not None and not math.isfinite(value):
            raise TrainingDiverged(f"epoch {epoch}: {name} is {value} (training diverged); "
                                   f"try a smaller learning rate or gradient clipping")
    # Parameters must be finite; buffers only not NaN: a model may keep +-inf as a sentinel in a buffer (M3ER's
    # modality-check thresholds start at -inf, "every modality passes", until they are fitted).
    for name, tensor in model.named_parameters():
        if not bool(torch.isfinite(tensor).all()):
            raise TrainingDiverged(f"epoch {epoch}: weights {name} are not finite (training diverged); "
                                   f"try a smaller learning rate or gradient clipping")
    for name, tensor in model.named_buffers():
        if tensor.is_floating_point() and bool(torch.isnan(tensor).any()):
            raise TrainingDiverged(f"epoch {epoch}: buffer {name} holds NaN (training diverged); "
                                   f"try a smaller learning rate or gradient clipping")


def _check_fit_settings(epochs: int, lr: float, clip: float | None, threshold: float) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a finite number > 0, got {lr!r}")
    if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"the gradient clip must be a finite number > 0 (or None for no clipping), got {clip!r}")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0 <= threshold <= 1):
        raise ValueError(f"the threshold must be a finite number within [0, 1], got {threshold!r}")


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
    precision: str = "fp32",
    compile: bool = False,
    epoch_metrics: str = "all",
) -> TrainResult:
    """Train ``model`` for exactly ``epochs`` epochs with Adam and keep the best validation micro-F1.

    After every epoch the model is evaluated on ``valid_loader`` (probabilities thresholded at
    ``threshold``); the state with the highest validation micro-F1 -- the earliest on ties -- is kept
    in memory, loaded back into ``model`` at the end and written once to ``checkpoint_path`` (if given)
    with ``torch.save(state_dict)``, so every later test metric comes from this one checkpoint.
    Gradients are clipped to total norm ``clip`` (None disables clipping). ``seed`` seeds Python,
    NumPy and torch before training (dropout, shuffling); seed again before building the model to
    make initialisation reproducible as well.

    ``precision`` ("fp32", "bf16", "fp16") and ``compile`` are the speed options of the module
    docstring; they apply to training and validation alike. ``epoch_metrics="selection"`` computes
    only the selection metric after each epoch (``history[i]["valid"]`` then holds ``micro_f1`` and
    ``threshold``) and every metric once, for the selected epoch (``best_valid``); the default "all"
    computes every metric after every epoch. The selection is the same either way.

    Settings are checked first (``epochs`` >= 1; ``lr``, ``clip`` finite and > 0; ``threshold`` in [0, 1]).
    After every epoch the losses and the weights must be finite, else :class:`TrainingDiverged` (a ValueError)
    names the epoch and the quantity and nothing is written.
    """
    _check_fit_settings(epochs, lr, clip, threshold)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
    if epoch_metrics not in EPOCH_METRICS:
        raise ValueError(f"unknown epoch_metrics {epoch_metrics!r}; choose from {EPOCH_METRICS}")
    device = _device(device)
    seed_everything(seed)
    model.to(device)
    scheduler = None
    if hasattr(model, "configure_optimizer"):  # the model's own optimiser (and schedule), see make_optimizer
        optimizer, scheduler = model.configure_optimizer(lr, epochs * _steps(train_loader))
    else:
        optimizer = make_optimizer(model, lr, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    forward = _forward_fn(model, compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    history: list[dict] = []
    best_score, best_epoch = -float("inf"), 0
    best_state: dict[str, torch.Tensor] = {}
    best_valid: dict = {}
    best_predictions = None
    started = time.perf_counter()
    epoch_bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress)
    for epoch in epoch_bar:
        epoch_start = time.perf_counter()
        train_loss = train_epoch(model, train_loader, optimizer, device, clip=clip, precision=precision,
                                 forward=forward, scaler=scaler, progress=progress, desc=f"epoch {epoch}",
                                 scheduler=scheduler)

        _, probs, labels, valid_loss = _infer(model, valid_loader, device, with_loss=True, precision=precision,
                                              forward=forward)
        if labels is None:
            raise ValueError("the validation loader must yield batches with 'labels'")
        _check_finite_epoch(model, epoch, train_loss, valid_loss)
        predictions = binarize(probs, threshold)
        if epoch_metrics == "all":
            valid_metrics = evaluate(labels, predictions, label_names)
        else:
            valid_metrics = {SELECTION_METRIC: micro_f1(labels, predictions)}
        valid_metrics["threshold"] = float(threshold)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid_loss": valid_loss,
            "valid": valid_metrics,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        score = valid_metrics[SELECTION_METRIC]
        if score > best_score:  # strict: the earliest epoch wins ties
            best_score, best_epoch, best_valid = score, epoch, valid_metrics
            best_predictions = (labels, predictions)
            best_state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
        epoch_bar.set_postfix(
            train_loss=f"{record['train_loss']:.4f}",
            valid_miF1=f"{score:.4f}",
            best_epoch=best_epoch,
        )

    if epoch_metrics == "selection":
        best_valid = {**evaluate(*best_predictions, label_names), "threshold": float(threshold)}
    model.load_state_dict(best_state)
    if checkpoint_path is not None:
        save_checkpoint(best_state, checkpoint_path)
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
    precision: str = "fp32",
    compile: bool = False,
    epoch_metrics: str = "all",
) -> tuple[TrainResult, dict]:
    """:func:`fit` on train/valid, then the test metrics of the selected (best-validation) checkpoint.

    ``precision`` applies to the test predictions too, as to the validation that selected the checkpoint.
    """
    loaders = make_loaders(datasets, batch_size, seed)
    result = fit(model, loaders["train"], loaders["valid"], epochs=epochs, lr=lr, clip=clip, device=device,
                 seed=seed, checkpoint_path=checkpoint_path, progress=progress, threshold=threshold,
                 label_names=label_names, precision=precision, compile=compile, epoch_metrics=epoch_metrics)
    test = evaluate_loader(model, loaders["test"], device, threshold=threshold, label_names=label_names,
                           precision=precision)
    return result, test
