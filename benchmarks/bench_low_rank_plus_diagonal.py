"""LowRankPlusDiagonal versus linear_operator's LowRankRootAddedDiagLinearOperator, D = 64.

Tasks, each on the same float32 inputs (``root`` M×64 with entries N(0, 1/64), ``y`` of length M,
σ² = 0.1) for both operators:

* ``inv_quad_logdet``: ``inv_quad_logdet(y, logdet=True)`` and backward to ``root`` and σ².
  Also ``autograd``: the same push-through formulas written with torch ops and differentiated by
  autograd, to show what the hand-written backward buys.
* ``inv_quad_logdet_high_snr``: the same with ``y = 3 root v + σ ε`` (``v``, ``ε`` standard normal),
  data a GP fits well: ``‖y‖² ≈ 90 σ² yᵀA⁻¹y``, past ours' cancellation limit, so it takes the
  extra residual (refinement) pass.
* ``solve``: ``A⁻¹ y`` without gradients.
* ``log_prob``: ``GaussianLikelihood()(MultivariateNormal(0, prior)).log_prob(y)`` and backward
  (one training step of an exact marginal likelihood); the likelihood's noise is added by
  GPyTorch's own ``marginal``.
* ``floor``: the two products no implementation can avoid, ``rootᵀ @ root`` and ``root @ (D×D)``.

The machine this was written on has 2 cores shared with other jobs, so absolute times drift. Each
pytest-benchmark round therefore runs every implementation of a task once, interleaved (rotating
the order), and the table's ratios are medians of the per-round ratios: both sides of a ratio see
the same load. pytest-benchmark's own statistics are for one such round.

Peak memory is measured per case in a fresh subprocess: the kernel's resident-set high-water
mark (``VmHWM``) is reset to the current RSS once the inputs exist (``/proc/self/clear_refs``),
the call runs, and the reported figure is ``VmHWM − RSS before``: the extra memory the call
needs beyond its inputs (including the gradient it returns). glibc is told to mmap every block
above 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed buffers are returned to the kernel rather
than silently reused. Run everything in one go and print the table::

    .venv/bin/python -m pytest benchmarks/bench_low_rank_plus_diagonal.py --benchmark-only \\
        --benchmark-json=.benchmarks/low_rank_plus_diagonal.json
    .venv/bin/python benchmarks/bench_low_rank_plus_diagonal.py --table .benchmarks/low_rank_plus_diagonal.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gpytorch
import pytest
import torch
from linear_operator.operators import (
    ConstantDiagLinearOperator,
    LowRankRootAddedDiagLinearOperator,
    LowRankRootLinearOperator,
)

from gpex_gpytorch.operators import LowRankPlusDiagonal

D = 64
SIZES = (1_000, 10_000, 100_000, 1_000_000)
NOISE = 0.1
PRIOR_JITTER = 1e-4  # the prior covariance root rootᵀ + 1e-4 I, identical for both operators
THREADS = 2  # the development box has 2 cores
ROUNDS = {1_000: 30, 10_000: 15, 100_000: 7, 1_000_000: 4}
CASES = {
    "inv_quad_logdet": ("ours", "autograd", "linear_operator"),
    "inv_quad_logdet_high_snr": ("ours", "linear_operator"),
    "solve": ("ours", "linear_operator"),
    "log_prob": ("ours", "linear_operator"),
    "floor": ("floor",),
}


def _inputs(num_rows: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    root = torch.randn(num_rows, D, generator=gen) / math.sqrt(D)
    y = torch.randn(num_rows, generator=gen)
    y_high_snr = 3 * root @ torch.randn(D, generator=gen) + math.sqrt(NOISE) * torch.randn(num_rows, generator=gen)
    return {
        "root": root.requires_grad_(True),
        "y": y,
        "y_high_snr": y_high_snr,
        "noise": torch.tensor([NOISE], requires_grad=True),
    }


def _theirs(root: torch.Tensor, noise: torch.Tensor) -> LowRankRootAddedDiagLinearOperator:
    op = LowRankRootLinearOperator(root) + ConstantDiagLinearOperator(noise.reshape(1), root.size(-2))
    assert isinstance(op, LowRankRootAddedDiagLinearOperator)
    return op


def _push_through_autograd(root: torch.Tensor, noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """inv_quad + logdet by the push-through formulas, differentiated by plain autograd."""
    num_rows, rank = root.shape
    cap = root.mT @ root + noise * torch.eye(rank)
    chol = torch.linalg.cholesky(cap)
    b = root.mT @ y.unsqueeze(-1)
    quad = (y.square().sum() - (b * torch.cholesky_solve(b, chol)).sum()) / noise
    logdet = (num_rows - rank) * noise.log() + 2 * chol.diagonal().log().sum()
    return (quad + logdet).sum()


def make_case(
    task: str, impl: str, num_rows: int, inputs: dict[str, torch.Tensor] | None = None
) -> Callable[[], object]:
    """The function to time (inputs built outside it; pass ``inputs`` to share them between cases)."""
    inputs = _inputs(num_rows) if inputs is None else inputs
    root, y, noise = inputs["root"], inputs["y"], inputs["noise"]

    def clear() -> None:
        root.grad = noise.grad = None

    if task == "floor":

        def run() -> object:
            with torch.no_grad():
                gram = root.mT @ root
                return root @ gram

    elif task == "inv_quad_logdet" and impl == "autograd":

        def run() -> object:
            clear()
            _push_through_autograd(root, noise, y).backward()

    elif task in ("inv_quad_logdet", "inv_quad_logdet_high_snr"):
        build = (lambda: LowRankPlusDiagonal(root, noise)) if impl == "ours" else (lambda: _theirs(root, noise))
        rhs = (y if task == "inv_quad_logdet" else inputs["y_high_snr"]).unsqueeze(-1)

        def run() -> object:
            clear()
            quad, logdet = build().inv_quad_logdet(rhs, logdet=True)
            (quad + logdet).backward()

    elif task == "solve":
        build = (lambda: LowRankPlusDiagonal(root, noise)) if impl == "ours" else (lambda: _theirs(root, noise))

        def run() -> object:
            with torch.no_grad():
                return build().solve(y.unsqueeze(-1))

    elif task == "log_prob":
        likelihood = gpytorch.likelihoods.GaussianLikelihood()
        likelihood.noise = NOISE
        jitter = torch.tensor([PRIOR_JITTER])
        if impl == "ours":
            prior_covar = lambda: LowRankPlusDiagonal(root, jitter)  # noqa: E731
            expected = LowRankPlusDiagonal
        else:
            prior_covar = lambda: _theirs(root, jitter)  # noqa: E731
            expected = LowRankRootAddedDiagLinearOperator

        def run() -> object:
            clear()
            likelihood.zero_grad()
            marginal = likelihood(gpytorch.distributions.MultivariateNormal(torch.zeros(num_rows), prior_covar()))
            assert isinstance(marginal.lazy_covariance_matrix, expected)
            marginal.log_prob(y).backward()

    else:
        raise ValueError(f"task: unknown task/impl {task!r}/{impl!r}")
    return run


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def measure_peak(task: str, impl: str, num_rows: int) -> dict[str, float]:
    """Peak extra resident memory of one call, in this (fresh) process (Linux)."""
    torch.set_num_threads(THREADS)
    make_case(task, impl, 1_000)()  # load kernels and libraries before the baseline
    run = make_case(task, impl, num_rows)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    before = _status_mb("VmRSS")
    run()
    return {"peak_extra_mb": _status_mb("VmHWM") - before, "root_mb": num_rows * D * 4 / 2**20}


def _peak_in_subprocess(task: str, impl: str, num_rows: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--peak", task, impl, str(num_rows)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


PARAMS = [(task, m) for m in SIZES for task in ("inv_quad_logdet", "inv_quad_logdet_high_snr", "solve", "log_prob")]


@pytest.mark.parametrize(("task", "num_rows"), PARAMS, ids=[f"{t}-{m}" for t, m in PARAMS])
def test_low_rank_plus_diagonal(benchmark, task: str, num_rows: int) -> None:
    torch.set_num_threads(THREADS)
    impls = (*CASES[task], "floor")
    inputs = _inputs(num_rows)
    runs = {impl: make_case(task if impl != "floor" else "floor", impl, num_rows, inputs) for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    rotation = [0]

    def one_round() -> None:
        start = rotation[0] = rotation[0] + 1
        for impl in impls[start % len(impls) :] + impls[: start % len(impls)]:
            tic = time.perf_counter()
            runs[impl]()
            times[impl].append(time.perf_counter() - tic)

    benchmark.group = task
    benchmark.pedantic(one_round, rounds=ROUNDS[num_rows], iterations=1, warmup_rounds=1)
    for impl in impls:
        times[impl] = times[impl][1:]  # drop the warm-up round
    peaks = {impl: _peak_in_subprocess(task if impl != "floor" else "floor", impl, num_rows) for impl in impls}
    benchmark.extra_info.update(task=task, num_rows=num_rows, rank=D, threads=THREADS, times=times, peaks=peaks)


def table(path: Path) -> str:
    """Markdown tables from a ``--benchmark-json`` file: median times, paired ratios, peak extra memory."""
    results = {(b["extra_info"]["task"], b["extra_info"]["num_rows"]): b["extra_info"] for b in _load(path)}

    def paired(info: dict, num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(info["times"][num], info["times"][den], strict=True))

    def med(info: dict, impl: str) -> float:
        return statistics.median(info["times"][impl])

    lines = [
        "| task | M | ours (s) | linear_operator (s) | floor (s) | speed-up | ours / floor "
        "| ours peak extra (MB) | linear_operator peak extra (MB) | ours peak extra / root size |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (task, m), info in sorted(results.items(), key=lambda kv: (list(CASES).index(kv[0][0]), kv[0][1])):
        ours, theirs = info["peaks"]["ours"], info["peaks"]["linear_operator"]
        lines.append(
            f"| {task} | {m:,} | {med(info, 'ours'):.4f} | {med(info, 'linear_operator'):.4f} "
            f"| {med(info, 'floor'):.4f} | {paired(info, 'linear_operator', 'ours'):.1f}× "
            f"| {paired(info, 'ours', 'floor'):.2f} | {ours['peak_extra_mb']:.0f} | {theirs['peak_extra_mb']:.0f} "
            f"| {ours['peak_extra_mb'] / ours['root_mb']:.2f} |"
        )
    lines += [
        "",
        "| M | push-through + autograd (s) | ours, hand-written backward (s) | autograd / ours "
        "| autograd peak extra (MB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for (task, m), info in sorted(results.items()):
        if task == "inv_quad_logdet":
            lines.append(
                f"| {m:,} | {med(info, 'autograd'):.4f} | {med(info, 'ours'):.4f} "
                f"| {paired(info, 'autograd', 'ours'):.1f}× | {info['peaks']['autograd']['peak_extra_mb']:.0f} |"
            )
    return "\n".join(lines)


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["benchmarks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", nargs=3, metavar=("TASK", "IMPL", "M"), help="measure one case's peak memory")
    parser.add_argument("--table", type=Path, help="print the markdown table of a --benchmark-json file")
    args = parser.parse_args()
    if args.peak:
        task, impl, num_rows = args.peak
        print(json.dumps(measure_peak(task, impl, int(num_rows))))
    elif args.table:
        print(table(args.table))
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
