"""Two studies of the inducing cache, written as JSON (and a PNG for the staleness study).

1. ``dtype``: the digits demo setting with the cache stored in float32 vs bfloat16 vs float16
   (statistics always float64): Pearson, GP accuracy, cache bytes.
2. ``staleness``: M = 100,000 synthetic inducing points, a small MLP network with 4 outputs;
   as the refresh rate (rows per step) varies: staleness of the whole cache U, Pearson on
   held-out inputs of the model as trained, and of the same network with U recomputed.

    python benchmarks/cache_studies.py dtype --out docs/figures/cache [--dtypes float16]
    python benchmarks/cache_studies.py staleness --out docs/figures/cache [--rates 16,256]

Rerunning some dtypes or rates replaces only their rows in the JSON.

3. ``drift``: the relative error of the incrementally updated ``G = UᵀU`` and ``b = Uᵀv`` over
   10⁵ refresh updates, statistics in float64 vs float32 (docs/numerics.md):

    python benchmarks/cache_studies.py drift --m 10000 --out docs/figures/drift
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from gpex_gpytorch import Distiller, faithfulness
from gpex_gpytorch.distillation import pearson_per_head
from gpex_gpytorch.explain import nearest_neighbours

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_study(steps: int, dtypes: list[str]) -> list[dict[str, object]]:
    """The digits demo setting once per storage dtype of the cache.

    :param steps: distillation steps per dtype. :param dtypes: names from :data:`DTYPES`.
    """
    from gpex_gpytorch.datasets import load_digits
    from gpex_gpytorch.models import DigitsCNN
    from gpex_gpytorch.models.classifier_training import fit_classifier

    train, test = load_digits(seed=0)
    torch.manual_seed(0)  # DigitsCNN() draws its initial weights before fit_classifier seeds anything
    ann = fit_classifier(DigitsCNN(), train, epochs=15, seed=0).eval()
    rows = []
    for dtype in (DTYPES[name] for name in dtypes):
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


def staleness_study(steps: int, m: int, rates: list[int], segments: int) -> list[dict[str, object]]:
    """Train once per refresh rate, pausing ``segments`` times (checkpoint + resume, which continues
    the run exactly) to compare the model as trained (stale cache) with the same network and a
    freshly recomputed cache: the gap is what staleness costs at that point.

    :param steps: training steps per rate. :param m: inducing points.
    :param rates: rows refreshed per step. :param segments: evaluation points per run.
    """
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 4)).eval()
    inputs = torch.randn(m, 32)
    inducing = TensorDataset(inputs)
    held_out = torch.randn(4096, 32)  # drawn like the inducing inputs, never trained on
    with torch.no_grad():
        held_out_ann = ann(held_out)
    segment = max(steps // segments, 1)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in rates:
            checkpoint = Path(tmp) / f"rate_{rate}.pt"
            distiller = Distiller(
                ann,
                embedding_dim=16,
                steps=segment,
                refresh_batch_size=rate,
                eval_every=segment,
                checkpoint_every=segment,
                checkpoint_path=checkpoint,
                progress=False,
            )
            train_seconds = 0.0
            for stop in range(segment, segments * segment + 1, segment):
                distiller.steps = stop
                distiller.fit(inducing, resume=checkpoint if stop > segment else None)
                record = distiller.history_[-1]
                train_seconds += record["seconds"]  # the clock restarts with each resumed fit
                model = distiller.model_
                fresh = copy.deepcopy(model)
                fresh.covar_module.fill(inputs, batch_size=16384, progress=False)
                cached_u, fresh_u = model.covar_module.embeddings, fresh.covar_module.embeddings
                # Explanations read U directly: top-10 inducing neighbours, stale cache vs recomputed.
                probe, heads = held_out[:256], torch.arange(256) % ann[-1].out_features
                stale_nn = nearest_neighbours(model, probe, k=10, heads=heads).indices
                fresh_nn = nearest_neighbours(fresh, probe, k=10, heads=heads).indices
                overlap = (stale_nn.unsqueeze(-1) == fresh_nn.unsqueeze(-2)).any(-1).double().mean()
                rows.append(
                    {
                        "refresh_rows_per_step": rate,
                        "step": stop,
                        "sweeps": stop * rate / m,
                        "loss": record["loss"],
                        "pearson_mixtures": record["pearson"],
                        "pearson": float(pearson_per_head(model.predict(held_out)[0], held_out_ann).mean()),
                        "pearson_fresh_cache": float(pearson_per_head(fresh.predict(held_out)[0], held_out_ann).mean()),
                        "staleness": float(
                            torch.linalg.vector_norm(cached_u - fresh_u) / torch.linalg.vector_norm(fresh_u)
                        ),
                        "staleness_sampled": record["staleness"],
                        "neighbour_overlap_at_10": float(overlap),
                        "train_seconds": train_seconds,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["dtype", "staleness", "drift"])
    parser.add_argument("--steps", type=int, default=None, help="default: 2000 (dtype), 16000 (staleness)")
    parser.add_argument(
        "--dtypes", default="float32,bfloat16,float16", help="dtype: comma-separated, of " + ", ".join(DTYPES)
    )
    parser.add_argument(
        "--rates", default="16,64,256,1024,4096", help="staleness: refreshed rows per step, comma-separated"
    )
    parser.add_argument("--segments", type=int, default=16, help="staleness: evaluation points per rate")
    parser.add_argument("--m", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/cache"))
    _add_drift_arguments(parser)
    args = parser.parse_args()
    if args.study == "drift":
        return _drift_main(args, parser)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.study == "dtype":
        dtypes = args.dtypes.split(",")
        unknown = [name for name in dtypes if name not in DTYPES]
        if unknown:
            parser.error(f"--dtypes: expected names from {', '.join(DTYPES)}, got {', '.join(unknown)}")
        rows = _merge(args.out / "dtype.json", dtype_study(args.steps or 2000, dtypes), "embedding_dtype")
    else:
        rates = [int(rate) for rate in args.rates.split(",")]
        if min(rates) < 1 or args.segments < 1:
            parser.error(f"--rates and --segments: expected integers >= 1, got {args.rates} and {args.segments}")
        rows = staleness_study(args.steps or 16_000, args.m, rates, args.segments)
        rows = _merge(args.out / "staleness.json", rows, "refresh_rows_per_step")
        _plot_staleness(rows, args.out / "staleness.png")
    (args.out / f"{args.study}.json").write_text(json.dumps(rows, indent=2) + "\n")


def _merge(path: Path, new: list[dict[str, object]], key: str) -> list[dict[str, object]]:
    """Rows of an earlier run at ``path`` whose ``key`` was not rerun, then the new rows: running
    one dtype or rate again replaces only its own rows."""
    old = json.loads(path.read_text()) if path.exists() else []
    rerun = {row[key] for row in new}
    return [row for row in old if row.get(key) not in rerun] + new


def _plot_staleness(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_p, ax_s, ax_n) = plt.subplots(1, 3, figsize=(14, 3.8))
    for rate in sorted({r["refresh_rows_per_step"] for r in rows}):
        sel = [r for r in rows if r["refresh_rows_per_step"] == rate]
        steps = [r["step"] for r in sel]
        (line,) = ax_p.plot(steps, [r["pearson"] for r in sel], "o-", label=f"{rate} rows/step")
        ax_p.plot(steps, [r["pearson_fresh_cache"] for r in sel], "--", color=line.get_color())
        ax_s.plot(steps, [r["staleness"] for r in sel], "o-", label=f"{rate} rows/step")
        ax_n.plot(steps, [r["neighbour_overlap_at_10"] for r in sel], "o-", label=f"{rate} rows/step")
    ax_p.set(xlabel="step", ylabel="mean Pearson, held-out inputs", title="as trained (—) / U recomputed (--)")
    ax_s.set(xlabel="step", ylabel="‖U_cache − f(x̃)‖ / ‖f(x̃)‖ (all M rows)", yscale="log", title="staleness")
    ax_n.set(xlabel="step", ylabel="overlap of top-10 neighbours", title="explanations: stale vs recomputed U")
    for ax in (ax_p, ax_s, ax_n):
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DRIFT_VARIANTS = {"float64": torch.float64, "float32": torch.float32, "float32+recompute": torch.float32}
"""Statistics kept in float64 (the default), in float32, and in float32 recomputed exactly on a schedule."""


def drift_study(
    m: int,
    heads: int,
    dim: int,
    refreshes: int,
    batch: int,
    records: int,
    recompute_every: int,
    seed: int,
    variants: list[str],
) -> dict[str, object]:
    """Gram drift ``‖G_cached − UᵀU‖_F / ‖UᵀU‖_F`` over a long run of incremental refreshes.

    A kernel network (MLP 32 → 128 → H·D, ReLU, with output offsets so the embeddings have a non-zero
    mean like a trained network's) takes a random-walk step on every weight before each refresh
    (per step ``10⁻³`` of the weight's RMS: after 10⁵ steps the weights have moved ≈ 30 %, as in
    training), then ``batch`` rows are refreshed, walking through the inducing set in shuffled sweeps
    as :class:`~gpex_gpytorch.Distiller` does. The same rows go to one kernel per statistics dtype;
    the reference ``UᵀU`` (and ``Uᵀv``) is recomputed in float64 from the stored rows.

    :param m: inducing points. :param heads: ``H``. :param dim: ``D``.
    :param refreshes: refresh updates (calls to ``refresh``). :param batch: rows per refresh.
    :param records: measurements, log-spaced over the run.
    :param recompute_every: refreshes between exact recomputations of the third variant.
    :param seed: seeds the network, the inputs and the walk.
    :param variants: names from :data:`DRIFT_VARIANTS` (each costs one refresh per step).
    """
    from gpex_gpytorch.kernels import CachedDeepKernel

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, heads * dim))
    with torch.no_grad():
        net[-1].bias.normal_(generator=generator)
    inputs = torch.randn(m, 32, generator=generator)
    values = torch.randn(m, heads, generator=generator)
    kernels = {name: CachedDeepKernel(net, m, heads, dim, statistics_dtype=DRIFT_VARIANTS[name]) for name in variants}
    for kernel in kernels.values():
        kernel.fill(inputs, batch_size=4096, progress=False)
        kernel.set_inducing_values(values)
    params = list(net.parameters())
    marks = sorted({int(x) for x in torch.logspace(0, math.log10(refreshes), records).round().tolist()} | {refreshes})
    series: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    order, position = torch.randperm(m, generator=generator), 0
    start = time.perf_counter()
    for step in range(1, refreshes + 1):
        with torch.no_grad():
            for p in params:
                p.add_(1e-3 * p.pow(2).mean().sqrt() * torch.randn(p.shape, generator=generator))
        if position + batch > m:
            order, position = torch.randperm(m, generator=generator), 0
        idx, position = order[position : position + batch], position + batch
        for name, kernel in kernels.items():
            kernel.refresh(idx, inputs[idx])
            if name == "float32+recompute" and step % recompute_every == 0:
                kernel.recompute_statistics()
        if step in marks:
            for name, kernel in kernels.items():
                series[name].append({"refreshes": step, **_drift(kernel)})
            print(json.dumps({"refreshes": step, **{n: s[-1]["gram_drift"] for n, s in series.items()}}), flush=True)
    seconds = time.perf_counter() - start
    u = next(iter(kernels.values())).embeddings.to(torch.float64)  # the same rows in every variant
    gram = u.mT @ u
    kappa = 1 + torch.linalg.matrix_norm(gram)  # κ̂ at noise σ² = 1 (the Distiller's default)
    return {
        "settings": {
            "m": m,
            "heads": heads,
            "dim": dim,
            "refreshes": refreshes,
            "batch": batch,
            "rows_refreshed": refreshes * batch,
            "sweeps": refreshes * batch / m,
            "variants": variants,
            "recompute_every": recompute_every,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "embeddings": {
            "rms": float(u.square().mean().sqrt()),
            "mean_abs_column_mean": float(u.mean(1).abs().mean()),
            "kappa_hat_at_noise_1": [float(k) for k in kappa],
        },
        "seconds": seconds,
        "series": series,
    }


@torch.no_grad()
def _drift(kernel: torch.nn.Module) -> dict[str, float]:
    """Relative Frobenius errors of the cached ``G`` and ``b`` against float64 recomputations (max over heads)."""
    u = kernel.embeddings.to(torch.float64)  # shape: (H, M, D)
    v = kernel.inducing_values.to(torch.float64).T  # shape: (H, M)
    gram, cross = u.mT @ u, torch.einsum("hmd,hm->hd", u, v)
    gram_err = torch.linalg.matrix_norm(kernel.gram.to(torch.float64) - gram) / torch.linalg.matrix_norm(gram)
    cross_err = torch.linalg.vector_norm(kernel.cross.to(torch.float64) - cross, dim=-1) / torch.linalg.vector_norm(
        cross, dim=-1
    )
    return {"gram_drift": float(gram_err.max()), "cross_drift": float(cross_err.max())}


def _plot_drift(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    settings = result["settings"]
    fig, (ax_g, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in series.items():
        steps = [r["refreshes"] for r in rows]
        ax_g.plot(steps, [max(r["gram_drift"], 1e-18) for r in rows], "o-", ms=3, label=f"statistics {name}")
        ax_b.plot(steps, [max(r["cross_drift"], 1e-18) for r in rows], "o-", ms=3, label=f"statistics {name}")
    steps = torch.logspace(0, math.log10(settings["refreshes"]), 50)
    for dtype, style in ((torch.float64, ":"), (torch.float32, "--")):
        eps = torch.finfo(dtype).eps
        ax_g.plot(steps, eps * steps.sqrt(), "k" + style, lw=1, label=f"√n · eps({str(dtype)[6:]})")
    title = f"M = {settings['m']:,}, H = {settings['heads']}, D = {settings['dim']}, {settings['batch']} rows/refresh"
    ax_g.set(xscale="log", yscale="log", xlabel="refresh updates n", ylabel="‖G_cached − UᵀU‖_F / ‖UᵀU‖_F")
    ax_b.set(xscale="log", yscale="log", xlabel="refresh updates n", ylabel="‖b_cached − Uᵀv‖ / ‖Uᵀv‖")
    ax_g.set_title("Gram drift: " + title, fontsize=9)
    ax_b.set_title("cross-moment drift", fontsize=9)
    for ax in (ax_g, ax_b):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _drift_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The ``drift`` study: writes ``drift.json`` and ``drift.png`` to ``--out``."""
    names = ("heads", "dim", "refreshes", "batch", "records", "recompute_every", "threads")
    options = {"m": args.m, **{name: getattr(args, f"drift_{name}") for name in names}}
    for name, value in options.items():
        if value < 1:
            flag = "--m" if name == "m" else f"--drift-{name.replace('_', '-')}"
            parser.error(f"{flag}: expected an integer >= 1, got {value}")
    if options["batch"] > args.m:
        parser.error(f"--drift-batch: expected at most --m = {args.m} rows, got {options['batch']}")
    torch.set_num_threads(options.pop("threads"))
    args.out.mkdir(parents=True, exist_ok=True)
    variants = args.drift_variants.split(",")
    unknown = [name for name in variants if name not in DRIFT_VARIANTS]
    if unknown or not variants:
        parser.error(f"--drift-variants: expected names from {', '.join(DRIFT_VARIANTS)}, got {args.drift_variants}")
    result = drift_study(seed=args.drift_seed, variants=variants, **options)
    (args.out / "drift.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot_drift(result, args.out / "drift.png")


def _add_drift_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("drift (also uses --m and --out)")
    group.add_argument("--drift-heads", type=int, default=2, help="drift: H")
    group.add_argument("--drift-dim", type=int, default=64, help="drift: D")
    group.add_argument("--drift-refreshes", type=int, default=100_000, help="drift: refresh updates")
    group.add_argument("--drift-batch", type=int, default=64, help="drift: rows per refresh")
    group.add_argument("--drift-records", type=int, default=60, help="drift: measurements, log-spaced")
    group.add_argument("--drift-recompute-every", type=int, default=10_000, help="drift: recompute period")
    group.add_argument("--drift-seed", type=int, default=0, help="drift: seed")
    group.add_argument(
        "--drift-variants", default="float64,float32", help="drift: comma-separated, of " + ", ".join(DRIFT_VARIANTS)
    )
    group.add_argument("--drift-threads", type=int, default=1, help="drift: torch threads")


if __name__ == "__main__":
    main()
