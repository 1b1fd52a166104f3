"""One million inducing points: fill the cache once, then train at a per-step cost that does not grow with M.

A ``CachedDeepKernel`` holds the embeddings of M inducing inputs for 10 heads × D = 64
(2.56 GB in float32 at M = 10⁶) together with ``G = UᵀU`` and ``b = Uᵀv``; a ``GPEXModel`` puts one
GP per head on it. The script

1. fills the cache with one batched, no-gradient sweep of the kernel network (a progress bar);
2. runs a handful of Alg. 1 training steps: a batch of training inputs, ``--fresh`` inducing rows
   recomputed with gradient, ``ANNMatchingELBO``, backward, Adam, then ``--refresh`` rows refreshed
   without gradient (both walk through the inducing set in one shuffled order);
3. prints the fill time, the median step time, the peak memory, how far the incrementally updated
   ``G`` drifted from an exact recomputation, the Pearson correlation of the GP means with the
   network on held-out inputs, and the time of an exact nearest-neighbour search over all M rows.

The data are synthetic (inputs drawn from a standard normal, ``--input-dim`` features) and the
network explained is a fixed, randomly initialised MLP: the point here is cost, not faithfulness
(``examples/digits_classifier.py`` measures that on a trained network).

Run::

    python examples/scale_to_1m.py --out scale_out                        # M = 10⁶: ~3.3 GB, minutes on a CPU
    python examples/scale_to_1m.py --device cuda --out scale_out          # the same on a GPU
    python examples/scale_to_1m.py --num-inducing 5000 --steps 5 --out /tmp/scale   # seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gpex_gpytorch import ANNMatchingELBO, CachedDeepKernel, GPEXModel
from gpex_gpytorch.distillation import pearson_per_head
from gpex_gpytorch.explain import nearest_neighbours

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("scale_out"), help="where to write metrics.json")
    parser.add_argument("--num-inducing", type=_positive, default=1_000_000, help="M")
    parser.add_argument("--heads", type=_positive, default=10, help="H, GP heads (network outputs)")
    parser.add_argument("--embedding-dim", type=_positive, default=64, help="D, kernel-space width per head")
    parser.add_argument("--input-dim", type=_positive, default=32, help="features of the synthetic inputs")
    parser.add_argument("--hidden", type=_positive, default=128, help="hidden width of the kernel MLP")
    parser.add_argument("--steps", type=_positive, default=20, help="training steps (the first is a warm-up)")
    parser.add_argument("--batch-size", type=_positive, default=256, help="training inputs per step")
    parser.add_argument("--fresh", type=_positive, default=256, help="inducing rows recomputed with gradient per step")
    parser.add_argument("--refresh", type=_positive, default=256, help="inducing rows refreshed per step")
    parser.add_argument("--fill-batch-size", type=_positive, default=16384, help="rows per batch of the fill sweep")
    parser.add_argument("--embedding-dtype", choices=sorted(DTYPES), default="float32", help="storage of the cache")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device: expected a device that is available, got cuda (torch sees no CUDA device)")
    for name in ("fresh", "refresh"):
        if getattr(args, name) > args.num_inducing:
            parser.error(f"--{name}: expected at most --num-inducing={args.num_inducing}, got {getattr(args, name)}")
    return args


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated GPU memory on CUDA; peak resident memory of the process on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # ru_maxrss: kilobytes on Linux, bytes on macOS.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@torch.no_grad()
def _outputs(ann: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([ann(chunk) for chunk in x.split(batch_size)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    m, h, d = args.num_inducing, args.heads, args.embedding_dim
    generator = torch.Generator(device=device).manual_seed(args.seed)
    torch.manual_seed(args.seed)

    # The network explained (a fixed random MLP) and the inducing inputs x̃ with their outputs v = g(x̃).
    ann = nn.Sequential(nn.Linear(args.input_dim, 64), nn.Tanh(), nn.Linear(64, h)).to(device).eval()
    inducing = torch.randn(m, args.input_dim, generator=generator, device=device)
    values = _outputs(ann, inducing, args.fill_batch_size)

    # The kernel network f and the cache U = f(x̃): allocated directly on the device, filled in one sweep.
    kernel_net = nn.Sequential(nn.Linear(args.input_dim, args.hidden), nn.ReLU(), nn.Linear(args.hidden, h * d))
    kernel = CachedDeepKernel(
        kernel_net.to(device), m, h, d, embedding_dtype=DTYPES[args.embedding_dtype], device=device
    )
    cache_bytes = kernel.embeddings.numel() * kernel.embeddings.element_size()
    print(f"inducing cache: {h} heads x {m:,} rows x {d} dims, {args.embedding_dtype}: {cache_bytes / 1e9:.3g} GB")
    _synchronize(device)
    start = time.perf_counter()
    kernel.fill(inducing, batch_size=args.fill_batch_size, progress=not args.quiet)
    _synchronize(device)
    fill_seconds = time.perf_counter() - start
    print(f"fill sweep: {fill_seconds:.1f} s ({m / fill_seconds:,.0f} rows/s)")

    model = GPEXModel(kernel, values, noise=1.0)
    mll = ANNMatchingELBO(None, model, num_data=m, detach_variance=True)
    optimizer = torch.optim.Adam(kernel_net.parameters(), lr=1e-3)
    # One shuffled order of the rows, walked by both the fresh and the refreshed batches (cf. Distiller):
    # every row is refreshed once per M / (fresh + refresh) steps; no per-step O(M) work.
    order = torch.randperm(m, generator=generator, device=device)
    position = 0

    def next_rows(count: int) -> Tensor:
        nonlocal position
        if position + count > m:
            position = 0
        rows = order[position : position + count]
        position += count
        return rows

    model.train()
    step_seconds: list[float] = []
    losses: list[float] = []
    for _ in tqdm(range(args.steps), desc="training steps", disable=args.quiet):
        _synchronize(device)
        began = time.perf_counter()
        x = torch.randn(args.batch_size, args.input_dim, generator=generator, device=device)
        target = _outputs(ann, x, args.batch_size)
        fresh = next_rows(args.fresh)
        output = model(x, fresh_indices=fresh, fresh_inputs=inducing[fresh])
        loss = -mll(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows = next_rows(args.refresh)
        kernel.refresh(rows, inducing[rows])
        _synchronize(device)
        step_seconds.append(time.perf_counter() - began)
        losses.append(float(loss.detach()))
    model.eval()
    timed = step_seconds[1:] or step_seconds  # the first step is a warm-up
    median_step = statistics.median(timed)
    peak = _peak_memory_bytes(device)
    print(
        f"{args.steps} steps: median {median_step * 1e3:.1f} ms/step (min {min(timed) * 1e3:.1f}, "
        f"max {max(timed) * 1e3:.1f}); loss {losses[0]:.4g} -> {losses[-1]:.4g}"
    )
    print(
        f"peak {'GPU memory allocated' if device.type == 'cuda' else 'resident memory'}: {peak / 1e9:.3g} GB "
        f"({peak / cache_bytes:.2f} x the cache)"
    )

    # Checks: G, b updated incrementally must equal an exact recomputation (an O(M) pass, diagnostics only).
    drift = kernel.gram_drift()
    x_test = torch.randn(2048, args.input_dim, generator=generator, device=device)
    mean, variance = model.predict(x_test)
    pearson = pearson_per_head(mean, _outputs(ann, x_test, 2048))
    start = time.perf_counter()
    found = nearest_neighbours(model, x_test[:8], k=5)
    _synchronize(device)
    search_seconds = time.perf_counter() - start
    print(f"relative drift of the incrementally updated G from U^T U: {drift:.2e}")
    print(
        f"Pearson of GP mean with the network on {len(x_test)} held-out inputs after {args.steps} steps: "
        f"mean {float(pearson.mean()):.4f}, min {float(pearson.min()):.4f}"
    )
    print(f"exact 5-nearest-neighbour search over {m:,} rows for 8 inputs: {search_seconds:.2f} s")

    metrics = {
        "num_inducing": m,
        "heads": h,
        "embedding_dim": d,
        "embedding_dtype": args.embedding_dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cache_bytes": cache_bytes,
        "fill_seconds": fill_seconds,
        "steps": args.steps,
        "step_seconds": step_seconds,
        "median_step_seconds": median_step,
        "losses": losses,
        "peak_memory_bytes": peak,
        "peak_memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "max_resident_set_size",
        "gram_drift": drift,
        "pearson_per_head": pearson.tolist(),
        "mean_variance": float(variance.mean()),
        "neighbour_search_seconds": search_seconds,
        "neighbour_indices": found.indices.tolist(),
        "neighbour_similarities": found.similarities.tolist(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
