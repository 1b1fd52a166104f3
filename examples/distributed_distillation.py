"""Distil a digits classifier into GPs on several processes, the inducing cache sharded across them.

Each process (rank) holds ``M/P`` rows of the inducing cache; the statistics ``G = UᵀU`` and
``b = UᵀV`` are summed across ranks with one all-reduce per update, whose size does not depend
on ``M``; the kernel network trains under DistributedDataParallel. gloo on CPU, NCCL on GPUs.

Run::

    torchrun --nproc_per_node=2 examples/distributed_distillation.py --quick
    torchrun --nproc_per_node=2 examples/distributed_distillation.py --steps 600 --out dist_out
    torchrun --nproc_per_node=1 examples/distributed_distillation.py --quick   # the same run, one rank

The result does not depend on the number of processes (the same global batches are drawn on
every rank); rank 0 prints the faithfulness, the bytes each rank communicated per step, and the
step time, and with ``--out`` writes them to ``summary.json`` next to a sharded checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.distillation import pearson_per_head
from gpex_gpytorch.distributed import DistributedDistiller, destroy_distributed, init_distributed


def _classifier(train: TensorDataset, steps: int, device: torch.device) -> nn.Module:
    """A small MLP, trained identically on every rank (same seed, deterministic on CPU)."""
    torch.manual_seed(0)
    x, y = (t.to(device) for t in train.tensors)
    x = x.flatten(1)
    ann = nn.Sequential(nn.Flatten(), nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    optimizer = torch.optim.Adam(ann.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (128,), generator=generator).to(device)
        optimizer.zero_grad()
        nn.functional.cross_entropy(ann(x[idx]), y[idx]).backward()
        optimizer.step()
    if dist.is_initialized():
        # Bit-identical ANNs are not guaranteed across GPUs: use rank 0's.
        for parameter in ann.parameters():
            dist.broadcast(parameter.data, src=0)
    return ann.eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke test: a few steps")
    parser.add_argument("--steps", type=int, default=None, help="default 600 (20 with --quick)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (a multiple of the world size)")
    parser.add_argument("--embedding-dim", type=int, default=20)
    parser.add_argument("--inducing-copies", type=int, default=1, help="M = copies x the training set (scale test)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a collective may wait for a peer")
    parser.add_argument("--out", type=Path, default=None, help="folder for the sharded checkpoint and summary")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (20 if args.quick else 600)

    device = init_distributed(timeout_s=args.timeout)
    torch.set_num_threads(max(1, torch.get_num_threads() // dist.get_world_size()))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        train, test = load_digits()
        ann = _classifier(train, 50 if args.quick else 300, device)
        distiller = DistributedDistiller(
            ann,
            embedding_dim=args.embedding_dim,
            steps=steps,
            batch_size=args.batch_size,
            inducing_batch_size=64,
            lr=2e-3,
            eval_every=max(1, steps // 4),
            checkpoint_every=steps if args.out else None,
            checkpoint_path=None if args.out is None else args.out / "checkpoint",
            device=device,
            progress=rank == 0,
        )
        start = time.perf_counter()
        inducing = TensorDataset(train.tensors[0].repeat(args.inducing_copies, *([1] * (train.tensors[0].dim() - 1))))
        distiller.fit(train, inducing)
        seconds = time.perf_counter() - start
        x_test = test.tensors[0].to(device)
        mean, _ = distiller.model_.predict(x_test)
        with torch.no_grad():
            target = ann(x_test)
        gp_accuracy = float((mean.argmax(1).cpu() == test.tensors[1]).float().mean())
        agreement = float((mean.argmax(1) == target.argmax(1)).float().mean())
        # Pooled over heads, the correlation also rewards getting each head's offset right; per head is the
        # faithfulness measure the other examples report.
        pearson = float(torch.corrcoef(torch.stack([mean.flatten(), target.flatten()]))[0, 1])
        per_head = pearson_per_head(mean.cpu(), target.cpu())
        steady = distiller.history_[len(distiller.history_) // 2 :]
        step_times = [h["step_seconds"] for h in steady]
        kernel = distiller.model_.covar_module
        summary = {
            "world_size": world,
            "backend": dist.get_backend(),
            "num_inducing": kernel.num_inducing,
            "rows_per_rank": kernel.num_local_inducing,
            "heads": kernel.num_heads,
            "embedding_dim": kernel.embedding_dim,
            "steps": steps,
            "fit_seconds": seconds,
            "median_step_seconds": sorted(step_times)[len(step_times) // 2],
            "steps_per_second": 1 / sorted(step_times)[len(step_times) // 2],
            "pearson_all_heads": pearson,
            "pearson_per_head": per_head.tolist(),
            "pearson_mean": float(per_head.nanmean()),
            "pearson_min": float(per_head[~per_head.isnan()].min()),
            "gp_test_accuracy": gp_accuracy,
            "ann_test_accuracy": float((target.argmax(1).cpu() == test.tensors[1]).float().mean()),
            "gp_ann_agreement": agreement,
            "median_bytes_sent_per_step": sorted(h["bytes_sent"] for h in steady)[len(steady) // 2],
            # Totals over the run, divided by the steps (includes the initial fill and the evaluations).
            "bytes_per_step": {k: m.bytes / steps for k, m in distiller.communication_.items()},
            "calls_per_step": {k: m.calls / steps for k, m in distiller.communication_.items()},
        }
        if rank == 0:
            print(json.dumps(summary, indent=1))
            if args.out is not None:
                (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
