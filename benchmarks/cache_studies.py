"""Two studies of the inducing cache, written as JSON (and a PNG for the staleness study).

1. ``dtype``: the digits demo setting with the cache stored in float32 vs bfloat16 vs float16
   (statistics always float64): Pearson, GP accuracy, cache bytes.
2. ``staleness``: M = 100,000 synthetic inducing points, a small MLP network with 4 outputs;
   Pearson on held-out inputs and staleness of U as the refresh rate (rows per step) varies.

    python benchmarks/cache_studies.py dtype --out docs/figures/cache
    python benchmarks/cache_studies.py staleness --out docs/figures/cache
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from gpex_gpytorch import Distiller, faithfulness


def dtype_study(steps: int) -> list[dict[str, object]]:
    from gpex_gpytorch.datasets import load_digits
    from gpex_gpytorch.models import DigitsCNN
    from gpex_gpytorch.models.classifier_training import fit_classifier

    train, test = load_digits(seed=0)
    ann = fit_classifier(DigitsCNN(), train, epochs=15, seed=0).eval()
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        start = time.perf_counter()
        model = Distiller(ann, steps=steps, embedding_dtype=dtype, progress=False).fit(train).model_
        report = faithfulness(model, ann, test)
        rows.append(
            {
                "embedding_dtype": str(dtype),
                "pearson_mean": report.pearson_mean,
                "pearson_min": report.pearson_min,
                "ann_accuracy": report.ann_accuracy,
                "gp_accuracy": report.gp_accuracy,
                "cache_bytes": model.covar_module.embeddings.numel() * model.covar_module.embeddings.element_size(),
                "seconds": time.perf_counter() - start,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def staleness_study(steps: int, m: int) -> list[dict[str, object]]:
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 4)).eval()
    inducing = TensorDataset(torch.randn(m, 32))
    rows = []
    for rate in (16, 128, 1024):
        distiller = Distiller(
            ann, embedding_dim=16, steps=steps, refresh_batch_size=rate, eval_every=max(steps // 5, 1), progress=False
        ).fit(inducing)
        for record in distiller.history_:
            if "pearson" in record:
                rows.append({"refresh_rows_per_step": rate, **record})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["dtype", "staleness"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--m", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/cache"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.study == "dtype":
        rows = dtype_study(args.steps)
    else:
        rows = staleness_study(args.steps, args.m)
        _plot_staleness(rows, args.out / "staleness.png")
    (args.out / f"{args.study}.json").write_text(json.dumps(rows, indent=2) + "\n")


def _plot_staleness(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_p, ax_s) = plt.subplots(1, 2, figsize=(9, 3.5))
    for rate in sorted({r["refresh_rows_per_step"] for r in rows}):
        sel = [r for r in rows if r["refresh_rows_per_step"] == rate]
        ax_p.plot([r["step"] for r in sel], [r["pearson"] for r in sel], "o-", label=f"{rate} rows/step")
        ax_s.plot([r["step"] for r in sel], [r["staleness"] for r in sel], "o-", label=f"{rate} rows/step")
    ax_p.set(xlabel="step", ylabel="mean Pearson (held-out mixtures)")
    ax_s.set(xlabel="step", ylabel="staleness ‖U_cache − f(x̃)‖/‖f(x̃)‖", yscale="log")
    for ax in (ax_p, ax_s):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
