"""``gpex explain``: explain the decisions of the network trained by ``gpex demo`` with its GPs.

With ``--explainer FILE`` instead of ``--checkpoint``, any saved explainer is used (see
:mod:`gpex_gpytorch.commands.explain_saved`).

Reads the folder written by ``gpex demo --out DIR`` and writes into ``--out``:

* ``report.html`` — self-contained (images inline): per-head faithfulness on the test split,
  the misclassification AUROC of each uncertainty score with bootstrap intervals beside the
  max-softmax and logit-margin baselines, and the neighbour grids;
* ``neighbours.png`` — the first test digits, each with its nearest training digits in the kernel
  space of the predicted class's head (similarity and label under each);
* ``misclassified.png`` — the same for test digits the network gets wrong (when there are any);
* ``explain.json`` — faithfulness and uncertainty summaries, the neighbours shown (score under
  ``--metric`` and kernel value) and their hubness diagnostic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .arguments import integer_at_least
from .explain_saved import configure_saved, run_saved

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``gpex explain`` options to ``parser``."""
    from ..explain.kernel_similarity import DEFAULT_METRIC, SIMILARITY_METRICS

    parser.add_argument("--checkpoint", type=Path, default=None, help="the folder written by `gpex demo --out`")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--num-test", type=integer_at_least(1), default=8, help="test digits per grid (default 8)")
    parser.add_argument("--k", type=integer_at_least(1), default=10, help="neighbours per test digit (default 10)")
    parser.add_argument(
        "--metric",
        choices=SIMILARITY_METRICS,
        default=DEFAULT_METRIC,
        help=f"how neighbours are ranked in kernel space (default {DEFAULT_METRIC}; see docs/explanations.md)",
    )
    configure_saved(parser)  # --explainer FILE: any saved explainer


def _neighbour_records(
    indices: torch.Tensor, ann_pred: torch.Tensor, test: TensorDataset, train: TensorDataset, neighbours: Any
) -> list[dict[str, Any]]:
    records = []
    for row, index in enumerate(indices.tolist()):
        pairs = zip(
            neighbours.indices[row].tolist(),
            neighbours.similarities[row].tolist(),
            neighbours.kernel_values[row].tolist(),
            strict=True,
        )
        records.append(
            {
                "test_index": index,
                "label": int(test.tensors[1][index]),
                "ann_prediction": int(ann_pred[index]),
                "head": int(neighbours.heads[row]),
                "gp_mean": float(neighbours.mean[row]),
                "gp_variance": float(neighbours.variance[row]),
                "neighbours": [
                    {
                        "train_index": int(m),
                        "label": int(train.tensors[1][m]),
                        "similarity": float(s),
                        "kernel_value": float(v),
                    }
                    for m, s, v in pairs
                ],
            }
        )
    return records


def _grid(
    model: nn.Module,
    test: TensorDataset,
    train: TensorDataset,
    indices: torch.Tensor,
    k: int,
    title: str,
    metric: str,
) -> tuple[bytes, Any]:
    from ..explain import nearest_neighbours, neighbour_similarity_maps
    from ..explain.figures import figure_png, neighbour_grid
    from ..explain.similarity_maps import SpatialKernelNetwork

    x = test.tensors[0][indices]
    # The cache's staleness is checked against the training digits (a warning if it is stale).
    neighbours = nearest_neighbours(  # type: ignore[arg-type]
        model, x, k=k, heads="predicted", metric=metric, inducing_inputs=train.tensors[0], hub_warning=None
    )
    maps = None
    if isinstance(model.covar_module.feature_extractor, SpatialKernelNetwork):  # type: ignore[union-attr]
        maps = neighbour_similarity_maps(model, x, train.tensors[0], neighbours)  # type: ignore[arg-type]
    figure = neighbour_grid(
        x,
        train.tensors[0][neighbours.indices],
        similarities=neighbours.similarities,
        test_labels=test.tensors[1][indices],
        neighbour_labels=train.tensors[1][neighbours.indices],
        heads=neighbours.heads,
        test_maps=None if maps is None else maps.input_maps,
        neighbour_maps=None if maps is None else maps.neighbour_maps,
        title=title,
    )
    return figure_png(figure), neighbours


def run(args: argparse.Namespace) -> int:
    """Explain the demo's network; returns 0, or 2 with a message on stderr for bad arguments."""
    from ..distillation import faithfulness, predict_gp_and_ann
    from ..explain import write_report
    from ..explain.uncertainty import misclassification_auroc
    from .demo import load_demo

    if args.checkpoint is None or args.explainer is not None:
        return run_saved(args)
    if args.num_test < 1 or args.k < 1:
        print("gpex explain: error: --num-test and --k must be at least 1", file=sys.stderr)
        return 2
    try:
        ann, model, train, test = load_demo(args.checkpoint)
    except (FileNotFoundError, ValueError) as error:  # a missing or corrupted demo folder
        print(f"gpex explain: error: {error}", file=sys.stderr)
        return 2
    if model.covar_module.num_inducing != len(train):
        print("gpex explain: error: the checkpoint's inducing set is not the demo's training split", file=sys.stderr)
        return 2
    if args.k > len(train):
        print(f"gpex explain: error: --k {args.k} exceeds the {len(train)} inducing digits", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    report = faithfulness(model, ann, test)
    uncertainty = misclassification_auroc(model, ann, test)
    _, _, ann_out, labels = predict_gp_and_ann(model, ann, test)
    ann_pred = ann_out.argmax(1)
    wrong = (ann_pred != labels).nonzero().flatten()[: args.num_test]
    panels = [("neighbours.png", torch.arange(min(args.num_test, len(test))), "test digits")]
    if wrong.numel():
        panels.append(("misclassified.png", wrong, "test digits the network misclassifies"))

    figures, shown, hubness = [], {}, {}
    for filename, indices, title in panels:
        png, neighbours = _grid(model, test, train, indices, args.k, title, args.metric)
        hubness[title] = neighbours.hubness()
        (out / filename).write_bytes(png)
        caption = (
            f"{title}: each row a test digit (label y, head of the network's predicted class), then its "
            f"{args.k} nearest training digits in that head's kernel space (label y, kernel {args.metric} s)"
        )
        figures.append((caption, png))
        shown[filename.removesuffix(".png")] = _neighbour_records(indices, ann_pred, test, train, neighbours)

    summary = {
        "checkpoint": str(args.checkpoint),
        "faithfulness": {
            "pearson_mean": report.pearson_mean,
            "pearson_min": report.pearson_min,
            "pearson_per_head": report.pearson_per_head,
            "constant_heads": report.constant_heads,
            "ann_accuracy": report.ann_accuracy,
            "gp_accuracy": report.gp_accuracy,
            "agreement": report.agreement,
        },
        "uncertainty": uncertainty.summary(),
        "k": args.k,
        "metric": args.metric,
        "hubness": {name: stats.summary() for name, stats in hubness.items()},
        **shown,
    }
    (out / "explain.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(
        out / "report.html",
        title="GPEX explanations of the digits CNN",
        faithfulness=report,
        uncertainty=uncertainty,
        figures=figures,
        head_names=[f"digit {d}" for d in range(model.num_heads)],
        hubness=hubness,
        metric=args.metric,
        notes=(
            "One GP per logit of the network. Faithfulness: Pearson correlation of GP mean and logit on the "
            "test split. Uncertainty: how well each score (the network's max-softmax and logit margin as baselines, "
            "and the GPs' posterior scores) flags the network's misclassifications (AUROC with bootstrap intervals; "
            "0.5 is chance, below 0.5 worse than chance)."
        ),
    )
    if uncertainty.detection is None:
        detection_line = f"AUROC undefined ({uncertainty.num_errors} errors / {uncertainty.num_samples})"
    else:
        parts = [
            f"{s.name} {s.auroc:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]"
            + (f" (below 0.5: {s.verdict().split(';')[0]})" if s.auroc < 0.5 else "")
            for s in uncertainty.detection.scores
        ]
        detection_line = (
            f"misclassification AUROC, 95 % intervals ({uncertainty.num_errors} errors / "
            f"{uncertainty.num_samples}): " + "; ".join(parts)
        )
    print(f"Pearson mean {report.pearson_mean:.4f}; {detection_line}; wrote {out}/report.html, explain.json")
    return 0
