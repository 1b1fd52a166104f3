"""Run one ``gpex`` subcommand per seed into ``OUT/seed_<s>/`` and write the aggregate beside them.

Shared by ``pca_interpretability.py`` and ``pathways_seeds.py``: each run is a seeded CLI call
whose JSON is read back, aggregated (mean ± std over seeds) and written as ``summary.json`` and
``summary.md`` with the command that produced them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from gpex_gpytorch.cli import main as cli_main


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; an empty list is an error naming ``--seeds``."""
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds:
        raise ValueError(f"--seeds: expected comma-separated integers, got {text!r}")
    return seeds


def sweep(
    out: Path,
    seeds: list[int],
    command: Callable[[int, Path], list[str]] | None,
    result_name: str,
    aggregate: Callable[[dict[int, dict]], dict],
    render: Callable[[dict], str],
    invocation: str,
) -> int:
    """Run ``gpex *command(seed, folder)`` per seed (skipped when ``command`` is None), then aggregate."""
    started = time.perf_counter()
    runs: dict[int, dict] = {}
    for seed in seeds:
        folder = out / f"seed_{seed}"
        if command is not None:
            cli_main(command(seed, folder))
        runs[seed] = json.loads((folder / result_name).read_text())
    summary = aggregate(runs)
    summary["command"] = invocation
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(render(summary))
    print(render(summary))
    return 0
