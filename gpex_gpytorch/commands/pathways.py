"""``gpex pathways``: neural pathways (GEN-CNP-style) of the digits CNN, against baselines.

Trains the digits CNN, then a pathway generator over its three conv layers and its penultimate
layer, for each of several sparsity weights (the first listed weight is the main operating
point). On the test split it measures, for the generator and for random / top-k activation /
gradient x activation / class-mean gradient x activation masks (the class's mean score over the
training split, looked up by the predicted class) with the *same number of kept channels per
instance and layer*: the GEN-CNP paper's metrics (mIC, mDC, sparsity, acIOU) and
faithfulness (agreement, confidence ratio, KL, accuracy), insertion/deletion curves of the channel
rankings, per-layer sparsity, intra- vs inter-class mask IoU, transfer of class pathways learnt on
the training split, and the Spearman correlation between pathway IoU and kernel similarity in an
embedding space (the CNN's penultimate features and raw pixels). It also sweeps the density of
the gradient-based baselines (faithfulness at fixed keep fractions, for sparsity-at-equal-
faithfulness comparisons), searches the smallest faithful fraction of the class-mean ranking per
instance, and, with ``--gp-steps N``, distils a GPEX model of the CNN's classifier head and
measures how much of its view of each input survives each pathway
(:func:`~gpex_gpytorch.explain.pathways.pathway_kernel_survival`).

Writes ``DIR/pathways.json`` and the figures ``DIR/class_masks.png`` (per-class mean masks),
``DIR/layer_sparsity.png`` (per-layer sparsity and per-instance density) and
``DIR/baselines.png`` (faithfulness versus density, insertion and deletion curves).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .arguments import integer_at_least

__all__ = ["configure", "run"]

MASK_LAYERS = ("features.0", "features.2", "features.5", "penultimate.1")
CURVE_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
SWEEP_FRACTIONS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
SWEPT_METHODS = ("class_mean_gradient_x_activation", "gradient_x_activation", "top_k_activation")
GP_SUBMODULE = "classifier"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``gpex pathways`` options to ``parser``."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--seed", type=integer_at_least(0), default=0, help="seed of the split, the CNN and the generator (default 0)"
    )
    parser.add_argument(
        "--width", type=integer_at_least(1), default=1024, help="width of the CNN's penultimate layer (default 1024)"
    )
    parser.add_argument(
        "--cnn-epochs", type=integer_at_least(1), default=15, help="training epochs of the CNN (default 15)"
    )
    parser.add_argument(
        "--epochs", type=integer_at_least(1), default=30, help="training epochs of each generator (default 30)"
    )
    parser.add_argument(
        "--sparsity-weights",
        type=str,
        default="10,3,30",
        help="comma-separated sparsity weights, one generator each; the first is the main operating point "
        "(default 10,3,30)",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also train, at the main sparsity weight, the generator without the faithfulness gate, without the "
        "class-relevance term, with the prototype term, without class conditioning and with soft masks only",
    )
    parser.add_argument(
        "--permutations", type=integer_at_least(0), default=199, help="Mantel permutations (default 199)"
    )
    parser.add_argument(
        "--gp-steps",
        type=integer_at_least(0),
        default=0,
        help="distil a GPEX model of the classifier head for this many steps and measure how much of its "
        "explanation survives each pathway (default 0: skip)",
    )
    parser.add_argument(
        "--gp-neighbours", type=integer_at_least(1), default=10, help="kernel neighbours compared (default 10)"
    )
    parser.add_argument(
        "--threads",
        type=integer_at_least(0),
        default=0,
        help="torch intra-op threads for this run (default 0: leave torch's setting)",
    )
    parser.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars")


def _parse_weights(text: str) -> list[float]:
    try:
        weights = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"--sparsity-weights: expected comma-separated numbers, got {text!r}") from error
    if not weights or any(not w >= 0 for w in weights):
        raise ValueError(f"--sparsity-weights: expected one or more values >= 0, got {text!r}")
    return weights


def _check_args(args: argparse.Namespace) -> list[float]:
    for name in ("width", "cnn_epochs", "epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.permutations < 0:
        raise ValueError(f"--permutations: expected >= 0, got {args.permutations}")
    if args.gp_steps < 0:
        raise ValueError(f"--gp-steps: expected >= 0, got {args.gp_steps}")
    if args.gp_neighbours < 1:
        raise ValueError(f"--gp-neighbours: expected a positive integer, got {args.gp_neighbours}")
    if args.threads < 0:
        raise ValueError(f"--threads: expected >= 0, got {args.threads}")
    return _parse_weights(args.sparsity_weights)


def run(args: argparse.Namespace) -> int:
    """Run the pathway study and write ``pathways.json`` and the figures. Returns 0."""
    weights = _check_args(args)
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _study(args, weights)
    finally:
        torch.set_num_threads(previous_threads)
    return 0


def _study(args: argparse.Namespace, weights: list[float]) -> None:
    from ..datasets.digits import load_digits
    from ..explain import pathways as pw
    from ..explain.pathways.objectives import mask_density
    from ..models.classifier_training import accuracy, fit_classifier
    from ..models.digits_cnn import DigitsCNN

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    timings: dict[str, float] = {}
    started = time.perf_counter()

    train, test = load_digits(seed=args.seed)
    torch.manual_seed(args.seed)
    model = DigitsCNN(num_classes=10, width=args.width)
    fit_classifier(model, train, epochs=args.cnn_epochs, seed=args.seed, progress=progress)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    timings["cnn_training_s"] = time.perf_counter() - started
    x_train, x_test, y_test = train.tensors[0], test.tensors[0], test.tensors[1]
    with torch.no_grad():
        full_test = model(x_test)
        predicted_test = full_test.argmax(1)
        predicted_train = model(x_train).argmax(1)
    layers = list(MASK_LAYERS)
    channels = pw.layer_channels(model, layers)

    # --- generators, one per sparsity weight ---------------------------------------------------
    runs: list[dict[str, Any]] = []
    explainers: list[pw.PathwayExplainer] = []
    for weight in weights:
        config = pw.PathwayTrainingConfig(
            epochs=args.epochs,
            seed=args.seed,
            progress=progress,
            objective=pw.PathwayObjective(sparsity_weight=weight),
        )
        t0 = time.perf_counter()
        explainer, history = pw.train_pathway_explainer(model, layers, train, config)
        seconds = time.perf_counter() - t0
        explainers.append(explainer)
        runs.append({"sparsity_weight": weight, "training_s": seconds, "history": history})
    timings["generator_training_s"] = sum(r["training_s"] for r in runs)

    # --- baselines' channel scores (fixed across operating points) -------------------------------
    t0 = time.perf_counter()
    scores_train = {
        "top_k_activation": pw.activation_scores(model, x_train, layers),
        "gradient_x_activation": pw.gradient_x_activation_scores(model, x_train, layers),
    }
    # class-mean gradient x activation: computed once per class on the training split, then looked
    # up by the predicted class (no backward pass at test time)
    class_table = pw.class_mean_scores(scores_train["gradient_x_activation"], predicted_train, 10)
    scores_train["class_mean_gradient_x_activation"] = pw.class_scores_for(class_table, predicted_train)
    scores = {
        "random": pw.random_channel_scores(channels, len(x_test), seed=args.seed),
        "top_k_activation": pw.activation_scores(model, x_test, layers),
        "gradient_x_activation": pw.gradient_x_activation_scores(model, x_test, layers),
        "class_mean_gradient_x_activation": pw.class_scores_for(class_table, predicted_test),
    }

    # --- faithfulness vs density: every generator against matched baselines --------------------
    for entry, explainer in zip(runs, explainers, strict=True):
        masks = explainer.masks(x_test)
        counts = pw.matched_counts(masks)
        entry["density"] = _density(masks)
        entry["instance_density"] = _describe(mask_density(masks))
        compared = {"generator": masks} | {n: pw.top_k_masks(score, counts) for n, score in scores.items()}
        entry["faithfulness"] = {
            name: pw.pathway_faithfulness(model, x_test, m, labels=y_test, full_logits=full_test)
            for name, m in compared.items()
        }
        entry["paper_metrics"] = {
            name: pw.paper_metrics(model, x_test, m, classes=predicted_test, full_logits=full_test)
            for name, m in compared.items()
        }

    # --- main operating point: everything else ---------------------------------------------------
    main, explainer = runs[0], explainers[0]
    masks = explainer.masks(x_test)
    counts = pw.matched_counts(masks)
    method_masks = {"generator": masks} | {n: pw.top_k_masks(s, counts) for n, s in scores.items()}
    instance_density = mask_density(masks)
    result: dict[str, Any] = {
        "command": "gpex pathways " + " ".join(_argv(args)),
        "dataset": {"name": "sklearn digits", "train": len(x_train), "test": len(x_test)},
        "cnn": {"width": args.width, "epochs": args.cnn_epochs, "test_accuracy": float(accuracy(model, test))},
        "mask_layers": channels,
        "objective": _objective_dict(pw.PathwayObjective(sparsity_weight=weights[0])),
        "training": {"epochs": args.epochs, "seed": args.seed},
        "main": {
            "sparsity_weight": weights[0],
            "layer_sparsity": {n: pw.layer_sparsity(m) for n, m in method_masks.items()},
            "instance_density": _describe(instance_density),
            "density_by_class": {
                int(k): float(instance_density[predicted_test == k].mean()) for k in torch.unique(predicted_test)
            },
            "faithfulness": main["faithfulness"],
            "paper_metrics": main["paper_metrics"],
        },
    }

    # --- density sweep of the gradient-based baselines (sparsity at equal faithfulness) ------------
    sweep: dict[str, list[dict[str, Any]]] = {}
    for name in SWEPT_METHODS:
        sweep[name] = []
        for fraction in SWEEP_FRACTIONS:
            m = pw.fraction_masks(scores[name], fraction)
            sweep[name].append(
                {
                    "fraction": fraction,
                    "density": _density(m),
                    "faithfulness": pw.pathway_faithfulness(model, x_test, m, full_logits=full_test),
                    "paper_metrics": pw.paper_metrics(model, x_test, m, classes=predicted_test, full_logits=full_test),
                }
            )
    result["density_sweep"] = sweep

    # --- instance-specific sparsity by search: smallest faithful fraction of a ranking, per input ---
    adaptive: dict[str, Any] = {}
    for name in ("class_mean_gradient_x_activation", "gradient_x_activation"):
        for ratio in (0.0, 0.9):
            m, chosen = pw.minimal_faithful_masks(
                model, x_test, scores[name], min_confidence_ratio=ratio, full_logits=full_test
            )
            adaptive[f"{name}@{ratio}"] = {
                "ranking": name,
                "min_confidence_ratio": ratio,
                "fraction": _describe(chosen),
                "density": _describe(mask_density(m)),
                "faithfulness": pw.pathway_faithfulness(model, x_test, m, full_logits=full_test),
                "paper_metrics": pw.paper_metrics(model, x_test, m, classes=predicted_test, full_logits=full_test),
            }
    result["adaptive_fraction"] = adaptive

    curves: dict[str, Any] = {}
    for name, score in ({"generator": explainer.scores(x_test)} | scores).items():
        curve = pw.deletion_insertion_curves(model, x_test, score, CURVE_FRACTIONS, full_logits=full_test)
        curves[name] = curve.__dict__ | {
            "auc_insertion_confidence": curve.auc("insertion_confidence"),
            "auc_deletion_confidence": curve.auc("deletion_confidence"),
        }
    result["main"]["curves"] = curves

    result["main"]["class_iou"] = {}
    for name, m in method_masks.items():
        iou = pw.class_iou(m, predicted_test)
        result["main"]["class_iou"][name] = {"intra": iou.intra, "inter": iou.inter, "per_class": iou.per_class}

    # transfer: class pathways voted on the training split, applied to the test split
    train_masks = {"generator": explainer.masks(x_train)}
    train_counts = pw.matched_counts(train_masks["generator"])
    for name, score in scores_train.items():
        train_masks[name] = pw.top_k_masks(score, train_counts)
    result["main"]["transfer"] = {
        name: pw.transfer_faithfulness(model, x_test, pw.class_pathways(m, predicted_train, 10), full_logits=full_test)
        for name, m in train_masks.items()
    }

    # GPEX connection: pathway similarity vs similarity in an embedding space
    spaces = {"penultimate": model.embed, "pixels": lambda v: v.flatten(1)}
    connection: dict[str, Any] = {}
    for name, m in method_masks.items():
        if name == "random":
            continue
        connection[name] = {}
        for space, embed in spaces.items():
            corr = pw.pathway_embedding_correlation(
                m, x_test, embed, classes=predicted_test, n_permutations=args.permutations, seed=args.seed
            )
            connection[name][space] = corr.__dict__
    result["main"]["embedding_correlation"] = connection
    timings["evaluation_s"] = time.perf_counter() - t0

    if args.gp_steps:
        t0 = time.perf_counter()
        result["gp_survival"] = _gp_survival(args, model, train, x_test, method_masks)
        timings["gp_s"] = time.perf_counter() - t0

    if args.ablations:
        t0 = time.perf_counter()
        result["ablations"] = _ablations(args, model, layers, train, x_test, y_test, full_test, weights[0])
        timings["ablations_s"] = time.perf_counter() - t0

    result["operating_points"] = [
        {k: v for k, v in entry.items() if k != "history"} | {"final_epoch": entry["history"][-1]} for entry in runs
    ]
    result["history"] = runs[0]["history"]
    t0 = time.perf_counter()
    _figures(out, masks, predicted_test, runs, curves)
    timings["figures_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    result["timings"] = timings | {"threads": torch.get_num_threads()}
    (out / "pathways.json").write_text(json.dumps(result, indent=2, default=_jsonable))


def _ablations(
    args: argparse.Namespace,
    model: nn.Module,
    layers: list[str],
    train: Any,
    x_test: Tensor,
    y_test: Tensor,
    full_test: Tensor,
    weight: float,
) -> dict[str, Any]:
    """Re-train the generator with one design choice changed at a time; same metrics as the main point."""
    from ..explain import pathways as pw
    from ..explain.pathways.objectives import mask_density

    variants: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
        # name: (objective overrides, config overrides, build overrides)
        "full_method": ({}, {}, {}),
        "global_l1_no_gate": ({"gate": "none"}, {}, {}),
        "no_class_relevance": ({"relevance": "none"}, {}, {}),
        "prototype_relevance": ({"relevance": "prototype"}, {}, {}),
        "no_class_conditioning": ({}, {}, {"condition_on_prediction": False}),
        "soft_masks_only": ({}, {"soft_fraction": 1.0}, {}),
    }
    predicted = full_test.argmax(1)
    x_train = train.tensors[0]
    with torch.no_grad():
        predicted_train = model(x_train).argmax(1)
    activation = pw.activation_scores(model, x_test, layers)
    gradient = pw.gradient_x_activation_scores(model, x_test, layers)
    class_table = pw.class_mean_scores(pw.gradient_x_activation_scores(model, x_train, layers), predicted_train, 10)
    class_mean = pw.class_scores_for(class_table, predicted)
    report: dict[str, Any] = {}
    for name, (objective, config, build) in variants.items():
        cfg = pw.PathwayTrainingConfig(
            epochs=args.epochs,
            seed=args.seed,
            progress=not args.no_progress,
            objective=pw.PathwayObjective(**({"sparsity_weight": weight} | objective)),
            **config,
        )
        t0 = time.perf_counter()
        explainer, _ = pw.train_pathway_explainer(model, layers, train, cfg, **build)
        seconds = time.perf_counter() - t0
        masks = explainer.masks(x_test)
        counts = pw.matched_counts(masks)
        density = mask_density(masks)
        iou = pw.class_iou(masks, predicted)
        pathways = pw.class_pathways(explainer.masks(x_train), predicted_train, 10)
        report[name] = {
            "training_s": seconds,
            "density": _describe(density),
            "faithfulness": pw.pathway_faithfulness(model, x_test, masks, labels=y_test, full_logits=full_test),
            "top_k_activation_matched": pw.pathway_faithfulness(
                model, x_test, pw.top_k_masks(activation, counts), full_logits=full_test
            ),
            "gradient_x_activation_matched": pw.pathway_faithfulness(
                model, x_test, pw.top_k_masks(gradient, counts), full_logits=full_test
            ),
            "class_mean_gradient_x_activation_matched": pw.pathway_faithfulness(
                model, x_test, pw.top_k_masks(class_mean, counts), full_logits=full_test
            ),
            "class_iou": {"intra": iou.intra, "inter": iou.inter},
            "transfer": pw.transfer_faithfulness(model, x_test, pathways, full_logits=full_test),
        }
    return report


def _gp_survival(
    args: argparse.Namespace, model: nn.Module, train: Any, x_test: Tensor, method_masks: dict[str, dict[str, Tensor]]
) -> dict[str, Any]:
    """Distil the classifier head into a GPEX model; compare its view of full and pathway-masked inputs."""
    from torch.utils.data import DataLoader, TensorDataset

    from ..explain import SubmoduleExplainer
    from ..explain import pathways as pw
    from ..explain.pathways.gpex_connection import submodule_inputs

    explainer = SubmoduleExplainer(
        model,
        GP_SUBMODULE,
        forward_fn=lambda m, batch: m(batch[0]),
        steps=args.gp_steps,
        seed=args.seed,
        progress=not args.no_progress,
    )
    explainer.fit(DataLoader(train, batch_size=256, shuffle=False))
    test_report = explainer.score(DataLoader(TensorDataset(x_test), batch_size=256, shuffle=False))
    full = submodule_inputs(model, GP_SUBMODULE, x_test)
    report: dict[str, Any] = {
        "submodule": GP_SUBMODULE,
        "steps": args.gp_steps,
        "test_pearson_mean": test_report.pearson_mean,
        "test_pearson_min": test_report.pearson_min,
        "methods": {},
    }
    for name, masks in method_masks.items():
        masked = submodule_inputs(model, GP_SUBMODULE, x_test, masks)
        survival = pw.pathway_kernel_survival(explainer.model_, full, masked, k=args.gp_neighbours)
        report["methods"][name] = survival.to_dict() | {"cosine": _describe(survival.per_input_cosine)}
    return report


def _density(masks: dict[str, Tensor]) -> float:
    from ..explain.pathways.objectives import mask_density

    return float(mask_density(masks).mean())


def _describe(values: Tensor) -> dict[str, float]:
    q = torch.quantile(values.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p05": float(q[0]),
        "median": float(q[1]),
        "p95": float(q[2]),
    }


def _objective_dict(objective: Any) -> dict[str, Any]:
    return dict(objective.__dict__)


def _argv(args: argparse.Namespace) -> list[str]:
    parts = [f"--out {args.out}", f"--seed {args.seed}", f"--width {args.width}", f"--cnn-epochs {args.cnn_epochs}"]
    parts += [f"--epochs {args.epochs}", f"--sparsity-weights {args.sparsity_weights}"]
    parts += [f"--permutations {args.permutations}"] + ([f"--threads {args.threads}"] if args.threads else [])
    parts += [f"--gp-steps {args.gp_steps}", f"--gp-neighbours {args.gp_neighbours}"] if args.gp_steps else []
    parts += ["--ablations"] if args.ablations else []
    return parts


def _jsonable(value: object) -> object:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, nn.Module):
        return type(value).__name__
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _figures(
    out: Path,
    masks: dict[str, Tensor],
    classes: Tensor,
    runs: list[dict[str, Any]],
    curves: dict[str, Any],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # per-class mean masks, one panel per layer; channels ordered by overall keep rate
    names = list(masks)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = masks[name]
        order = torch.argsort(m.mean(0), descending=True, stable=True)
        rows = torch.stack(
            [m[classes == k].mean(0) if bool((classes == k).any()) else torch.zeros(m.shape[1]) for k in range(10)]
        )
        image = ax.imshow(
            rows[:, order].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
        )
        ax.set_title(f"{name} ({m.shape[1]} ch.)")
        ax.set_xlabel("channel (sorted by keep rate)")
        ax.set_ylabel("predicted class")
        ax.set_yticks(range(10))
    fig.colorbar(image, ax=axes[0].tolist(), label="fraction of instances keeping the channel")
    fig.suptitle("Generator pathways: per-class keep rate of each channel (test split)", y=1.04)
    fig.savefig(out / "class_masks.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    # per-layer sparsity (generator vs matched baselines are equal by construction) and instance density
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    per_instance = {n: 1.0 - m.mean(1) for n, m in masks.items()}
    left.boxplot([v.numpy() for v in per_instance.values()], showfliers=False)
    left.set_xticks(range(1, len(names) + 1), names)
    left.set_ylabel("sparsity (fraction of channels off)")
    left.set_title("Per-layer sparsity of generator pathways, per instance")
    from ..explain.pathways.objectives import mask_density

    density = mask_density(masks)
    for k in range(10):
        values = density[classes == k]
        right.scatter(torch.full_like(values, k) + 0.3 * (torch.rand(values.shape) - 0.5), values, s=6, alpha=0.6)
    right.set_xticks(range(10))
    right.set_xlabel("predicted class")
    right.set_ylabel("density (mean over layers)")
    right.set_title("Instance-specific density")
    fig.tight_layout()
    fig.savefig(out / "layer_sparsity.png", dpi=110)
    plt.close(fig)

    # faithfulness vs density and insertion/deletion curves
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    methods = ["generator", "random", "top_k_activation", "gradient_x_activation", "class_mean_gradient_x_activation"]
    ordered = sorted(runs, key=lambda r: r["density"])
    for method in methods:
        xs = [r["density"] for r in ordered]
        ys = [r["faithfulness"][method]["confidence_ratio"] for r in ordered]
        axes[0].plot(xs, ys, marker="o", label=method)
    axes[0].set_xlabel("density (generator's, matched per instance and layer)")
    axes[0].set_ylabel("confidence ratio q(y)/p(y)")
    axes[0].set_title("Faithfulness at equal sparsity")
    axes[0].legend()
    for method in methods:
        curve = curves[method]
        axes[1].plot(curve["fractions"], curve["insertion_confidence"], marker=".", label=method)
        axes[2].plot(curve["fractions"], curve["deletion_confidence"], marker=".", label=method)
    axes[1].set_title("Insertion: keep the top fraction of each layer")
    axes[2].set_title("Deletion: remove the top fraction of each layer")
    for ax in axes[1:]:
        ax.set_xlabel("fraction of channels")
        ax.set_ylabel("confidence ratio")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "baselines.png", dpi=110)
    plt.close(fig)
