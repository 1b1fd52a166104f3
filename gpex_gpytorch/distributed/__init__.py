"""Scale GPEX out with ``torch.distributed``: the inducing cache sharded by rows across ranks.

Each rank holds ``M/P`` rows of ``U`` and ``V``; the statistics ``G = UᵀU`` and ``b = UᵀV`` that
the posterior needs are kept identical on every rank by all-reducing their per-step deltas, whose
size (``H·D² + H·D``) does not depend on ``M``. The kernel network trains under
:class:`~torch.nn.parallel.DistributedDataParallel`. Launch with ``torchrun`` (see
``examples/distributed_distillation.py`` and ``docs/distributed.md``).
"""

from .checkpoint_shards import ShardedCheckpoint, load_sharded_checkpoint, save_sharded_checkpoint
from .communication import CommunicationMeter, DistributedStepError, all_reduce_sum, counting_allreduce_hook
from .neighbours import sharded_nearest_neighbours
from .process_group import destroy_distributed, init_distributed
from .sharded_cached_deep_kernel import ShardedCachedDeepKernel
from .sharded_training import DistributedDistiller
from .sharding import ShardLayout
from .torch_distributed import TorchDistributed

__all__ = [
    "CommunicationMeter",
    "DistributedDistiller",
    "DistributedStepError",
    "ShardLayout",
    "ShardedCachedDeepKernel",
    "ShardedCheckpoint",
    "TorchDistributed",
    "all_reduce_sum",
    "counting_allreduce_hook",
    "destroy_distributed",
    "init_distributed",
    "load_sharded_checkpoint",
    "save_sharded_checkpoint",
    "sharded_nearest_neighbours",
]
