"""HHMPN hyper-parameters: the paper's configuration and a quick one for smoke runs.

Paper, "Implementation Details": d = 256, T = 3, batch size 64, lambda = 0.2, Adam, dropout, gradient
clipping at norm 10, 50 epochs, model selected by validation F1, threshold 0.5. The paper gives
neither the learning rate nor the dropout rate. We use lr = 1e-4 (between the official code's argparse
default of 2e-4 and its run script's 1e-5 with 8-step gradient accumulation, and suited to our model
without layer normalisation) and dropout = 0.1 (the official code's default; its run script uses 0.2).
Adam's betas are PyTorch's defaults (the official code uses (0.9, 0.98)).

Epochs and learning rates follow the benchmark's one tuning rule (``mmer.tuning``): the paper profile trains
the paper's 50 epochs at the lr above; the quick profile trains 10 epochs (8 before the rule) at the shared
quick lr 3e-3 (1e-3 before), like every neural model, with the best-validation epoch selected.

Layering: callers build the profile, then override single fields from the command line with
``dataclasses.replace`` (``cfg.replace(lr=3e-4)``). Data paths never live here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mmer.metrics import DEFAULT_THRESHOLD
from mmer.tuning import MAX_EPOCHS, neural_budget


@dataclass(frozen=True)
class HHMPNConfig:
    # model
    d: int = 256
    rounds: int = 3  # T
    dropout: float = 0.1
    lam: float = 0.2  # lambda of eq. (20)
    f2f_layers: int | None = None  # None: same as rounds
    ablation: str | None = None
    # training
    batch_size: int = 64
    epochs: int = MAX_EPOCHS["paper"]  # the benchmark's rule (mmer.tuning), which is the paper's 50
    lr: float = 1e-4
    clip: float = 10.0
    threshold: float = DEFAULT_THRESHOLD

    def model_kwargs(self) -> dict:
        """Keyword arguments of :class:`hhmpn.model.HHMPN` besides modality_dims and num_labels."""
        return {
            "d": self.d,
            "rounds": self.rounds,
            "dropout": self.dropout,
            "lam": self.lam,
            "ablation": self.ablation,
            "f2f_layers": self.f2f_layers,
        }

    def replace(self, **changes) -> "HHMPNConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROFILES: dict[str, HHMPNConfig] = {
    # The paper's configuration.
    "paper": HHMPNConfig(),
    # A small configuration for CPU smoke runs: same structure (T = 3, so the intermediate loss is
    # exercised), smaller hidden size; epochs and learning rate are the quick rule's (mmer.tuning), as for
    # every neural model.
    "quick": HHMPNConfig(d=64, rounds=3, dropout=0.1, batch_size=32).replace(**neural_budget("quick")),
}


def profile(name: str) -> HHMPNConfig:
    """The named configuration: ``"paper"`` or ``"quick"``."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}") from None
