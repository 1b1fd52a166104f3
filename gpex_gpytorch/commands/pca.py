"""``gpex pca``: principal components versus neurons of the digits CNN (completeness and grids).

Trains the digits CNN, then for its penultimate layer (after and before the ReLU) and one conv
layer: fits the PCA of the layer's activations over the training split, measures completeness 1
(explained variance of the top-k PCs versus the top-k neurons, the k for 80 % and 99 %) and
completeness 2 (test accuracy under cumulative ablation of PCs / neurons, by descending and
ascending variance), and draws image grids along the top PCs, the top neurons and random
directions, every basis sampled the same way, with each grid row scored (label purity, entropy,
monotonicity, coverage; :func:`~gpex_gpytorch.explain.principal_components.interpretability_summary`).

Writes ``DIR/pca.json`` and, per layer, ``DIR/completeness_<layer>.png`` and
``DIR/grid_<layer>_<sampling>.png`` for the samplings ``quantile``, ``top`` and ``nearest``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .arguments import integer_at_least

__all__ = ["configure", "run"]

SPATIAL_CHOICES = ("positions", "pooled", "flatten")
GRID_SAMPLINGS = ("quantile", "top", "nearest")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``gpex pca`` options to ``parser``."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--seed", type=integer_at_least(0), default=0, help="seed of the data split and the training (default 0)"
    )
    parser.add_argument("--epochs", type=integer_at_least(1), default=8, help="training epochs (default 8)")
    parser.add_argument(
        "--width", type=integer_at_least(1), default=1024, help="width of the penultimate layer (default 1024)"
    )
    parser.add_argument(
        "--conv-spatial",
        choices=SPATIAL_CHOICES,
        default="positions",
        help="conv layer: every spatial position a sample (positions), average over positions (pooled), "
        "or the whole map as one vector (flatten); default positions",
    )
    parser.add_argument(
        "--ablation-points",
        type=integer_at_least(2),
        default=25,
        help="values of k per ablation curve (log-spaced, default 25)",
    )
    parser.add_argument(
        "--grid-directions", type=integer_at_least(1), default=8, help="PCs / neurons per image grid (default 8)"
    )
    parser.add_argument(
        "--grid-points", type=integer_at_least(1), default=8, help="points along each direction (default 8)"
    )
    parser.add_argument(
        "--metric-directions",
        type=int,
        default=32,
        help="directions per basis scored for the interpretability numbers (default 32)",
    )
    parser.add_argument(
        "--top-m", type=int, default=50, help="top/bottom-scoring inputs whose label purity is measured (default 50)"
    )
    parser.add_argument(
        "--max-examples",
        type=integer_at_least(0),
        default=0,
        help="use only the first N examples of each split (0, the default: all; for quick runs)",
    )
    parser.add_argument(
        "--threads",
        type=integer_at_least(0),
        default=1,
        help="torch CPU threads for this run (default 1: on a small, shared machine more threads "
        "oversubscribe the cores and run several times slower; 0 keeps torch's setting)",
    )
    parser.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars")


def _last_conv_name(model: nn.Module) -> str:
    """The dotted name of the last ``nn.Conv*d`` module (the conv layer analysed)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.modules.conv._ConvNd)]
    if not names:
        raise ValueError("model: the digits CNN has no convolutional layer to analyse")
    return names[-1]


def _conv_post_activation(model: nn.Module, conv_name: str) -> tuple[str, str]:
    """The conv layer's post-activation site: the activation module right after it, if any."""
    from ..explain.principal_components.activation_capture import ACTIVATION_TYPES

    modules = list(model.named_modules())
    names = [name for name, _ in modules]
    index = names.index(conv_name)
    for name, module in modules[index + 1 :]:
        if isinstance(module, ACTIVATION_TYPES):
            return name, f"{name} (post-activation of {conv_name})"
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            break
    return conv_name, f"{conv_name} (conv output)"


def run(args: argparse.Namespace) -> int:
    """Train the digits CNN, analyse three layers, write ``pca.json`` and the figures. Returns 0."""
    for name in ("width", "ablation_points", "grid_directions", "grid_points", "metric_directions", "top_m"):
        if getattr(args, name) < (2 if name == "ablation_points" else 1):
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.epochs < 1:
        raise ValueError(f"--epochs: expected a positive integer, got {args.epochs}")
    if args.max_examples < 0:
        raise ValueError(f"--max-examples: expected an integer >= 0, got {args.max_examples}")
    if args.threads < 0:
        raise ValueError(f"--threads: expected an integer >= 0, got {args.threads}")
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _analyse(args)
    finally:
        torch.set_num_threads(previous_threads)


def _analyse(args: argparse.Namespace) -> int:
    from ..datasets.digits import load_digits
    from ..explain.principal_components import (
        ablation_curves,
        collect_layer_activations,
        fit_layer_pca,
        interpretability_summary,
        pc_vs_neuron_grids,
        plot_completeness,
        variance_completeness,
    )
    from ..explain.principal_components.completeness import default_ablation_ks
    from ..models.classifier_training import accuracy, fit_classifier
    from ..models.digits_cnn import DigitsCNN

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    started = time.perf_counter()

    train, test = load_digits(seed=args.seed)
    if args.max_examples:
        train, test = (TensorDataset(*(t[: args.max_examples] for t in split.tensors)) for split in (train, test))
    torch.manual_seed(args.seed)
    model = DigitsCNN(num_classes=10, width=args.width)
    fit_classifier(model, train, epochs=args.epochs, seed=args.seed, progress=progress)
    model.eval()
    trained = time.perf_counter()
    test_accuracy = float(accuracy(model, test))
    train_images = train.tensors[0]

    conv_name = _last_conv_name(model)
    conv_site, conv_label = _conv_post_activation(model, conv_name)
    analyses = [
        ("penultimate_post", "penultimate", "post", "positions", "penultimate layer, after the ReLU"),
        ("penultimate_pre", "penultimate", "pre", "positions", "penultimate layer, before the ReLU"),
        ("conv", conv_site, "post", args.conv_spatial, f"{conv_label}, {args.conv_spatial}"),
    ]
    layers: dict[str, object] = {}
    for key, layer, stage, spatial, description in analyses:
        layer_started = time.perf_counter()
        fitted = fit_layer_pca(model, layer, train, stage=stage, spatial=spatial, progress=progress)
        variance = variance_completeness(fitted, (0.8, 0.99))
        ks = default_ablation_ks(fitted.pca.num_features, args.ablation_points)
        curves = ablation_curves(model, fitted, test, ks=ks, progress=progress)
        activations = collect_layer_activations(model, layer, train, stage=stage, spatial=spatial)
        grids = {
            sampling: pc_vs_neuron_grids(
                activations,
                fitted,
                train_images,
                out / f"grid_{key}_{sampling}.png",
                num_directions=args.grid_directions,
                num_points=args.grid_points,
                sampling=sampling,
                bases=("pc", "neuron", "random"),
                seed=args.seed,
                title=f"digits CNN, {description}: training images per direction ({sampling})",
            )
            for sampling in GRID_SAMPLINGS
        }
        metric_count = min(args.metric_directions, fitted.pca.num_features)
        interpretability = {
            basis: interpretability_summary(
                activations,
                fitted,
                basis=basis,
                num_directions=metric_count,
                num_points=args.grid_points,
                top_m=min(args.top_m, len(train)),
                seed=args.seed,
            )
            for basis in ("pc", "neuron", "random")
        }
        figure = plot_completeness(
            variance,
            curves,
            out / f"completeness_{key}.png",
            title=f"digits CNN, {description}",
            baseline=test_accuracy,
        )
        dead = int((fitted.pca.neuron_variance <= 1e-12).sum())
        layers[key] = {
            "description": description,
            "layer": layer,
            "stage": stage,
            "spatial": spatial,
            "num_features": fitted.pca.num_features,
            "num_samples": fitted.pca.num_samples,
            "rows_per_input": fitted.rows_per_input,
            "zero_variance_neurons": dead,
            "total_variance": fitted.pca.total_variance,
            "k": {
                share: {"pc": variance.k_pc[float(share)], "neuron": variance.k_neuron[float(share)]}
                for share in ("0.8", "0.99")
            },
            "variance": {
                "pc_cumulative": variance.to_dict()["pc_cumulative"],
                "neuron_cumulative": variance.to_dict()["neuron_cumulative"],
            },
            "ablation": {name: curve.to_dict() for name, curve in curves.items()},
            "figures": {"completeness": str(figure.name)}
            | {f"grid_{sampling}": Path(str(grid["png"])).name for sampling, grid in grids.items()},
            "grids": grids,
            "interpretability": {
                basis: {k: v for k, v in summary.items() if k != "rows"} for basis, summary in interpretability.items()
            },
            "seconds": round(time.perf_counter() - layer_started, 2),
        }
        means = {b: summary["mean"] for b, summary in interpretability.items()}
        print(
            f"{description}: nearest-neighbour rows follow the direction (Spearman) "
            + ", ".join(f"{b} {m['nearest']['monotonicity']:+.2f}" for b, m in means.items())
            + "; top-m purity "
            + ", ".join(f"{b} {s['mean_extremes']['purity_top']:.2f}" for b, s in interpretability.items())
        )
        print(
            f"{description}: F={fitted.pca.num_features}, 80% of variance in {variance.k_pc[0.8]} PCs vs "
            f"{variance.k_neuron[0.8]} neurons, 99% in {variance.k_pc[0.99]} PCs vs {variance.k_neuron[0.99]} neurons"
        )
    summary = {
        "command": "gpex pca",
        "seed": args.seed,
        "width": args.width,
        "epochs": args.epochs,
        "max_examples": args.max_examples,
        "train_size": len(train),
        "test_size": len(test),
        "test_accuracy": test_accuracy,
        "layers": layers,
        "seconds": {
            "training": round(trained - started, 2),
            "total": round(time.perf_counter() - started, 2),
        },
        "torch_threads": torch.get_num_threads(),
    }
    (out / "pca.json").write_text(json.dumps(summary, indent=1))
    print(f"test accuracy {test_accuracy:.4f}; wrote {out / 'pca.json'} in {summary['seconds']['total']} s")
    return 0
