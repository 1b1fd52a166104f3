"""Time per training step and peak memory versus the number of inducing points M.

Each case runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its own.
Ours: ``GPEXModel`` with a ``CachedDeepKernel`` (10 heads x D=64, MLP kernel network, batch
256): forward with 256 fresh rows, ``ANNMatchingELBO``, backward, Adam step, refresh of 256
rows. Peers: GPyTorch SVGP (``VariationalStrategy`` + Cholesky variational distribution, the
same MLP feeding an RBF kernel, 10 independent heads), SV-DKL (``GridInterpolation
VariationalStrategy`` on a 2-D grid per head) and SV-DKL as in GPyTorch's SV-DKL tutorial
(``svdkl1d``: the MLP's 64 features, one GP on a 1-D grid each, wrapped in
``IndependentMultitaskVariationalStrategy``, mixed into the 10 heads by ``SoftmaxLikelihood``).

M is the number of inducing values each head's prediction depends on: the inducing points of
one head (SVGP), the grid of one head (2-D SV-DKL), all 64 grids (1-D SV-DKL: 64 x grid size,
since every head mixes all features), the inducing set (ours). Peers stop at the first size
whose step exceeds the time cap or whose address space would exceed the memory cap.

Usage::

    python benchmarks/scaling.py --out docs/figures/scaling   # all cases, table + PNG + JSON
    python benchmarks/scaling.py --methods ours,svdkl1d       # some methods; merged into the JSON
    python benchmarks/scaling.py --one ours 1000000            # one case, prints JSON
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

HEADS, DIM, BATCH, INPUT = 10, 64, 256, 32
FEATURES = 64  # 1-D SV-DKL: GPs (one per MLP feature), as many as our embedding width per head
TIME_CAP_S = 120.0  # peers whose first step exceeds this are not run at larger M
# Peers run under this address-space limit: an allocation beyond it fails in the child instead
# of pushing a shared 23 GiB machine into the OOM killer.
MEMORY_CAP_BYTES = 12 * 2**30


def _mlp(out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(INPUT, 128), nn.ReLU(), nn.Linear(128, out))


def _ours(m: int, steps: int) -> dict[str, float]:
    from step_time_vs_m import build_step  # the same step as the interleaved measurement

    start = time.perf_counter()
    step = build_step(m)  # includes the fill sweep of the cache
    fill_s = time.perf_counter() - start
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"step_s": (time.perf_counter() - start) / steps, "fill_s": fill_s, "cache_bytes": HEADS * m * DIM * 4}


def _time_peer(step: Callable[[], None], steps: int) -> dict[str, float]:
    start = time.perf_counter()
    step()  # the first step, also a warm-up: it is what the cap is checked on
    first = time.perf_counter() - start
    if first > TIME_CAP_S or steps <= 1:
        return {"step_s": first, "fill_s": 0.0, "cache_bytes": 0}
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"step_s": (time.perf_counter() - start) / steps, "fill_s": 0.0, "cache_bytes": 0}


def _svgp(m: int, steps: int, grid: bool) -> dict[str, float]:
    import gpytorch

    torch.manual_seed(0)
    batch_shape = torch.Size([HEADS])

    class DeepSVGP(gpytorch.models.ApproximateGP):
        def __init__(self) -> None:
            if grid:
                side = int(round(m**0.5))
                distribution = gpytorch.variational.CholeskyVariationalDistribution(
                    side * side, batch_shape=batch_shape
                )
                strategy = gpytorch.variational.GridInterpolationVariationalStrategy(
                    self, grid_size=side, grid_bounds=[(-1.0, 1.0), (-1.0, 1.0)], variational_distribution=distribution
                )
            else:
                distribution = gpytorch.variational.CholeskyVariationalDistribution(m, batch_shape=batch_shape)
                strategy = gpytorch.variational.VariationalStrategy(
                    self, torch.randn(m, 2), distribution, learn_inducing_locations=True
                )
            super().__init__(gpytorch.variational.IndependentMultitaskVariationalStrategy(strategy, num_tasks=HEADS))
            self.features = _mlp(2)
            self.scale = gpytorch.utils.grid.ScaleToBounds(-1.0, 1.0)
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(batch_shape=batch_shape), batch_shape=batch_shape
            )

        def forward(self, z: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
            return gpytorch.distributions.MultivariateNormal(torch.zeros(z.shape[:-1]), self.covar_module(z))

        def __call__(self, x: torch.Tensor, **kwargs: object) -> gpytorch.distributions.MultivariateNormal:
            return super().__call__(self.scale(self.features(x)), **kwargs)

    model = DeepSVGP()
    likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=HEADS)
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=10_000)
    optimizer = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=1e-3)

    def step() -> None:
        x = torch.randn(BATCH, INPUT)
        loss = -mll(model(x), torch.randn(BATCH, HEADS))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _time_peer(step, steps)


def _svdkl_1d(m: int, steps: int) -> dict[str, float]:
    """SV-DKL as in GPyTorch's SV-DKL tutorial: one GP on a 1-D grid per network feature
    (``GridInterpolationVariationalStrategy`` batched over features, wrapped in
    ``IndependentMultitaskVariationalStrategy``), the features mixed into the heads by
    ``SoftmaxLikelihood`` (8 likelihood samples); here M = FEATURES x grid size."""
    import math

    import gpytorch

    if m % FEATURES or m // FEATURES < 2:
        raise ValueError(f"M: expected a multiple of FEATURES={FEATURES} with a grid of >= 2 points, got {m}")
    grid_size, grid_bounds = m // FEATURES, (-10.0, 10.0)
    torch.manual_seed(0)

    class GridGPLayer(gpytorch.models.ApproximateGP):
        def __init__(self) -> None:
            distribution = gpytorch.variational.CholeskyVariationalDistribution(
                grid_size, batch_shape=torch.Size([FEATURES])
            )
            strategy = gpytorch.variational.IndependentMultitaskVariationalStrategy(
                gpytorch.variational.GridInterpolationVariationalStrategy(
                    self, grid_size=grid_size, grid_bounds=[grid_bounds], variational_distribution=distribution
                ),
                num_tasks=FEATURES,
            )
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(
                    lengthscale_prior=gpytorch.priors.SmoothedBoxPrior(
                        math.exp(-1), math.exp(1), sigma=0.1, transform=torch.exp
                    )
                )
            )

        def forward(self, z: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    features, layer = _mlp(FEATURES), GridGPLayer()
    scale = gpytorch.utils.grid.ScaleToBounds(*grid_bounds)
    likelihood = gpytorch.likelihoods.SoftmaxLikelihood(num_features=FEATURES, num_classes=HEADS)
    mll = gpytorch.mlls.VariationalELBO(likelihood, layer, num_data=10_000)
    optimizer = torch.optim.Adam([*features.parameters(), *layer.parameters(), *likelihood.parameters()], lr=1e-3)

    def step() -> None:
        x = torch.randn(BATCH, INPUT)
        z = scale(features(x)).mT.unsqueeze(-1)  # shape: (FEATURES, BATCH, 1): one 1-D GP per feature
        with gpytorch.settings.num_likelihood_samples(8):
            loss = -mll(layer(z), torch.randint(HEADS, (BATCH,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _time_peer(step, steps)


def run_one(method: str, m: int, steps: int) -> dict[str, float]:
    if method not in CASES:
        raise ValueError(f"method: expected one of {', '.join(CASES)}, got {method!r}")
    if method != "ours":
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))
    if method == "ours":
        result = _ours(m, steps)
    elif method == "svdkl1d":
        result = _svdkl_1d(m, steps)
    else:
        result = _svgp(m, steps, grid=method == "svdkl")
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


CASES: dict[str, list[int]] = {
    "ours": [1_000, 4_000, 8_000, 100_000, 1_000_000],
    "svgp": [1_000, 4_000, 8_000, 100_000, 1_000_000],
    "svdkl": [1_024, 4_096],
    "svdkl1d": [FEATURES * 16, FEATURES * 64, FEATURES * 128, FEATURES * 1_563, FEATURES * 15_625],
}


LABELS = {
    "ours": "ours (GPEXModel)",
    "svgp": "SVGP, RBF on 2-D MLP features",
    "svdkl": "SV-DKL, 2-D grid per head",
    "svdkl1d": "SV-DKL, 1-D grid per feature",
}


def _stop_reason(stderr: str, m: int) -> str:
    last = stderr.strip().splitlines()[-1][:160] if stderr.strip() else "no error message"
    if "MemoryError" in stderr or "alloc" in stderr.lower():
        return f"over the {MEMORY_CAP_BYTES / 2**30:.0f} GiB memory cap at M={m} ({last})"
    return f"failed at M={m}: {last}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "M"))
    parser.add_argument("--methods", default=",".join(CASES), help="comma-separated, of " + ", ".join(CASES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/scaling"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.steps)))
        return
    methods = args.methods.split(",")
    unknown = [method for method in methods if method not in CASES]
    if unknown:
        parser.error(f"--methods: expected names from {', '.join(CASES)}, got {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, object]] = []
    for method in methods:
        stopped = None
        for m in CASES[method]:
            if stopped is not None:
                results.append({"method": method, "M": m, "stopped": stopped})
                continue
            steps = args.steps if method == "ours" else 3
            proc = subprocess.run(
                [sys.executable, __file__, "--one", method, str(m), "--steps", str(steps)],
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if proc.returncode != 0:
                stopped = _stop_reason(proc.stderr, m)
                results.append({"method": method, "M": m, "stopped": stopped})
                print(json.dumps(results[-1]), flush=True)
                continue
            row = {"method": method, "M": m, **json.loads(proc.stdout.strip().splitlines()[-1])}
            results.append(row)
            print(json.dumps(row), flush=True)
            if method != "ours" and row["step_s"] > TIME_CAP_S / 10:
                stopped = f"step time {row['step_s']:.1f} s at M={m} (cap: {TIME_CAP_S / 10:.0f} s per step)"
    # Methods not rerun keep their rows from the earlier run.
    path = args.out / "scaling.json"
    earlier = json.loads(path.read_text()) if path.exists() else []
    results = [row for row in earlier if row["method"] not in methods] + results
    results.sort(key=lambda row: (list(CASES).index(row["method"]), row["M"]))
    path.write_text(json.dumps(results, indent=2) + "\n")
    _plot(results, args.out / "scaling.png")


def _plot(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for method in CASES:
        rows = [r for r in results if r["method"] == method and "step_s" in r]
        if not rows:
            continue
        ms = [r["M"] for r in rows]
        ax_time.loglog(ms, [r["step_s"] for r in rows], "o-", label=LABELS[method])
        ax_mem.loglog(ms, [r["peak_rss_bytes"] / 2**30 for r in rows], "o-", label=LABELS[method])
    ax_time.set(xlabel="inducing points M", ylabel="seconds per training step", title="time per step")
    ax_mem.set(xlabel="inducing points M", ylabel="peak RSS (GiB)", title="peak memory")
    for ax in (ax_time, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
