"""Training-step time at two sizes of the inducing set, measured side by side in one process.

Both models are built first, then their steps are interleaved (small, big, small, big, ...), so
whatever else the machine does affects both alike; the medians and their ratio are printed as
JSON. The big cache is filled with random rows (the fill sweep is timed in ``scaling.py``).

    python benchmarks/step_time_vs_m.py --small 1000 --big 1000000 --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from gpex_gpytorch import ANNMatchingELBO, CachedDeepKernel, GPEXModel

HEADS, DIM, BATCH, INPUT = 10, 64, 256, 32


def build_step(m: int, seed: int = 0, fill: bool = True) -> Callable[[], None]:
    """One GPyTorch-native training step of GPEX at M = ``m`` (forward with fresh rows, ELBO,
    backward, Adam, refresh). ``fill=False`` fills the cache with random rows instead of the
    network's embeddings (faster set-up for very large M)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(INPUT, 128), nn.ReLU(), nn.Linear(128, HEADS * DIM))
    kernel = CachedDeepKernel(net, m, HEADS, DIM)
    inducing = torch.randn(m, INPUT)
    if fill:
        kernel.fill(inducing, batch_size=16384, progress=False)
    else:
        kernel.embeddings.normal_()
        kernel.recompute_statistics()
    model = GPEXModel(kernel, torch.randn(m, HEADS))
    mll = ANNMatchingELBO(None, model, num_data=m, detach_variance=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)

    def step() -> None:
        x = torch.randn(BATCH, INPUT, generator=generator)
        fresh = torch.randint(m, (BATCH,), generator=generator).unique()
        output = model(x, fresh_indices=fresh, fresh_inputs=inducing[fresh])
        loss = -mll(output, torch.randn(BATCH, HEADS, generator=generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows = torch.randint(m, (BATCH,), generator=generator).unique()
        kernel.refresh(rows, inducing[rows])

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    small, big = build_step(args.small), build_step(args.big)
    small(), big()  # warm-up
    times: dict[str, list[float]] = {"small": [], "big": []}
    for _ in range(args.steps):
        for name, step in (("small", small), ("big", big)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "M_small": args.small,
                "M_big": args.big,
                "median_step_s_small": medians["small"],
                "median_step_s_big": medians["big"],
                "ratio_big_over_small": medians["big"] / medians["small"],
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
