"""``gpex explain --explainer FILE``: explain inputs with any saved explainer (not only the demo's).

Inputs come from ``--data`` (``.npz``/``.pt``/``.csv``, as for ``gpex distill``; ``--indices``
picks rows, default the first ``--num-test``), or, without ``--data``, from the explainer's own
inducing set. Writes ``explanation.json`` (prediction, posterior mean and variance, neighbours
with similarities and labels, contributions) and ``explanation.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from .common import add_common_options, apply_common_options
from .data_files import load_data_file

__all__ = ["configure_saved", "run_saved"]


def configure_saved(parser: argparse.ArgumentParser) -> None:
    """Add the options for saved explainers to the ``gpex explain`` parser."""
    parser.add_argument("--explainer", type=Path, default=None, help="a saved explainer file")
    parser.add_argument("--model", default=None, help="module:factory building a custom kernel network, if it has one")
    parser.add_argument("--data", type=Path, default=None, help=".npz/.pt/.csv inputs (default: inducing set)")
    parser.add_argument("--inputs-key", default="inputs", help="array/entry holding the inputs (default: inputs)")
    parser.add_argument("--labels-key", default="labels", help="column/entry holding labels, skipped (default: labels)")
    parser.add_argument("--indices", type=int, nargs="+", default=None, help="rows of --data to explain")
    add_common_options(parser)


def run_saved(args: argparse.Namespace) -> int:
    """Explain with a saved explainer; 0, or 2 with a message on stderr."""
    from ..distillation import load_explainer
    from ..explain import explain
    from .distill import load_factory

    try:
        if args.explainer is None:
            raise ValueError("--explainer or --checkpoint: give a saved explainer file or a `gpex demo` folder")
        if args.num_test < 1 or args.k < 1:
            raise ValueError("--num-test and --k must be at least 1")
        apply_common_options(args)
        kernel_network: nn.Module | None = None if args.model is None else load_factory(args.model)
        saved = load_explainer(args.explainer, kernel_network, map_location=args.device)
        if args.data is not None:
            inputs = load_data_file(args.data, args.inputs_key, args.labels_key).inputs
        elif saved.inducing_inputs is not None:
            inputs = saved.inducing_inputs
        else:
            raise ValueError("--data: the explainer holds no inducing inputs; pass the inputs to explain")
        rows = torch.arange(min(args.num_test, inputs.shape[0])) if args.indices is None else torch.tensor(args.indices)
        if bool(((rows < 0) | (rows >= inputs.shape[0])).any()):
            raise ValueError(f"--indices: expected rows in [0, {inputs.shape[0] - 1}], got {rows.tolist()}")
        k = args.k
        if k > saved.model.covar_module.num_inducing:
            raise ValueError(f"--k: {k} exceeds the {saved.model.covar_module.num_inducing} inducing examples")
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"gpex explain: error: {error}", file=sys.stderr)
        return 2
    explanation = explain(saved, inputs[rows].to(args.device), k=k, metric=args.metric)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    explanation.to_json(out / "explanation.json")
    drawn = explanation.inputs.dim() in (2, 3, 4) and (
        explanation.inputs.dim() == 2 or explanation.neighbour_inputs is not None
    )
    if drawn:
        explanation.plot(out / "explanation.png")
    print(f"explained {len(explanation)} inputs with {args.explainer}; wrote {out}/explanation.json" + (
        ", explanation.png" if drawn else ""))  # fmt: skip
    return 0
