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
import math
from dataclasses import dataclass

from mmer.metrics import DEFAULT_THRESHOLD
from mmer.tuning import MAX_EPOCHS, neural_budget

#: Registry name -> ablation (hhmpn.model.ABLATIONS; None: the full model), the paper's Table 2 rows; kept here,
#: free of torch, so the command line knows them without loading the model.
VARIANTS = {"HHMPN": None, "HHMPN w/o F2F": "no_f2f", "HHMPN w/o F2L": "no_f2l", "HHMPN w/o L2L": "no_l2l",
            "HHMPN w/o M2L": "no_m2l"}


def _integer(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low, f"an integer >= {low}"


def _real(test, what: str):
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and test(v),
            what)


#: field -> (check, what the value must be): a configuration that breaks one cannot train (NaN weights, no epoch,
#: empty batches), so it is refused when it is made, before any run folder is touched.
FIELD_CHECKS = {
    "d": _integer(1), "rounds": _integer(1), "batch_size": _integer(1), "epochs": _integer(1),
    "dropout": _real(lambda v: 0 <= v < 1, "a finite rate in [0, 1)"),
    "lam": _real(lambda v: v >= 0, "a finite number >= 0"),
    "lr": _real(lambda v: v > 0, "a finite number > 0"),
    "clip": _real(lambda v: v > 0, "a finite number > 0"),
    "threshold": _real(lambda v: 0 < v < 1, "a finite number in (0, 1)"),
}


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

    def __post_init__(self):
        for name, (check, what) in FIELD_CHECKS.items():
            value = getattr(self, name)
            if not check(value):
                raise ValueError(f"HHMPN {name} must be {what}, got {value!r}")
        if self.f2f_layers is not None and not _integer(0)[0](self.f2f_layers):
            raise ValueError(f"HHMPN f2f_layers must be None or an integer >= 0, got {self.f2f_layers!r}")
        if self.ablation is not None and self.ablation not in VARIANTS.values():
            raise ValueError(f"unknown HHMPN ablation {self.ablation!r}; choose from "
                             f"{', '.join(a for a in VARIANTS.values() if a)} or None")

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
