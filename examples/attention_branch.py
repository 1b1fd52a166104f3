"""Explain the attention branch of a digits classifier with GPs (GPEX on a sub-module).

The classifier: a convolutional stem, then a trunk producing a 64-channel 4×4 feature map, which
is multiplied by a 4×4 sigmoid mask computed by a small attention CNN from the stem's features
(divided by the mask's mean, so that only where the mask attends matters, not its scale).
After training the classifier, ``SubmoduleExplainer`` captures the attention branch's inputs and
outputs while the classifier runs on the ordinary ``(image, label)`` loader, and distils the
branch: 16 GP heads, one per mask position. It reports the per-head Pearson correlation on
held-out digits (constant heads excluded from the mean and listed), and the classifier's test
accuracy with the mask replaced by the GP's posterior mean.

Run::

    python examples/attention_branch.py --out attention_out          # ~a few minutes on 2 cores
    python examples/attention_branch.py --quick --out /tmp/attn      # CI smoke test (seconds)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.explain import SubmoduleExplainer
from gpex_gpytorch.models.classifier_training import accuracy, fit_classifier


class AttentionDigits(nn.Module):
    """Digits classifier whose 4×4 feature map is gated by a learnt sigmoid attention mask."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU())  # (N, 32, 8, 8)
        self.trunk = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # (N, 64, 4, 4)
        self.attention = nn.Sequential(  # the branch explained: (N, 32, 8, 8) -> (N, 1, 4, 4)
            nn.Conv2d(32, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 1, 3, padding=1),
            nn.Sigmoid(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        stem = self.stem(x)
        mask = self.attention(stem)
        # Dividing by the mask's mean makes the gate scale-free: a plain product lets training
        # saturate every cell at 1 (measured: all 16 cells at 1.000 ± 0.0007, a useless branch),
        # whereas here only the relative weights of the cells matter, so the mask must pick places.
        return self.classifier(self.trunk(stem) * mask / (mask.mean((2, 3), keepdim=True) + 1e-6))


def run_pipeline_forward(model: nn.Module, batch: Any) -> Tensor:
    """``forward_fn`` for ``(image, label)`` batches: the pipeline takes the images."""
    return model(batch[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("attention_out"), help="where to write metrics.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=2000, help="distillation steps")
    parser.add_argument("--embedding-dim", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test (no target)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.steps = 2, 30
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    train, test = load_digits(seed=args.seed)
    torch.manual_seed(args.seed)
    model = fit_classifier(AttentionDigits(), train, epochs=args.epochs, seed=args.seed)
    cnn_accuracy = accuracy(model, test)
    train_loader = DataLoader(train, batch_size=256, shuffle=False)
    test_loader = DataLoader(test, batch_size=256, shuffle=False)

    explainer = SubmoduleExplainer(
        model,
        "attention",
        forward_fn=run_pipeline_forward,
        embedding_dim=args.embedding_dim,
        steps=args.steps,
        seed=args.seed,
        progress=not args.quick,
    ).fit(train_loader)
    report = explainer.score(test_loader)
    comparison = explainer.compare(test_loader, label_fn=lambda batch: batch[1])
    metrics = {
        "pearson_mean_non_constant_heads": report.pearson_mean,
        "pearson_min": report.pearson_min,
        "pearson_per_head": report.pearson_per_head,
        "constant_heads": report.constant_heads,
        "num_heads": explainer.capture_.num_heads,
        "mask_shape": list(explainer.capture_.output_shape),
        "num_test": report.num_samples,
        "cnn_test_accuracy": cnn_accuracy,
        "cnn_test_accuracy_with_gp_mask": comparison.accuracy_with_gp,
        "prediction_agreement_with_gp_mask": comparison.agreement,
        "logit_mean_abs_change": comparison.mean_abs_change,
        "epochs": args.epochs,
        "steps": args.steps,
        "embedding_dim": args.embedding_dim,
        "seed": args.seed,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"attention branch: mean Pearson over {len(report.pearson_per_head) - len(report.constant_heads)} "
        f"non-constant heads {report.pearson_mean:.4f} (min {report.pearson_min:.4f}; constant heads: "
        f"{report.constant_heads or 'none'}); CNN test accuracy {cnn_accuracy:.4f}, with the GP mask "
        f"{comparison.accuracy_with_gp:.4f}; {metrics['seconds']:.0f} s; wrote {args.out / 'metrics.json'}"
    )
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # a shared machine; set here so that importing main() changes nothing
    raise SystemExit(main())
