"""pytest-benchmark: one GPEX training step at growing M (flat by construction).

pytest benchmarks/bench_training_step.py --benchmark-only
"""

from __future__ import annotations

import pytest
from step_time_vs_m import build_step


@pytest.mark.parametrize("m", [1_000, 100_000, 1_000_000])
def test_training_step(benchmark, m: int) -> None:
    step = build_step(m)
    step()
    benchmark.pedantic(step, rounds=10, iterations=1)
