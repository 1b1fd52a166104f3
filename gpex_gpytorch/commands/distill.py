"""``gpex distill``: explain your own trained network on your own data, and save the explainer.

Example::

    gpex distill --model my_package.models:build --weights ann.pt --data data.npz --out explained/

``--model module:factory`` names a function that returns the (untrained) network; ``--weights``
is its ``state_dict`` (read with ``weights_only=True``). Writes into ``--out``:

* ``explainer.pt`` — the saved explainer (:func:`~gpex_gpytorch.distillation.save_explainer`),
  with the training split as inducing set, its labels and the feature names of a CSV;
* ``faithfulness.json`` and ``faithfulness.png`` — per-head Pearson of GP mean and network output
  on the held-out split (the training split when ``--test-fraction 0``);
* ``explanation.json`` and ``explanation.png`` — :func:`~gpex_gpytorch.explain.explain` on the
  first held-out inputs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .common import add_common_options, apply_common_options
from .data_files import load_data_file, split_indices

__all__ = ["configure", "load_factory", "parse_output", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``gpex distill`` options to ``parser``."""
    parser.add_argument("--model", required=True, help="module:factory returning the network")
    parser.add_argument("--weights", type=Path, default=None, help="the network's state_dict (.pt); default: as built")
    parser.add_argument("--data", type=Path, required=True, help=".npz, .pt or .csv file of inputs (and labels)")
    parser.add_argument("--inputs-key", default="inputs", help="array/entry holding the inputs (default: inputs)")
    parser.add_argument("--labels-key", default="labels", help="array/entry/column holding labels (default: labels)")
    parser.add_argument("--output", default=None, help="part of the network output to explain: a name or an index")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share (default 0.2)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--steps", type=int, default=2000, help="distillation steps (default 2000)")
    parser.add_argument("--embedding-dim", type=int, default=20, help="kernel-space width per head (default 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="training inputs per step (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the distillation (default 0)")
    parser.add_argument("--num-explained", type=int, default=4, help="held-out inputs in explanation.* (default 4)")
    add_common_options(parser)


def load_factory(spec: str) -> nn.Module:
    """Call ``module:factory`` (the current folder is importable) and check it returns a network."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--model: expected module:factory (e.g. my_models:build), got {spec!r}")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"--model: cannot import {module_name!r} ({error})") from error
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--model: {module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    network = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(network, nn.Module):
        raise ValueError(f"--model: {spec} returned a {type(network).__name__}, expected a torch.nn.Module")
    return network


def parse_output(value: str | None) -> str | int | None:
    """``--output``: an integer string is a tuple index, anything else a key or attribute name."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _check(args: argparse.Namespace) -> None:
    for flag, value in (
        ("--steps", args.steps),
        ("--embedding-dim", args.embedding_dim),
        ("--batch-size", args.batch_size),
        ("--num-explained", args.num_explained),
    ):
        if value < 1:
            raise ValueError(f"{flag}: expected an integer >= 1, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr: expected a value > 0, got {args.lr}")
    if args.weights is not None and not args.weights.is_file():
        raise FileNotFoundError(f"--weights: no file at {args.weights}")


def _report_dict(report: Any) -> dict[str, Any]:
    return {name: getattr(report, name) for name in report.__dataclass_fields__}


def run(args: argparse.Namespace) -> int:
    """Distil, save, measure; returns 0, or 2 with a message on stderr for bad arguments or files."""
    from ..distillation import Distiller, faithfulness, plot_faithfulness, predict_gp_and_ann, save_explainer
    from ..explain import explain
    from ..utils.network_output import SelectOutput

    try:
        _check(args)
        progress = apply_common_options(args)
        data = load_data_file(args.data, args.inputs_key, args.labels_key)
        train_idx, test_idx = split_indices(data.inputs.shape[0], args.test_fraction, args.seed)
        ann = load_factory(args.model)
        if args.weights is not None:
            try:
                state = torch.load(args.weights, map_location="cpu", weights_only=True)
                ann.load_state_dict(state)
            except Exception as error:
                raise ValueError(f"--weights: {args.weights} does not load into {args.model} ({error})") from error
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"gpex distill: error: {error}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    output = parse_output(args.output)
    network = (ann if output is None else SelectOutput(ann, output)).to(device).eval()

    def subset(indices: torch.Tensor) -> TensorDataset:
        parts = [data.inputs[indices]] + ([] if data.labels is None else [data.labels[indices]])
        return TensorDataset(*parts)

    train = subset(train_idx)
    test = subset(test_idx) if test_idx.numel() else train
    settings = {
        "embedding_dim": args.embedding_dim,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "inducing_batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
    }
    distiller = Distiller(network, device=device, progress=progress, **settings).fit(train)
    model = distiller.model_
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    classifier = data.labels is not None and not data.labels.is_floating_point()
    report = faithfulness(model, network, test, classifier=classifier and model.num_heads > 1)
    mean, _, ann_out, _ = predict_gp_and_ann(model, network, test)
    plot_faithfulness(mean, ann_out, out / "faithfulness.png")
    split = "test" if test_idx.numel() else "train"
    summary = {
        "split": split,
        "test_indices": test_idx.tolist(),
        **_report_dict(report),
        "final_training_pearson": distiller.history_[-1].get("pearson"),
    }
    (out / "faithfulness.json").write_text(json.dumps(summary, indent=2) + "\n")
    metadata = {
        "model": args.model,
        "weights": None if args.weights is None else str(args.weights),
        "output": output,
        "data": str(args.data),
        "train_indices": train_idx.tolist(),
        "test_indices": test_idx.tolist(),
        "settings": settings,
    }
    save_explainer(
        out / "explainer.pt",
        model,
        inducing_inputs=train.tensors[0],
        inducing_labels=None if data.labels is None or data.labels.is_floating_point() else train.tensors[1],
        feature_names=data.feature_names,
        metadata=metadata,
    )
    shown = test.tensors[0][: args.num_explained].to(device)
    explanation = explain(
        model,
        shown,
        k=min(5, model.covar_module.num_inducing),
        inducing_inputs=train.tensors[0],
        inducing_labels=None if data.labels is None or data.labels.is_floating_point() else train.tensors[1],
        feature_names=data.feature_names,
        network=network,
    )
    explanation.to_json(out / "explanation.json")
    if explanation.inputs.dim() in (2, 3, 4):
        explanation.plot(out / "explanation.png")
    print(
        f"Pearson mean {report.pearson_mean:.4f} (min {report.pearson_min:.4f}) on the {split} split "
        f"({report.num_samples} inputs); wrote {out}/explainer.pt, faithfulness.json, explanation.json"
    )
    return 0
