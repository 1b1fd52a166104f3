"""Everything a distillation run changes as it trains, saved and restored as one ``state_dict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..models.gpex_model import GPEXModel

__all__ = ["RowSweep", "TrainingState"]

# The entries of TrainingState.state_dict(); "torch_rng" is absent from checkpoints of older sharded runs.
STATE_KEYS = ("step", "model", "optimizer", "generator", "torch_rng", "fresh_sweep", "refresh_sweep", "history")
OPTIONAL_STATE_KEYS = ("torch_rng",)


class RowSweep:
    """Cycles through ``size`` rows in random order, reshuffling after each pass.

    Every row is visited once per pass, and drawing ``k`` rows costs O(k) (the O(M) shuffle is
    amortised over a pass). The draws are global row indices: every process of a sharded run
    draws the same ones and keeps those it holds.
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.order = torch.randperm(size, generator=generator)
        self.position = 0

    def next(self, k: int, generator: torch.Generator) -> Tensor:
        """The next ``k`` rows (at most ``size``); a new shuffle from ``generator`` once a pass is used up."""
        k = min(k, self.size)
        if self.position + k > self.size:
            self.order = torch.randperm(self.size, generator=generator)
            self.position = 0
        rows = self.order[self.position : self.position + k]
        self.position += k
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order = state["order"]
        if not isinstance(order, Tensor) or tuple(order.shape) != (self.size,):
            shape = tuple(order.shape) if isinstance(order, Tensor) else type(order).__name__
            raise ValueError(f"state: expected a sweep order over {self.size} rows, got {shape}")
        self.order, self.position = order.clone().cpu(), int(state["position"])


@dataclass
class TrainingState:
    """The mutable state of a :class:`~gpex_gpytorch.Distiller` run: what a checkpoint saves.

    :ivar model: the GPs being fitted (their kernel network, cache and statistics).
    :ivar optimizer: Adam over the trainable parameters.
    :ivar generator: the source of every random draw of the loop (batches, mixing, rows).
    :ivar fresh_sweep: the inducing rows recomputed with gradient, a batch per step.
    :ivar refresh_sweep: the inducing rows refreshed without gradient, a batch per step.
    :ivar step: the steps taken.
    :ivar history: one record per step (``step``, ``loss``, ... see :class:`~gpex_gpytorch.Distiller`).
    """

    model: GPEXModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    fresh_sweep: RowSweep
    refresh_sweep: RowSweep
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def start(cls, model: GPEXModel, lr: float, seed: int) -> TrainingState:
        """A new run: Adam at ``lr`` over ``model``'s trainable parameters, every draw seeded by ``seed``."""
        if not isinstance(model, GPEXModel):
            raise TypeError(f"model: expected a GPEXModel, got {type(model).__name__}")
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        generator = torch.Generator().manual_seed(seed)
        rows = model.covar_module.num_inducing
        return cls(model, optimizer, generator, RowSweep(rows, generator), RowSweep(rows, generator))

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (loadable with ``weights_only=True``)."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "fresh_sweep": self.fresh_sweep.state_dict(),
            "refresh_sweep": self.refresh_sweep.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (torch's global RNG too, when it was saved).

        :raises ValueError: entries missing, or a step that is not an integer >= 0.
        """
        missing = [k for k in STATE_KEYS if k not in state and k not in OPTIONAL_STATE_KEYS]
        if missing:
            raise ValueError(f"state: lacks the entries {missing}; it was not written by a Distiller")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"state: the step must be an integer >= 0, got {step!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.fresh_sweep.load_state_dict(state["fresh_sweep"])
        self.refresh_sweep.load_state_dict(state["refresh_sweep"])
        self.step = step
        self.history = list(state["history"])

    def row_entries(self) -> dict[str, int]:
        """The keys of ``state_dict()["model"]`` that hold inducing rows, with the dimension of their rows
        (a sharded checkpoint writes them per process)."""
        return self.model.row_entries()
