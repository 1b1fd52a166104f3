"""Which similarity should rank a GP's nearest training instances? Measured against simple baselines.

For each setting the network is trained, distilled with the Distiller's defaults (which end with a
full cache refresh), and every test instance is explained by its ``k`` nearest training instances
in the kernel space of the head the network predicts, under each metric of
:mod:`gpex_gpytorch.explain.kernel_similarity`, next to three baselines that need no GP:

* kNN on the network's own penultimate features (cosine), the strongest simple baseline;
* kNN in input space (Euclidean);
* random training instances.

Scores (per query, averaged):

* ``label_agreement``: fraction of the ``k`` neighbours whose training label is the network's
  predicted class for the query (do the examples shown support the decision being explained?);
* ``vote_fidelity``: the majority label of the ``k`` neighbours equals the network's prediction;
* ``input_distance_ratio``: mean input-space distance from the query to its top-1 neighbour, over
  the same for input-space kNN (1 = as close as possible in input space);
* hubness: distinct top-1 neighbours / queries, the largest share of queries with one top-1
  neighbour, and the largest k-occurrence / queries.

Run::

    .venv/bin/python benchmarks/neighbour_quality.py --out docs/figures/neighbour_quality           # full
    .venv/bin/python benchmarks/neighbour_quality.py --quick --out /tmp/nq                          # smoke

Writes ``neighbour_quality.json`` and ``neighbour_quality.md`` (the table of the docs) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.distillation import Distiller
from gpex_gpytorch.explain import SIMILARITY_METRICS, check_cache_fresh, hubness, nearest_neighbours
from gpex_gpytorch.models import DigitsCNN
from gpex_gpytorch.models.classifier_training import fit_classifier

K = 10
BASELINES = ("kNN on network features (cosine)", "kNN on inputs (Euclidean)", "random")


def _breast_cancer(seed: int) -> tuple[TensorDataset, TensorDataset, nn.Module, dict]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-12
    train = TensorDataset(torch.tensor((x_train - mu) / sd, dtype=torch.float32), torch.tensor(y_train))
    test = TensorDataset(torch.tensor((x_test - mu) / sd, dtype=torch.float32), torch.tensor(y_test))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ann = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2))
    ann = fit_classifier(ann, train, epochs=50, batch_size=32, seed=seed)
    return train, test, ann, {}


def _digits_cnn(seed: int) -> tuple[TensorDataset, TensorDataset, nn.Module, dict]:
    from gpex_gpytorch.commands.demo import DEMO_SETTINGS

    train, test = load_digits(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ann = DigitsCNN(num_classes=10, width=1024)
    ann = fit_classifier(ann, train, epochs=10, batch_size=32, seed=seed)
    return train, test, ann, dict(DEMO_SETTINGS)


SETTINGS: dict[str, Callable[[int], tuple[TensorDataset, TensorDataset, nn.Module, dict]]] = {
    "breast cancer MLP (30-64-2)": _breast_cancer,
    "digits CNN (the demo)": _digits_cnn,
}


def penultimate_features(ann: nn.Module, x: Tensor) -> Tensor:
    """The input of the network's last ``nn.Linear`` (its penultimate features), by a forward hook."""
    last = [m for m in ann.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[Tensor] = []
    handle = last.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            ann(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def scores_of(indices: Tensor, predicted: Tensor, train_labels: Tensor, dist_top1: Tensor, dist_best: Tensor) -> dict:
    labels = train_labels[indices]  # shape: (N, k)
    votes = torch.stack([torch.bincount(row, minlength=int(train_labels.max()) + 1) for row in labels])
    stats = hubness(indices)
    return {
        "label_agreement": float((labels == predicted[:, None]).float().mean()),
        "vote_fidelity": float((votes.argmax(1) == predicted).float().mean()),
        "input_distance_ratio": float(dist_top1.mean() / dist_best.mean()),
        "distinct_top1_per_query": stats.distinct_top1 / stats.num_queries,
        "max_top1_share": stats.max_top1_share,
        "max_k_occurrence_share": stats.max_occurrence / stats.num_queries,
        "distinct_in_lists": stats.distinct,
    }


def run_setting(name: str, seed: int, steps: int | None) -> dict:
    torch.manual_seed(seed)
    train, test, ann, settings = SETTINGS[name](seed)
    ann.eval()
    if steps is not None:
        settings["steps"] = steps
    start = time.perf_counter()
    # Fitted without the final refresh, which is then run by hand to measure what it changes.
    distiller = Distiller(ann, seed=seed, progress=False, final_refresh=False, **settings).fit(train)
    model = distiller.model_
    fit_seconds = time.perf_counter() - start
    x_train, y_train = train.tensors[0], train.tensors[1]
    x_test = test.tensors[0]
    with torch.no_grad():
        predicted = ann(x_test).argmax(1)
    stale = {
        metric: nearest_neighbours(model, x_test, k=K, heads=predicted, metric=metric, hub_warning=None).indices
        for metric in ("correlation", "kernel")
    }
    staleness = check_cache_fresh(model, x_train, sample_size=4096, tolerance=float("inf"))
    refresh_start = time.perf_counter()
    model.covar_module.fill(x_train, progress=False)  # what Distiller(final_refresh=True) does
    refresh = {"seconds": time.perf_counter() - refresh_start, "staleness": staleness}
    flat_train, flat_test = x_train.flatten(1), x_test.flatten(1)
    input_dist = torch.cdist(flat_test.double(), flat_train.double())  # shape: (N, M)
    best = input_dist.min(1).values

    def record(indices: Tensor) -> dict:
        return scores_of(indices, predicted, y_train, input_dist.gather(1, indices[:, :1])[:, 0], best)

    results: dict[str, dict] = {}
    fresh_overlap = {}
    for metric in SIMILARITY_METRICS:
        found = nearest_neighbours(model, x_test, k=K, heads=predicted, metric=metric, hub_warning=None)
        results[f"GP: {metric}"] = record(found.indices)
        if metric in stale:  # fraction of the stale cache's top-k that survive the refresh
            same = (stale[metric][:, :, None] == found.indices[:, None, :]).any(2).float().mean()
            fresh_overlap[metric] = float(same)
    features_train = F.normalize(penultimate_features(ann, x_train), dim=1)
    features_test = F.normalize(penultimate_features(ann, x_test), dim=1)
    results[BASELINES[0]] = record((features_test @ features_train.T).topk(K, dim=1).indices)
    results[BASELINES[1]] = record((-input_dist).topk(K, dim=1).indices)
    generator = torch.Generator().manual_seed(seed)
    results[BASELINES[2]] = record(torch.stack([torch.randperm(len(x_train), generator=generator)[:K] for _ in x_test]))
    return {
        "setting": name,
        "seed": seed,
        "num_train": len(x_train),
        "num_test": len(x_test),
        "distill_seconds": fit_seconds,
        "final_refresh": refresh,
        "top10_overlap_stale_vs_fresh": fresh_overlap,
        "methods": results,
    }


def summarise(runs: list[dict]) -> dict:
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for run in runs:
        for method, scores in run["methods"].items():
            for key, value in scores.items():
                table.setdefault(run["setting"], {}).setdefault(method, {}).setdefault(key, []).append(value)
    return {
        setting: {
            method: {
                key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for key, v in scores.items()
            }
            for method, scores in methods.items()
        }
        for setting, methods in table.items()
    }


def markdown(summary: dict) -> str:
    columns = [
        ("label_agreement", "label agreement@10"),
        ("vote_fidelity", "vote = decision"),
        ("input_distance_ratio", "input dist. ratio"),
        ("distinct_top1_per_query", "distinct top-1 / queries"),
        ("max_top1_share", "max top-1 share"),
        ("max_k_occurrence_share", "max k-occurrence / queries"),
    ]
    lines = []
    for setting, methods in summary.items():
        n = next(iter(methods.values()))["label_agreement"]["n"]
        lines += [f"**{setting}** (mean ± std over {n} seeds)", ""]
        lines.append("| method | " + " | ".join(title for _, title in columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for method, scores in methods.items():
            cells = [f"{scores[key]['mean']:.3f} ± {scores[key]['std']:.3f}" for key, _ in columns]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("neighbour_quality_out"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=None, help="distillation steps (default: each setting's)")
    parser.add_argument("--quick", action="store_true", help="one seed, breast cancer only, 300 steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.settings, args.steps = [0], [next(iter(SETTINGS))], 300
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for setting in args.settings:
        for seed in args.seeds:
            runs.append(run_setting(setting, seed, args.steps))
            print(f"{setting}, seed {seed}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    summary = summarise(runs)
    result = {
        "command": "benchmarks/neighbour_quality.py " + " ".join(argv if argv is not None else []),
        "k": K,
        "seeds": args.seeds,
        "steps": args.steps,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
        "seconds": time.perf_counter() - start,
        "summary": summary,
        "runs": runs,
    }
    (args.out / "neighbour_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(summary)
    (args.out / "neighbour_quality.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
