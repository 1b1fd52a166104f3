"""Does per-head output standardisation lift the ViT attention output's weakest heads? (docs/own_model.md)

Explains the layer-0 attention output of the digits ViT of ``vit_digits.py`` twice at the same
budget: on the raw output (``raw``) and on each head standardised by its mean and standard deviation
over the training digits (``std``; per-head Pearson is unchanged by such an affine map, so the two
are compared directly). Prints one JSON line.

    python benchmarks/vit_standardised_heads.py 1500 raw
    python benchmarks/vit_standardised_heads.py 1500 std
"""

import json
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from torch.utils.data import DataLoader
from vit_digits import build_vit

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.explain import SubmoduleExplainer, capture_submodule
from gpex_gpytorch.models.classifier_training import fit_classifier
from gpex_gpytorch.utils.network_output import SelectOutput

torch.set_num_threads(1)
steps = int(sys.argv[1])
mode = sys.argv[2]
train, test = load_digits(seed=0)
vit = build_vit(0)
fit_classifier(SelectOutput(vit, "logits"), train, epochs=40, batch_size=64, lr=2e-3, seed=0)
vit.eval()
cap = capture_submodule(vit, "vit.layers.0.attention", DataLoader(train.tensors[0], batch_size=256), output=0)
out = cap.outputs.double()
mu, sd = out.mean(0).float(), out.std(0).float().clamp_min(1e-6)


def standardised(o):
    return (o[0] - mu.reshape(o[0].shape[1:])) / sd.reshape(o[0].shape[1:])


sel = standardised if mode == "std" else 0
t = time.perf_counter()
ex = SubmoduleExplainer(vit, "vit.layers.0.attention", output=sel, steps=steps, seed=0, progress=False).fit(
    DataLoader(train.tensors[0], batch_size=256)
)
sc = ex.score(DataLoader(test.tensors[0], batch_size=256))
p = torch.tensor([float("nan") if v is None else v for v in sc.pearson_per_head])
v = p[~p.isnan()]
print(
    json.dumps(
        {
            "mode": mode,
            "steps": steps,
            "mean": sc.pearson_mean,
            "min": sc.pearson_min,
            "below_0.9": int((v < 0.9).sum()),
            "below_0.95": int((v < 0.95).sum()),
            "seconds": time.perf_counter() - t,
        }
    )
)
