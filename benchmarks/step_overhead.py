"""What a GPEX training step costs on top of the kernel network's own unavoidable work.

The *floor* is the network work no GP method can avoid in one step: a forward and backward pass
of the kernel network on the training batch and the fresh inducing rows (512 rows), Adam, and a
no-grad forward on the refreshed rows (256). The *GPEX step* is the same work plus the GP:
statistics updated with the fresh rows, the posterior, :class:`ANNMatchingELBO`, and the refresh of
the cache and its statistics. Both run in one process, interleaved (floor, step, floor, step...),
one thread, and the medians and their ratio are reported per M.

Kernel network MLP 32→256→640 (10 heads × D = 64), batch 256, 256 fresh rows with gradient, 256
refreshed rows (the setting of issue #19; ``--hidden`` widens the network, which leaves the GP's
work unchanged). A third timing, interleaved with the two, is the GP's linear algebra alone
(:func:`build_gp_arithmetic`): at the precision ``docs/numerics.md`` states, step / floor cannot go
below one plus its share of the floor, whatever the Python around it costs.

    .venv/bin/python benchmarks/step_overhead.py --sizes 100000 1000000 --steps 30 --out step_overhead.json
    .venv/bin/python benchmarks/step_overhead.py --profile 100000       # torch.profiler table of 10 steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gpex_gpytorch import ANNMatchingELBO, CachedDeepKernel, GPEXModel
from gpex_gpytorch.functions.gram_delta import GramDelta

HEADS, DIM, BATCH, FRESH, REFRESH, INPUT = 10, 64, 256, 256, 256, 32


def _network(seed: int, device: torch.device, hidden: int = 256) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(INPUT, hidden), nn.ReLU(), nn.Linear(hidden, HEADS * DIM)).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_gpex_step(
    m: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    statistics_dtype: torch.dtype = torch.float64,
    hidden: int = 256,
) -> Callable[[], None]:
    """One GPEX step at M = ``m`` (the cache filled with random rows: the set-up is not timed)."""
    device = torch.device(device)
    net = _network(seed, device, hidden)
    kernel = CachedDeepKernel(
        net, m, HEADS, DIM, device=device, force_allocation=True, statistics_dtype=statistics_dtype
    )
    kernel.embeddings.normal_()
    kernel.recompute_statistics()
    model = GPEXModel(kernel, torch.randn(m, HEADS, device=device))
    mll = ANNMatchingELBO(None, model, num_data=m, detach_variance=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)
    # Inputs of the rows touched (their values do not matter).
    inducing = torch.randn(4096, INPUT, generator=generator).to(device)

    def step() -> None:
        x = torch.randn(BATCH, INPUT, generator=generator).to(device)
        # O(FRESH) draws (a randperm of M would itself cost O(M) per step).
        fresh = torch.randint(m, (FRESH,), generator=generator).unique().to(device)
        output = model(x, fresh_indices=fresh, fresh_inputs=inducing[: fresh.numel()])
        loss = -mll(output, torch.randn(BATCH, HEADS, generator=generator).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows = torch.randint(m, (REFRESH,), generator=generator).unique().to(device)
        kernel.refresh(rows, inducing[: rows.numel()])
        _sync(device)

    return step


def build_floor_step(seed: int = 0, device: str | torch.device = "cpu", hidden: int = 256) -> Callable[[], None]:
    """The kernel network's own work in one step, with no GP."""
    device = torch.device(device)
    net = _network(seed, device, hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)
    inducing = torch.randn(4096, INPUT, generator=generator).to(device)

    def step() -> None:
        x = torch.randn(BATCH, INPUT, generator=generator).to(device)
        out = net(torch.cat([x, inducing[:FRESH]]))
        loss = out.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            net(inducing[:REFRESH])
        _sync(device)

    return step


def build_gp_arithmetic(
    seed: int = 0, device: str | torch.device = "cpu", statistics_dtype: torch.dtype = torch.float64
) -> Callable[[], None]:
    """The linear algebra of a GPEX step at the precision ``docs/numerics.md`` states, alone.

    No network, no Python beyond the calls: the fresh rows' ``ΔG`` (its forward in ``statistics_dtype``
    and its backward product in float32), the refresh's ``ΔG``, the two ``D × D`` Cholesky
    factorisations (the posterior's and the KL's) and the triangular solve of the posterior variance
    (``(H, D, D)`` against ``N`` right-hand sides) — each as the package computes it. What it costs
    is a lower bound on the GP's share of a step, whatever the Python around it.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)

    def rows(n: int) -> torch.Tensor:
        return torch.randn(HEADS, n, DIM, generator=generator).to(device)

    fresh, old, refreshed, stale, features = rows(FRESH), rows(FRESH), rows(REFRESH), rows(REFRESH), rows(BATCH)
    values = torch.randn(HEADS, FRESH, generator=generator).to(device)
    fresh.requires_grad_(True)
    gram = (stale.mT @ stale).to(statistics_dtype) + torch.eye(DIM, dtype=statistics_dtype, device=device)
    weight = torch.randn(HEADS, DIM, DIM, generator=generator).to(device, statistics_dtype)

    def step() -> None:
        delta, _ = GramDelta.apply(fresh, old, values, statistics_dtype)
        (delta * weight).sum().backward()  # the backward's (H, b, D) @ (H, D, D) product
        GramDelta.apply(refreshed, stale, None, statistics_dtype)
        chol = torch.linalg.cholesky_ex(gram + delta.detach())[0]
        torch.linalg.cholesky_ex(gram)
        u = features.to(statistics_dtype, memory_format=torch.contiguous_format)
        torch.linalg.solve_triangular(chol, u.mT, upper=False)
        _sync(device)

    return step


def measure(
    sizes: list[int],
    steps: int,
    device: str | torch.device = "cpu",
    statistics_dtype: torch.dtype = torch.float64,
    hidden: int = 256,
) -> dict:
    """Interleaved medians of the floor, of a GPEX step at each M and of the GP's linear algebra alone."""
    floor = build_floor_step(device=device, hidden=hidden)
    arithmetic = build_gp_arithmetic(device=device, statistics_dtype=statistics_dtype)
    gpex = {m: build_gpex_step(m, device=device, statistics_dtype=statistics_dtype, hidden=hidden) for m in sizes}
    named = [("floor", floor), ("arithmetic", arithmetic), *((str(m), f) for m, f in gpex.items())]
    for _, fn in named:
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name, _ in named}
    for _ in range(steps):
        for name, fn in named:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "median_floor_s": medians["floor"],
        "median_step_s": {m: medians[str(m)] for m in sizes},
        "step_over_floor": {m: medians[str(m)] / medians["floor"] for m in sizes},
        # The GP's linear algebra alone, per floor: step / floor cannot go below 1 + this at this precision.
        "median_gp_arithmetic_s": medians["arithmetic"],
        "gp_arithmetic_over_floor": medians["arithmetic"] / medians["floor"],
        "steps": steps,
        "hidden": hidden,
        "device": str(device),
        "statistics_dtype": str(statistics_dtype),
    }


def profile(m: int) -> str:
    step = build_gpex_step(m)
    step()
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--hidden",
        type=int,
        default=256,
        help="the kernel network's hidden width (256 is issue #19's setting; the GP's work does not depend on it)",
    )
    parser.add_argument("--profile", type=int, default=None, metavar="M", help="print a profile of 10 steps at M")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument(
        "--statistics-dtype",
        choices=["float64", "float32"],
        default="float64",
        help="the kernel's statistics_dtype (float64 is the default and what the drift guarantee assumes)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile is not None:
        print(profile(args.profile))
        return 0
    result = measure(args.sizes, args.steps, statistics_dtype=getattr(torch, args.statistics_dtype), hidden=args.hidden)
    result.update(
        {
            "command": "benchmarks/step_overhead.py " + " ".join(argv or []),
            "threads": args.threads,
            "load_average": os.getloadavg(),
            "machine": platform.platform(),
            "torch": torch.__version__,
        }
    )
    print("| M | GPEX step (ms) | floor (ms) | step / floor | GP linear algebra alone / floor |")
    print("|---|---|---|---|---|")
    for m in args.sizes:
        print(
            f"| {m:,} | {1e3 * result['median_step_s'][m]:.1f} | {1e3 * result['median_floor_s']:.1f} "
            f"| {result['step_over_floor'][m]:.2f} | {result['gp_arithmetic_over_floor']:.2f} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
