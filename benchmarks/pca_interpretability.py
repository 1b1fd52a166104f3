"""PCs versus neurons versus random directions on the digits CNN, over several seeds.

For each seed, runs ``gpex pca`` (trains the digits CNN, analyses three layers; see
:mod:`gpex_gpytorch.commands.pca`) into ``OUT/seed_<s>/``, then aggregates the completeness and
interpretability numbers as mean ± std over the seeds into ``OUT/summary.json`` and a Markdown
table ``OUT/summary.md``.

Run from the repository root::

    python benchmarks/pca_interpretability.py --out docs/figures/principal_components --seeds 0,1,2

About a minute per seed on one CPU thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from seed_sweep import parse_seeds, sweep

LAYERS = ("penultimate_post", "penultimate_pre", "conv")
BASES = ("pc", "neuron", "random")
#: (sampling, metric) pairs reported in the table.
ROW_METRICS = (("nearest", "monotonicity"), ("nearest", "coverage"), ("nearest", "purity"), ("top", "purity"))
EXTREME_METRICS = ("purity_top", "purity_bottom", "entropy_top")


def _spread(values: list[float]) -> dict[str, float | list[float]]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0, "values": values}


def aggregate(runs: dict[int, dict]) -> dict:
    """Mean ± std over seeds of the per-layer, per-basis numbers of several ``pca.json`` files."""
    summary: dict = {"seeds": sorted(runs), "test_accuracy": _spread([r["test_accuracy"] for r in runs.values()])}
    layers: dict = {}
    for layer in LAYERS:
        entry: dict = {
            "k80": {b: _spread([r["layers"][layer]["k"]["0.8"][b] for r in runs.values()]) for b in ("pc", "neuron")},
            "k99": {b: _spread([r["layers"][layer]["k"]["0.99"][b] for r in runs.values()]) for b in ("pc", "neuron")},
        }
        for basis in BASES:
            per_basis: dict = {}
            for sampling, metric in ROW_METRICS:
                values = [
                    r["layers"][layer]["interpretability"][basis]["mean"][sampling][metric] for r in runs.values()
                ]
                per_basis[f"{sampling}_{metric}"] = _spread(values)
            for metric in EXTREME_METRICS:
                values = [r["layers"][layer]["interpretability"][basis]["mean_extremes"][metric] for r in runs.values()]
                per_basis[metric] = _spread(values)
            entry[basis] = per_basis
        layers[layer] = entry
    summary["layers"] = layers
    return summary


def table(summary: dict) -> str:
    """A Markdown table of the interpretability numbers (mean ± std over seeds)."""
    columns = [f"{s} {m}" for s, m in ROW_METRICS] + [m.replace("_", " ") for m in EXTREME_METRICS]
    keys = [f"{s}_{m}" for s, m in ROW_METRICS] + list(EXTREME_METRICS)
    lines = ["| layer | basis | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for layer, entry in summary["layers"].items():
        for basis in BASES:
            cells = [f"{entry[basis][k]['mean']:.2f} ± {entry[basis][k]['std']:.2f}" for k in keys]
            lines.append(f"| {layer} | {basis} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=str, default="0,1,2")
    parser.add_argument("--extra", type=str, default="", help="extra options passed to `gpex pca`, space-separated")
    args = parser.parse_args(argv)
    return sweep(
        args.out,
        parse_seeds(args.seeds),
        lambda seed, folder: ["pca", "--out", str(folder), "--seed", str(seed), "--no-progress", *args.extra.split()],
        "pca.json",
        aggregate,
        table,
        "python benchmarks/pca_interpretability.py " + " ".join(argv or sys.argv[1:]),
    )


if __name__ == "__main__":
    raise SystemExit(main())
