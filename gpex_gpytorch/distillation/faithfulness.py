"""How faithful the GPs are to the network: per-head Pearson, accuracies, and a scatter figure."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..models.gpex_model import GPEXModel
from ..utils import NonFiniteError, check_tensor
from ..utils.modules import eval_mode
from .dataset_access import dataset_length, take_inputs, take_labels
from .metrics import pearson_per_head

__all__ = ["FaithfulnessReport", "faithfulness", "plot_faithfulness", "predict_gp_and_ann"]


@dataclass(frozen=True)
class FaithfulnessReport:
    """Faithfulness of a GPEX model to the network it explains, on one dataset.

    :ivar pearson_per_head: Pearson correlation of GP mean and network output per head;
        ``None`` for heads on which the network's output is constant (correlation undefined).
    :ivar pearson_mean: mean over the non-constant heads.
    :ivar pearson_min: their minimum.
    :ivar constant_heads: heads excluded from the mean because the network's output is constant.
    :ivar ann_accuracy: the network's accuracy (classifiers with labelled data), else ``None``.
    :ivar gp_accuracy: accuracy of the argmax of the GP means.
    :ivar agreement: fraction of inputs where the GP's argmax equals the network's.
    :ivar num_samples: inputs evaluated.
    """

    pearson_per_head: list[float | None]
    pearson_mean: float
    pearson_min: float
    constant_heads: list[int]
    ann_accuracy: float | None
    gp_accuracy: float | None
    agreement: float | None
    num_samples: int

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON (written to ``path`` too when given)."""
        text = json.dumps(asdict(self), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


@torch.no_grad()
def predict_gp_and_ann(
    model: GPEXModel, ann: nn.Module, dataset: Dataset, batch_size: int = 512
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """GP means, GP variances, network outputs (each ``(N, H)``) and labels (or ``None``) on ``dataset``.

    :raises NonFiniteError: the network's outputs hold NaN or inf (the rows and heads are named):
        a NaN head would otherwise drop out of the faithfulness mean unnoticed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    length = dataset_length(dataset, "dataset")
    device = model.covar_module.embeddings.device
    means, variances, outputs, labels = [], [], [], []
    with eval_mode(ann):
        for start in range(0, length, batch_size):
            idx = torch.arange(start, min(start + batch_size, length))
            x = take_inputs(dataset, idx).to(device)
            mean, variance = model.predict(x)
            means.append(mean.cpu())
            variances.append(variance.cpu())
            outputs.append(ann(x).cpu())
            labels.append(take_labels(dataset, idx))
    ann_out = torch.cat(outputs)
    if ann_out.dim() != 2 or ann_out.shape[1] != model.num_heads:
        raise ValueError(f"ann: expected outputs of shape (N, {model.num_heads}), got {tuple(ann_out.shape)}")
    bad = ~torch.isfinite(ann_out)
    if bool(bad.any()):
        rows, heads = bad.any(1).nonzero().flatten(), bad.any(0).nonzero().flatten()
        raise NonFiniteError(
            f"ann: expected finite outputs, got NaN or inf on dataset rows {rows[:10].tolist()} "
            f"(heads {heads[:10].tolist()})"
        )
    label_tensor = None if any(lab is None for lab in labels) else torch.cat(labels)  # type: ignore[arg-type]
    return torch.cat(means), torch.cat(variances), ann_out, label_tensor


def faithfulness(
    model: GPEXModel,
    ann: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 512,
    classifier: bool | None = None,
    constant_tol: float = 1e-6,
) -> FaithfulnessReport:
    """Per-head Pearson correlation between GP means and network outputs on ``dataset``, and
    for classifiers the accuracy of both (argmax over heads) and their agreement.

    :param classifier: treat the heads as class scores (default: when there are several heads and
        the dataset has labels).
    :param constant_tol: heads whose network output has a standard deviation below this are
        reported as constant and excluded from the mean.
    """
    mean, _, ann_out, labels = predict_gp_and_ann(model, ann, dataset, batch_size)
    constant = (
        (ann_out.double().std(0) <= constant_tol)
        if ann_out.shape[0] > 1
        else torch.ones(ann_out.shape[1], dtype=torch.bool)
    )
    corr = pearson_per_head(mean, ann_out)
    corr[constant] = float("nan")
    valid = corr[~corr.isnan()]
    is_classifier = (labels is not None and ann_out.shape[1] > 1) if classifier is None else classifier
    ann_acc = gp_acc = agreement = None
    if is_classifier:
        gp_pred, ann_pred = mean.argmax(1), ann_out.argmax(1)
        agreement = float((gp_pred == ann_pred).double().mean())
        if labels is not None:
            ann_acc = float((ann_pred == labels).double().mean())
            gp_acc = float((gp_pred == labels).double().mean())
    return FaithfulnessReport(
        pearson_per_head=[None if math.isnan(c) else float(c) for c in corr.tolist()],
        pearson_mean=float(valid.mean()) if valid.numel() else float("nan"),
        pearson_min=float(valid.min()) if valid.numel() else float("nan"),
        constant_heads=constant.nonzero().flatten().tolist(),
        ann_accuracy=ann_acc,
        gp_accuracy=gp_acc,
        agreement=agreement,
        num_samples=int(ann_out.shape[0]),
    )


def plot_faithfulness(
    gp_mean: Tensor,
    ann_output: Tensor,
    path: str | Path,
    *,
    max_heads: int = 16,
    head_names: Sequence[str] | None = None,
) -> Path:
    """Scatter of GP mean against network output, one panel per head, saved as a PNG.

    :param head_names: a title per head (e.g. class names), instead of ``head l``.
    """
    check_tensor("gp_mean", gp_mean, ndim=2)
    check_tensor("ann_output", ann_output, shape=tuple(gp_mean.shape))
    if isinstance(max_heads, bool) or not isinstance(max_heads, int) or max_heads < 1:
        raise ValueError(f"max_heads: expected an integer >= 1, got {max_heads!r}")
    if head_names is not None and len(head_names) != gp_mean.shape[1]:
        raise ValueError(f"head_names: expected {gp_mean.shape[1]} names (one per head), got {len(head_names)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = min(gp_mean.shape[1], max_heads)
    cols = min(heads, 5)
    rows = -(-heads // cols)
    corr = pearson_per_head(gp_mean, ann_output)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for head, ax in enumerate(axes.flat):
        if head >= heads:
            ax.axis("off")
            continue
        a, g = ann_output[:, head].numpy(), gp_mean[:, head].numpy()
        ax.scatter(a, g, s=4, alpha=0.5)
        low, high = float(min(a.min(), g.min())), float(max(a.max(), g.max()))
        ax.plot([low, high], [low, high], color="black", linewidth=0.8)
        name = f"head {head}" if head_names is None else str(head_names[head])
        ax.set_title(f"{name}: r = {corr[head]:.4f}", fontsize=9)
        ax.set_xlabel("ANN output", fontsize=8)
        ax.set_ylabel("GP mean", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
