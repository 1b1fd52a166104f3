"""Alg. 2 under ``torch.distributed``: the :class:`Distiller` with the :class:`TorchDistributed` policy."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..distillation import Distiller
from ..kernels import Sharding
from .torch_distributed import TorchDistributed

__all__ = ["DistributedDistiller"]


class DistributedDistiller(Distiller):
    r""":class:`~gpex_gpytorch.Distiller` on every rank of a ``torch.distributed`` job (launch with ``torchrun``).

    ``Distiller(ann, sharding=TorchDistributed(), ...)`` under its own name: the same loop, the same
    parameters and fitted attributes; ``sharding`` defaults to a new :class:`TorchDistributed`.
    ``checkpoint_path`` and ``resume`` name a *folder* of per-rank shards, which can be resumed on
    another number of ranks. Each rank holds ``M/P`` rows of the inducing cache; the kernel network
    trains under :class:`~torch.nn.parallel.DistributedDataParallel`.

    Every random draw is the single-process run's: all ranks draw the *global* batch from the
    same generator (training indices, mixing weights, inducing rows to recompute and refresh),
    then rank ``r`` keeps its slice of the training batch (``batch_size / P`` inputs) and the
    inducing rows it holds. So the run reproduces ``Distiller(same settings).fit(...)`` on one
    process to float round-off, whatever ``P``. Per step a rank sends three all-reduces of
    ``H*D*D + H*D`` float64 (the fresh rows' delta, its gradient, the refresh's delta), DDP's
    gradient buckets (the kernel network's size), and one small all-reduce of the loss and of the
    gradients of parameters outside DDP (the noise); nothing scales with ``M``.

    ``batch_size`` must be a multiple of the world size. ``device`` defaults to the ANN's device
    (put the ANN on ``cuda:<local rank>`` under NCCL). Measured traffic is in ``communication_``
    (bytes and calls per category, whole run), per-step times and bytes in ``history_``
    (``step_seconds``, ``bytes_sent``).
    """

    def fit(
        self,
        train_dataset: Dataset | DataLoader,
        inducing_dataset: Dataset | DataLoader | None = None,
        *,
        resume: str | Path | None = None,
    ) -> DistributedDistiller:
        """Run Alg. 2 for ``steps`` steps on every rank (collective; see :meth:`Distiller.fit`)."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "DistributedDistiller: torch.distributed is not initialised; launch with torchrun and call "
                "gpex_gpytorch.distributed.init_distributed() first (or use Distiller on one process)"
            )
        super().fit(train_dataset, inducing_dataset, resume=resume)
        return self

    def _sharding(self) -> Sharding:
        sharding = TorchDistributed() if self.sharding is None else self.sharding
        sharding.setup()
        sharding.check_batch_size(self.batch_size)
        return sharding
