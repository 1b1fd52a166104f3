"""Does per-head output standardisation lift the ViT attention output's weakest heads? (docs/own_model.md)

Explains the layer-0 attention output of the digits ViT of ``vit_digits.py`` at one budget, either
on the raw output (``raw``) or with each head standardised by its mean and standard deviation over
the training digits (``std``; per-head Pearson is unchanged by such an affine map, so the two runs
compare directly). Prints one JSON line. Needs the optional extra ``hf``.

    python benchmarks/vit_standardised_heads.py --steps 1500 --mode raw
    python benchmarks/vit_standardised_heads.py --steps 1500 --mode std
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from vit_digits import build_vit

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.explain import SubmoduleExplainer, capture_submodule
from gpex_gpytorch.models.classifier_training import fit_classifier
from gpex_gpytorch.utils.network_output import SelectOutput

NAME = "vit.layers.0.attention"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--mode", choices=("raw", "std"), default="raw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = load_digits(seed=args.seed)
    vit = build_vit(args.seed)
    fit_classifier(SelectOutput(vit, "logits"), train, epochs=40, batch_size=64, lr=2e-3, seed=args.seed)
    vit.eval()
    loader = DataLoader(train.tensors[0], batch_size=256)
    outputs = capture_submodule(vit, NAME, loader, output=0).outputs.double()
    mean, spread = outputs.mean(0).float(), outputs.std(0).float().clamp_min(1e-6)

    def standardised(output: tuple[Tensor, ...]) -> Tensor:
        shape = output[0].shape[1:]
        return (output[0] - mean.reshape(shape)) / spread.reshape(shape)

    start = time.perf_counter()
    selector = standardised if args.mode == "std" else 0
    explainer = SubmoduleExplainer(vit, NAME, output=selector, steps=args.steps, seed=args.seed, progress=False)
    score = explainer.fit(loader).score(DataLoader(test.tensors[0], batch_size=256))
    pearson = torch.tensor([float("nan") if p is None else p for p in score.pearson_per_head])
    valid = pearson[~pearson.isnan()]
    result = {
        "mode": args.mode,
        "steps": args.steps,
        "seed": args.seed,
        "pearson_mean": score.pearson_mean,
        "pearson_min": score.pearson_min,
        "heads_below_0.9": int((valid < 0.9).sum()),
        "heads_below_0.95": int((valid < 0.95).sum()),
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
