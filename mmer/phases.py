"""Epoch-driven training phases for models trained by the unchanged shared engine (``mmer.engine``).

Some baselines train in stages: Seq2Set (Yang et al., ACL 2019) pre-trains its label decoder by maximum
likelihood (teacher forcing) and then fine-tunes it by policy gradient. The shared engine only calls
``model(batch)`` and ``model.loss(outputs, batch)`` with one Adam optimiser, for a fixed number of
epochs, keeping the checkpoint with the best validation micro-F1. So the *model* switches its objective,
and it needs to know which epoch is being trained. :class:`PhasedModule` tells it, from nothing but the
calls the engine already makes:

* an epoch starts with the first training-mode ``forward`` after construction or after the model was put
  in eval mode (``mmer.engine.fit`` evaluates on the validation set after every epoch, which calls
  ``model.eval()``), so the count is exact under ``fit`` and unaffected by stray ``model.train()`` calls;
* ``self.epoch`` is that 1-based count and ``self.phase`` the name of the phase it falls in, from a
  schedule such as ``(("mle", 5), ("rl", None))`` (5 epochs of pre-training, then fine-tuning for the
  rest; ``None`` = open-ended, only allowed last).

A subclass calls ``self.begin_training_step()`` at the top of ``forward`` when ``self.training`` and
reads ``self.phase`` in ``forward``/``loss``. Nothing else changes, so any model can reuse it. The epoch
counter is a plain attribute, not part of the state dict: loading the best checkpoint does not rewind it,
and :meth:`PhasedModule.reset_phases` restarts the schedule for a second training run.

Limits of the approach (documented where it is used): the learning rate is the engine's single ``lr``
for every phase (Adam's moment estimates carry over from one phase to the next), and checkpoint
selection by validation micro-F1 runs over all epochs of all phases.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class EpochPhases:
    """A schedule of named phases, each lasting a number of epochs (``None``: all remaining epochs)."""

    def __init__(self, phases: Sequence[tuple[str, int | None]]):
        phases = tuple((str(name), None if length is None else int(length)) for name, length in phases)
        if not phases:
            raise ValueError("a phase schedule needs at least one phase")
        for index, (name, length) in enumerate(phases):
            if length is None and index != len(phases) - 1:
                raise ValueError(f"only the last phase may be open-ended; {name!r} is not last")
            if length is not None and length < 0:
                raise ValueError(f"phase {name!r} has a negative length {length}")
        self.phases = phases

    def phase(self, epoch: int) -> str:
        """The phase of 1-based ``epoch``; epochs past a finite schedule stay in its last phase."""
        if epoch < 1:
            raise ValueError("epochs are counted from 1")
        end = 0
        for name, length in self.phases:
            if length is None:
                return name
            end += length
            if epoch <= end:
                return name
        return self.phases[-1][0]

    def first_epoch(self, name: str) -> int:
        """The 1-based epoch at which phase ``name`` starts."""
        start = 1
        for phase, length in self.phases:
            if phase == name:
                return start
            start += length or 0
        raise KeyError(name)

    def __repr__(self) -> str:
        return f"EpochPhases({list(self.phases)!r})"


class PhasedModule(nn.Module):
    """``nn.Module`` whose ``phase`` follows the epochs of ``mmer.engine.fit`` (see the module docstring)."""

    def __init__(self, phases: Sequence[tuple[str, int | None]]):
        super().__init__()
        self.schedule = EpochPhases(phases)
        self.epoch = 0  # 1-based number of the epoch being (or last) trained; 0 before training
        self._epoch_pending = True

    def train(self, mode: bool = True):
        if not mode:  # the engine evaluates after every epoch: the next training forward opens a new epoch
            self._epoch_pending = True
        return super().train(mode)

    def begin_training_step(self) -> None:
        """Call at the start of a training-mode ``forward``: advances ``epoch`` at an epoch's first batch."""
        if self._epoch_pending:
            self.epoch += 1
            self._epoch_pending = False

    @property
    def phase(self) -> str:
        """The current phase (the first phase before any training)."""
        return self.schedule.phase(max(self.epoch, 1))

    def reset_phases(self) -> None:
        """Restart the schedule (a fresh ``fit`` on the same model)."""
        self.epoch = 0
        self._epoch_pending = True
