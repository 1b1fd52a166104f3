"""Do the GPs' posterior scores flag the network's misclassifications? Against max-softmax and logit margin.

Setting (enough errors to measure an AUROC): scikit-learn digits split in half (899 test digits),
40 % of the training labels replaced by a different random class, the demo's ``DigitsCNN`` trained
on them for 10 epochs (it makes about 8 % errors on the clean test labels), distilled with the
demo's settings (``gpex demo``'s ``DEMO_SETTINGS``), the cache refreshed in full after fitting.
Every score of :func:`gpex_gpytorch.explain.uncertainty.error_scores` is evaluated for the
network's test errors: AUROC with a stratified bootstrap 95 % interval (2,000 resamples), and the
paired difference to max-softmax. Everything is seeded (split, label noise, CNN, distillation,
bootstrap).

    python benchmarks/uncertainty_scores.py --out docs/figures/uncertainty [--seeds 0 1 2]

writes ``uncertainty_scores.json`` and ``uncertainty_scores.png`` (AUROC and interval per score and
seed; the ROC curves of the first seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from gpex_gpytorch.commands.demo import DEMO_SETTINGS
from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.distillation import Distiller, faithfulness, predict_gp_and_ann
from gpex_gpytorch.explain.error_detection import error_detection_report
from gpex_gpytorch.explain.uncertainty import SCORE_DESCRIPTIONS, error_scores
from gpex_gpytorch.models import DigitsCNN
from gpex_gpytorch.models.classifier_training import fit_classifier


def noisy_labels(
    labels: torch.Tensor, rate: float, seed: int, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a ``rate`` fraction of ``labels`` by a different class drawn uniformly; returns (labels, flipped)."""
    generator = torch.Generator().manual_seed(seed)
    flipped = torch.rand(labels.shape[0], generator=generator) < rate
    shift = torch.randint(1, num_classes, (int(flipped.sum()),), generator=generator)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + shift) % num_classes
    return noisy, flipped


def run_seed(seed: int, noise: float, epochs: int, steps: int, resamples: int, progress: bool) -> dict[str, object]:
    start = time.perf_counter()
    train, test = load_digits(seed=seed, test_size=0.5)
    images, labels = train.tensors
    noisy, flipped = noisy_labels(labels, noise, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cnn = DigitsCNN(num_classes=10, width=1024)
    ann = fit_classifier(cnn, TensorDataset(images, noisy), epochs=epochs, batch_size=32, seed=seed).eval()
    with torch.no_grad():
        fitted_flips = float((ann(images[flipped]).argmax(1) == noisy[flipped]).double().mean())
    distiller = Distiller(ann, seed=seed, progress=progress, **{**DEMO_SETTINGS, "steps": steps}).fit(
        TensorDataset(images, noisy)
    )
    model = distiller.model_
    model.covar_module.fill(images, progress=False)  # every similarity and variance from the current network
    report = faithfulness(model, ann, test)
    mean, variance, ann_out, test_labels = predict_gp_and_ann(model, ann, test)
    errors = ann_out.argmax(1) != test_labels
    scores = error_scores(mean, variance, ann_out)
    detection = error_detection_report(scores, errors, reference="max_softmax", num_resamples=resamples, seed=seed)
    return {
        "seed": seed,
        "num_train": int(labels.shape[0]),
        "flipped_train_labels": int(flipped.sum()),
        "fraction_of_flipped_labels_fitted": fitted_flips,
        "ann_test_accuracy": report.ann_accuracy,
        "gp_test_accuracy": report.gp_accuracy,
        "pearson_mean": report.pearson_mean,
        "pearson_min": report.pearson_min,
        "detection": detection.summary(),
        "seconds": time.perf_counter() - start,
        "_scores": {name: value.tolist() for name, value in scores.items()},
        "_errors": errors.tolist(),
    }


def plot(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    names = list(SCORE_DESCRIPTIONS)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    width = 0.8 / len(results)
    for k, result in enumerate(results):
        rows = {s["name"]: s for s in result["detection"]["scores"]}  # type: ignore[index]
        x = [i + (k - (len(results) - 1) / 2) * width for i in range(len(names))]
        y = [rows[n]["auroc"] for n in names]
        err = [
            [rows[n]["auroc"] - rows[n]["ci_low"] for n in names],
            [rows[n]["ci_high"] - rows[n]["auroc"] for n in names],
        ]
        left.errorbar(
            x,
            y,
            yerr=err,
            fmt="o",
            capsize=3,
            label=f"seed {result['seed']} ({result['detection']['num_errors']} errors)",
        )  # type: ignore[index]
    left.axhline(0.5, color="grey", linestyle=":", label="chance")
    left.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    left.set_ylabel("AUROC for the CNN's test errors (95 % interval)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8, loc="lower left")
    first = results[0]
    errors = first["_errors"]
    for name in names:
        fpr, tpr, _ = roc_curve(errors, first["_scores"][name])  # type: ignore[index]
        right.plot(fpr, tpr, label=name)
    right.plot([0, 1], [0, 1], color="grey", linestyle=":")
    right.set_xlabel("false-positive rate")
    right.set_ylabel("true-positive rate")
    right.set_title(f"ROC, seed {first['seed']}", fontsize=10)
    right.legend(fontsize=8)
    fig.suptitle("Digits, 40 % training-label noise: which score flags the CNN's misclassifications?", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/uncertainty"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, default=0.4, help="fraction of training labels replaced")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=DEMO_SETTINGS["steps"])
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_seed(s, args.noise, args.epochs, args.steps, args.resamples, not args.quiet) for s in args.seeds]
    plot(results, args.out / "uncertainty_scores.png")
    summary = {
        "command": "python benchmarks/uncertainty_scores.py "
        + " ".join(
            [
                f"--out {args.out}",
                "--seeds " + " ".join(map(str, args.seeds)),
                f"--noise {args.noise}",
                f"--epochs {args.epochs}",
                f"--steps {args.steps}",
                f"--resamples {args.resamples}",
            ]
        ),
        "setting": "sklearn digits, test_size 0.5, symmetric label noise on the training split, DigitsCNN(width 1024)",
        "score_descriptions": SCORE_DESCRIPTIONS,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
        "mean_auroc_over_seeds": {
            name: sum(next(s["auroc"] for s in r["detection"]["scores"] if s["name"] == name) for r in results)  # type: ignore[index]
            / len(results)
            for name in SCORE_DESCRIPTIONS
        },
    }
    (args.out / "uncertainty_scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in results:
        det = r["detection"]
        line = ", ".join(f"{s['name']} {s['auroc']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" for s in det["scores"])  # type: ignore[index]
        print(f"seed {r['seed']}: {det['num_errors']} errors / {det['num_samples']}; {line}")  # type: ignore[index]


if __name__ == "__main__":
    main()
