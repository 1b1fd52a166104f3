"""Peak memory of an exact neighbour search: bounded by the query batch × chunk, not by N × M.

Each configuration runs in a fresh process (``ru_maxrss`` is a per-process high-water mark); the
baseline process builds the same model and embeds the queries but searches nothing, so the
difference is the search's own peak.

Run::

    .venv/bin/python benchmarks/neighbour_memory.py --out docs/figures/neighbour_quality
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "no search (baseline)": None,
    "one query batch of N, chunks of 65,536 (the earlier default)": {"chunk_size": 65536, "query_batch_size": 4000},
    "defaults: query batches of 1,024, chunks of 16,384": {},
}


def child(config: str) -> None:
    import torch
    from torch import nn

    from gpex_gpytorch.explain import nearest_neighbours
    from gpex_gpytorch.kernels import CachedDeepKernel
    from gpex_gpytorch.models.gpex_model import GPEXModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m, n, h, d = 70_000, 4_000, 10, 20
    kernel = CachedDeepKernel(nn.Linear(64, h * d), m, h, d)
    kernel.fill(torch.randn(m, 64), batch_size=8192, progress=False)
    model = GPEXModel(kernel, torch.randn(m, h))
    x = torch.randn(n, 64)
    model.predict(x[:10])
    options = CONFIGS[config]
    start = time.perf_counter()
    if options is not None:
        nearest_neighbours(model, x, k=10, hub_warning=None, **options)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"config": config, "peak_rss_bytes": peak, "seconds": seconds}))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("neighbour_memory_out"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child)
        return 0
    rows = []
    for config in CONFIGS:
        done = subprocess.run([sys.executable, __file__, "--child", config], check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    base = rows[0]["peak_rss_bytes"]
    for row in rows:
        row["search_peak_bytes"] = row["peak_rss_bytes"] - base
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": "benchmarks/neighbour_memory.py", "N": 4000, "M": 70000, "H": 10, "D": 20, "rows": rows}
    (args.out / "neighbour_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['config']}: peak {row['peak_rss_bytes'] / 2**30:.2f} GiB, "
            f"search {row['search_peak_bytes'] / 2**30:.2f} GiB, {row['seconds']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
