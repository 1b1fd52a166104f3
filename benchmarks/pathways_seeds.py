"""Neural pathways on the digits CNN over several seeds: the generator against its baselines, GEN-CNP's metrics.

For each seed, runs ``gpex pathways`` (trains the digits CNN and one pathway generator per sparsity
weight, evaluates them against random / top-k activation / gradient x activation / class-mean
gradient x activation masks at equal per-instance, per-layer sparsity, sweeps the baselines'
density, and with ``--gp-steps`` distils the classifier head into a GPEX model; see
:mod:`gpex_gpytorch.commands.pathways`) into ``OUT/seed_<s>/``, then aggregates mean ± std over
the seeds into ``OUT/summary.json`` and ``OUT/summary.md``.

Run from the repository root::

    python benchmarks/pathways_seeds.py --out docs/figures/pathways --seeds 0,1,2

About four minutes per seed on one CPU thread. ``--aggregate-only`` re-reads the per-seed JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from seed_sweep import parse_seeds, sweep

METHODS = ("generator", "class_mean_gradient_x_activation", "gradient_x_activation", "top_k_activation", "random")
OURS = ("agreement", "confidence_ratio", "kl")
PAPER = ("mIC", "mDC", "sparsity", "acIOU")
SURVIVAL = ("embedding_cosine", "neighbour_overlap", "prediction_agreement")


def _spread(values: list[float]) -> dict[str, float | list[float]]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0, "values": values}


def _cell(entry: dict[str, float], digits: int = 3) -> str:
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def aggregate(runs: dict[int, dict]) -> dict:
    """Mean ± std over seeds of every table the docs show."""
    first = next(iter(runs.values()))
    summary: dict = {
        "seeds": sorted(runs),
        "cnn_test_accuracy": _spread([r["cnn"]["test_accuracy"] for r in runs.values()]),
        "operating_points": [],
    }
    for i, point in enumerate(first["operating_points"]):
        entry: dict = {
            "sparsity_weight": point["sparsity_weight"],
            "density": _spread([r["operating_points"][i]["density"] for r in runs.values()]),
            "density_std_within_seed": _spread(
                [r["operating_points"][i]["instance_density"]["std"] for r in runs.values()]
            ),
            "methods": {},
        }
        for method in METHODS:
            values = {}
            for metric in OURS:
                values[metric] = _spread(
                    [r["operating_points"][i]["faithfulness"][method][metric] for r in runs.values()]
                )
            for metric in PAPER:
                values[metric] = _spread(
                    [r["operating_points"][i]["paper_metrics"][method][metric] for r in runs.values()]
                )
            entry["methods"][method] = values
        summary["operating_points"].append(entry)
    sweep: dict = {}
    for method, points in first["density_sweep"].items():
        sweep[method] = []
        for j, point in enumerate(points):
            row = {
                "fraction": point["fraction"],
                "density": _spread([r["density_sweep"][method][j]["density"] for r in runs.values()]),
            }
            for metric in OURS:
                row[metric] = _spread([r["density_sweep"][method][j]["faithfulness"][metric] for r in runs.values()])
            for metric in PAPER:
                row[metric] = _spread([r["density_sweep"][method][j]["paper_metrics"][metric] for r in runs.values()])
            sweep[method].append(row)
    summary["density_sweep"] = sweep
    adaptive: dict = {}
    for key in first["adaptive_fraction"]:
        entry = {"density": _spread([r["adaptive_fraction"][key]["density"]["mean"] for r in runs.values()])}
        entry["density_std_within_seed"] = _spread(
            [r["adaptive_fraction"][key]["density"]["std"] for r in runs.values()]
        )
        for metric in OURS:
            entry[metric] = _spread([r["adaptive_fraction"][key]["faithfulness"][metric] for r in runs.values()])
        for metric in PAPER:
            entry[metric] = _spread([r["adaptive_fraction"][key]["paper_metrics"][metric] for r in runs.values()])
        adaptive[key] = entry
    summary["adaptive_fraction"] = adaptive
    if all("gp_survival" in r for r in runs.values()):
        gp: dict = {"test_pearson_mean": _spread([r["gp_survival"]["test_pearson_mean"] for r in runs.values()])}
        for method in METHODS:
            gp[method] = {
                metric: _spread([r["gp_survival"]["methods"][method][metric] for r in runs.values()])
                for metric in SURVIVAL
            }
        summary["gp_survival"] = gp
    summary["class_iou"] = {
        method: {
            side: _spread([r["main"]["class_iou"][method][side] for r in runs.values()]) for side in ("intra", "inter")
        }
        for method in METHODS
    }
    return summary


def tables(summary: dict) -> str:
    """Markdown tables: every operating point, the density sweep, the adaptive search, the GP survival."""
    lines: list[str] = []
    for point in summary["operating_points"]:
        lines.append(
            f"\n**sparsity weight {point['sparsity_weight']:g}**, generator density {_cell(point['density'])} "
            f"(within-seed std over instances {_cell(point['density_std_within_seed'])})\n"
        )
        lines.append("| method | agreement | confidence ratio | KL | mIC % ↑ | mDC % ↓ | sparsity % | acIOU % |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for method, values in point["methods"].items():
            cells = [_cell(values[m]) for m in OURS] + [_cell(values[m], 1) for m in PAPER]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("\n**density sweep** (every layer keeps the top fraction of its channels)\n")
    lines.append("| ranking | fraction | density | agreement | confidence ratio | KL | mDC % |")
    lines.append("|---|---|---|---|---|---|---|")
    for method, rows in summary["density_sweep"].items():
        for row in rows:
            cells = [_cell(row["density"]), _cell(row["agreement"]), _cell(row["confidence_ratio"]), _cell(row["kl"])]
            lines.append(f"| {method} | {row['fraction']:.2f} | " + " | ".join(cells) + f" | {_cell(row['mDC'], 1)} |")
    lines.append("\n**smallest faithful fraction per instance** (search over a ranking)\n")
    lines.append(
        "| ranking @ min. confidence ratio | density | within-seed std | agreement | confidence ratio | KL | mDC % |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for key, entry in summary["adaptive_fraction"].items():
        cells = [_cell(entry[m]) for m in ("density", "density_std_within_seed", *OURS)] + [_cell(entry["mDC"], 1)]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if "gp_survival" in summary:
        gp = summary["gp_survival"]
        lines.append(
            f"\n**GP survival** (classifier-head GPEX model, test Pearson {_cell(gp['test_pearson_mean'], 4)})\n"
        )
        lines.append("| pathway | embedding cosine | top-k neighbour overlap | GP prediction kept |")
        lines.append("|---|---|---|---|")
        for method in METHODS:
            lines.append(f"| {method} | " + " | ".join(_cell(gp[method][m]) for m in SURVIVAL) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=str, default="0,1,2")
    parser.add_argument("--gp-steps", type=int, default=600)
    parser.add_argument("--extra", type=str, default="", help="extra options passed to `gpex pathways`")
    parser.add_argument("--aggregate-only", action="store_true")
    args = parser.parse_args(argv)

    def command(seed: int, folder: Path) -> list[str]:
        options = ["--seed", str(seed), "--threads", "1", "--no-progress", "--gp-steps", str(args.gp_steps)]
        return ["pathways", "--out", str(folder), *options, *args.extra.split()]

    return sweep(
        args.out,
        parse_seeds(args.seeds),
        None if args.aggregate_only else command,
        "pathways.json",
        aggregate,
        tables,
        "python benchmarks/pathways_seeds.py " + " ".join(argv or sys.argv[1:]),
    )


if __name__ == "__main__":
    raise SystemExit(main())
