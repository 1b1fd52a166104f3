"""The initial sweep of the cache against the network's own inference, and the peak memory of a run at M.

``CachedDeepKernel.fill`` (in place, ``staged=False``, as the Distiller runs it) against a plain
no-grad forward of the same kernel network over the same inputs in the same batches, alternated
``--repeats`` times in one process (one thread); then 30 training steps. Prints one JSON line
with the fill / inference ratio, the exact float64 statistics alone (also alternated) / inference,
the cache size and the process's peak resident memory, and the
runtime's baseline measured before anything M-sized is allocated (issue #19: peak <= cache + 15 %
+ baseline).

    python benchmarks/fill_throughput.py --m 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from step_overhead import DIM, HEADS, INPUT, _network

from gpex_gpytorch import ANNMatchingELBO, CachedDeepKernel, GPEXModel


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=16_384)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = _network(0, torch.device("cpu"))
    with torch.no_grad():
        net(torch.zeros(2, INPUT))  # the runtime's own allocations, before anything M-sized
    baseline = _rss_bytes()
    inputs = torch.randn(args.m, INPUT, generator=torch.Generator().manual_seed(0))
    kernel = CachedDeepKernel(net, args.m, HEADS, DIM)
    fill_s, inference_s, statistics_s = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            for batch in inputs.split(args.batch_size):
                net(batch)
        inference_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        kernel.fill(inputs, batch_size=args.batch_size, progress=False, staged=False)
        fill_s.append(time.perf_counter() - start)
        # The exact float64 statistics alone (part of every fill): H·D²·M multiply-adds in float64.
        start = time.perf_counter()
        kernel.recompute_statistics()
        statistics_s.append(time.perf_counter() - start)
    model = GPEXModel(kernel, torch.randn(args.m, HEADS))
    mll = ANNMatchingELBO(None, model, num_data=args.m, detach_variance=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(30):
        fresh = torch.randint(args.m, (256,), generator=generator).unique()
        output = model(torch.randn(256, INPUT), fresh_indices=fresh, fresh_inputs=inputs[fresh])
        loss = -mll(output, torch.randn(256, HEADS))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows = torch.randint(args.m, (256,), generator=generator).unique()
        kernel.refresh(rows, inputs[rows])
    cache = kernel.embeddings.numel() * kernel.embeddings.element_size()
    peak = _rss_bytes()
    result = {
        "m": args.m,
        "fill_s": statistics.median(fill_s),
        "inference_s": statistics.median(inference_s),
        "fill_over_inference": statistics.median(fill_s) / statistics.median(inference_s),
        "statistics_s": statistics.median(statistics_s),
        # fill / inference cannot go below 1 + this with float64 statistics
        "statistics_over_inference": statistics.median(statistics_s) / statistics.median(inference_s),
        "cache_bytes": cache,
        "inputs_bytes": inputs.numel() * inputs.element_size(),
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "peak_over_cache_plus_baseline": (peak - baseline) / cache,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
