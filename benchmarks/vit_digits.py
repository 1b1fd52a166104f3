"""A small HuggingFace ViT trained on the digits, explained by GPEX: logits and layer-0 attention output.

Measures per-head Pearson of GP mean against the network on the 450 held-out digits, for the
classifier's logits (``output="logits"``, default CNN kernel network on the images) and for the
first attention module's output (``output=0``, 17 tokens x 32 features = 544 heads, default
token-sequence kernel network). Writes ``vit_digits.json`` and ``vit_digits.png`` into ``--out``.

    python benchmarks/vit_digits.py --out docs/figures/vit_digits --steps 1500 --threads 1

Needs the optional extra ``hf`` (``transformers``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.distillation import Distiller, faithfulness, plot_faithfulness, predict_gp_and_ann
from gpex_gpytorch.explain import SubmoduleExplainer
from gpex_gpytorch.models.classifier_training import fit_classifier
from gpex_gpytorch.utils.network_output import SelectOutput


def build_vit(seed: int) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ViTForImageClassification(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500, help="distillation steps for each explainer")
    parser.add_argument("--epochs", type=int, default=40, help="ViT training epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-attention", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = load_digits(seed=args.seed)
    vit = build_vit(args.seed)
    start = time.perf_counter()
    logits_net = SelectOutput(vit, "logits")
    fit_classifier(logits_net, train, epochs=args.epochs, batch_size=64, lr=2e-3, seed=args.seed)
    vit.eval()
    with torch.no_grad():
        accuracy = float((logits_net(test.tensors[0]).argmax(1) == test.tensors[1]).double().mean())
    results: dict[str, object] = {
        "command": f"python benchmarks/vit_digits.py --out {args.out} --steps {args.steps} --epochs {args.epochs} "
        f"--seed {args.seed} --threads {args.threads}",
        "vit_test_accuracy": accuracy,
        "vit_training_seconds": time.perf_counter() - start,
        "steps": args.steps,
    }
    print(f"ViT test accuracy {accuracy:.4f}")

    start = time.perf_counter()
    distiller = Distiller(vit, output="logits", steps=args.steps, seed=args.seed, progress="auto").fit(train)
    report = faithfulness(distiller.model_, logits_net, test)
    mean, _, ann_out, _ = predict_gp_and_ann(distiller.model_, logits_net, test)
    plot_faithfulness(mean, ann_out, args.out / "vit_digits.png")
    results["logits"] = {
        "pearson_mean": report.pearson_mean,
        "pearson_min": report.pearson_min,
        "gp_accuracy": report.gp_accuracy,
        "agreement": report.agreement,
        "seconds": time.perf_counter() - start,
    }
    print("logits", results["logits"])

    if not args.skip_attention:
        start = time.perf_counter()
        explainer = SubmoduleExplainer(
            vit, "vit.layers.0.attention", output=0, steps=args.steps, seed=args.seed, progress="auto"
        ).fit(DataLoader(train.tensors[0], batch_size=256))
        score = explainer.score(DataLoader(test.tensors[0], batch_size=256))
        # Which heads match worst, and why: each head's spread on the test set beside its Pearson.
        spread = explainer.capture(DataLoader(test.tensors[0], batch_size=256)).outputs.double().std(0)
        pearson = torch.tensor([float("nan") if p is None else p for p in score.pearson_per_head], dtype=torch.float64)
        valid = ~pearson.isnan()
        low = valid & (pearson < 0.9)
        order = spread[valid].argsort().argsort().double()  # ranks, for a Spearman correlation
        ranks = pearson[valid].argsort().argsort().double()
        spearman = float(torch.corrcoef(torch.stack([order, ranks]))[0, 1])
        results["attention_output"] = {
            "heads": explainer.capture_.num_heads,
            "pearson_mean": score.pearson_mean,
            "pearson_min": score.pearson_min,
            "constant_heads": len(score.constant_heads),
            "heads_below_0.9": int(low.sum()),
            "spearman_spread_vs_pearson": spearman,
            "median_spread_heads_below_0.9": float(spread[low].median()) if bool(low.any()) else None,
            "median_spread_other_heads": float(spread[valid & ~low].median()),
            "pearson_per_head": score.pearson_per_head,
            "spread_per_head": spread.tolist(),
            "seconds": time.perf_counter() - start,
        }
        print("attention output", results["attention_output"])
    (args.out / "vit_digits.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
