"""Metrics of neural pathways: faithfulness, insertion/deletion curves, sparsity, class relevance, transfer.

Conventions (documented in ``docs/pathways.md``):

* masks are ``{layer: (N, C_l)}`` with values in ``{0, 1}`` (entries ``> 0.5`` count as kept);
* **sparsity** of a layer is the fraction of its channels switched off, averaged over instances;
* **IoU** of two masks of one layer is ``|a & b| / |a | b|``, defined as 1 when both are empty
  (two empty pathways are identical); the IoU of two multi-layer pathways is the mean of the
  per-layer IoUs, every layer weighted equally (a 1024-unit layer would otherwise decide alone);
* faithfulness is measured against the **full network's prediction** ``y`` (the pathway explains
  the model): *agreement* = fraction of inputs whose masked prediction is ``y``; *confidence
  ratio* = mean of ``min(q(y) / p(y), 1)`` (masked vs full probability of ``y``); accuracy
  against the labels is reported too when labels are given;
* the GEN-CNP paper's own metrics (:func:`paper_metrics`): **mDC** and **mIC**, the mean drop in
  and the rate of increase in the confidence of ``y`` when the full network is replaced by its
  pathway (GEN-CNP names them after Grad-CAM++'s "Average Drop" and "Increase in Confidence",
  whose definitions are used here, with the masked network in place of the masked image);
  **sparsity** in percent; **acIOU**, the pathway IoU between inputs of the same class averaged
  over pairs and then over classes (every class weighs the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpex_gpytorch.explain.pathways.channel_masks import apply_channel_masks
from gpex_gpytorch.explain.pathways.mask_baselines import top_k_masks
from gpex_gpytorch.utils.deprecation import deprecated_alias

__all__ = [
    "ClassIoU",
    "DeletionInsertion",
    "class_iou",
    "class_pathways",
    "deletion_insertion_curves",
    "layer_sparsity",
    "fraction_masks",
    "mask_iou",
    "masked_logits",
    "minimal_faithful_masks",
    "paper_metrics",
    "pairwise_iou",
    "pathway_faithfulness",
    "transfer_faithfulness",
]


def _binary(name: str, mask: Tensor) -> Tensor:
    if mask.dim() != 2:
        raise ValueError(f"masks[{name!r}]: expected shape (N, C), got {tuple(mask.shape)}")
    return (mask > 0.5).to(torch.float32)


def _check_masks(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if not masks:
        raise ValueError("masks: expected at least one layer")
    binary = {n: _binary(n, m) for n, m in masks.items()}
    sizes = {m.shape[0] for m in binary.values()}
    if len(sizes) != 1:
        raise ValueError(f"masks: expected the same number of instances in every layer, got {sorted(sizes)}")
    return binary


def layer_sparsity(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Fraction of switched-off channels per layer, averaged over instances."""
    return {n: float(1.0 - m.mean()) for n, m in _check_masks(masks).items()}


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of binary masks along the last dimension (broadcasting the others); 1 where both are empty."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"b: expected {a.shape[-1]} channels in the last dimension like a, got {b.shape[-1]}")
    a, b = (a > 0.5).to(torch.float32), (b > 0.5).to(torch.float32)
    intersection = (a * b).sum(dim=-1)
    union = a.sum(dim=-1) + b.sum(dim=-1) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1.0), torch.ones_like(union))


def pairwise_iou(masks: Mapping[str, Tensor] | Tensor) -> Tensor:
    """``(N, N)`` IoU between all pairs of pathways (mean of per-layer IoUs for a dict of layers)."""
    layers = _check_masks({"mask": masks} if isinstance(masks, Tensor) else masks)
    total: Tensor | None = None
    for m in layers.values():
        intersection = m @ m.T
        sizes = m.sum(dim=1)
        union = sizes[:, None] + sizes[None, :] - intersection
        iou = torch.where(union > 0, intersection / union.clamp_min(1.0), torch.ones_like(union))
        total = iou if total is None else total + iou
    assert total is not None
    return total / len(layers)


@dataclass(frozen=True)
class ClassIoU:
    """Class relevance of pathways.

    :ivar intra: mean IoU over pairs ``i != j`` of the same class.
    :ivar inter: mean IoU over pairs of different classes.
    :ivar per_class: ``{class: mean intra-class IoU}`` (``acIOU``-style per class figure).
    """

    intra: float
    inter: float
    per_class: dict[int, float]

    @property
    def ratio(self) -> float:
        """``intra / inter`` (``inf`` when ``inter`` is 0)."""
        return self.intra / self.inter if self.inter > 0 else float("inf")


def class_iou(masks: Mapping[str, Tensor] | Tensor, classes: Tensor) -> ClassIoU:
    """Mean intra-class and inter-class pathway IoU (see :func:`pairwise_iou`)."""
    iou = pairwise_iou(masks)
    n = iou.shape[0]
    if classes.shape != (n,):
        raise ValueError(f"classes: expected shape ({n},), got {tuple(classes.shape)}")
    same = classes[:, None] == classes[None, :]
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    intra_pairs, inter_pairs = same & off_diagonal, ~same
    per_class: dict[int, float] = {}
    for c in torch.unique(classes).tolist():
        rows = classes == c
        block = intra_pairs & rows[:, None]
        if bool(block.any()):
            per_class[int(c)] = float(iou[block].mean())
    intra = float(iou[intra_pairs].mean()) if bool(intra_pairs.any()) else float("nan")
    inter = float(iou[inter_pairs].mean()) if bool(inter_pairs.any()) else float("nan")
    return ClassIoU(intra=intra, inter=inter, per_class=per_class)


def masked_logits(model: nn.Module, x: Tensor, masks: Mapping[str, Tensor], *, batch_size: int = 512) -> Tensor:
    """Logits of ``model`` on ``x`` with per-instance ``masks`` ``{layer: (N, C)}``, in chunks, without gradients."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    out: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            chunk = {n: m[start : start + batch_size] for n, m in masks.items()}
            with apply_channel_masks(model, chunk):
                out.append(model(x[start : start + batch_size]))
    return torch.cat(out)


def _full_logits(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])


def _scores(masked: Tensor, full: Tensor) -> tuple[float, float]:
    predicted = full.argmax(dim=1)
    agreement = float((masked.argmax(dim=1) == predicted).float().mean())
    p = F.softmax(full, dim=1).gather(1, predicted[:, None])
    q = F.softmax(masked, dim=1).gather(1, predicted[:, None])
    ratio = float((q / p.clamp_min(1e-12)).clamp(max=1.0).mean())
    return agreement, ratio


def pathway_faithfulness(
    model: nn.Module,
    x: Tensor,
    masks: Mapping[str, Tensor],
    *,
    labels: Tensor | None = None,
    full_logits: Tensor | None = None,
) -> dict[str, float]:
    """Faithfulness of the masked network (the pathway) to the full one on ``x``.

    Not to be confused with :func:`gpex_gpytorch.faithfulness`, which measures how well a GP
    matches the network it explains and returns a :class:`~gpex_gpytorch.FaithfulnessReport`.

    :returns: ``agreement``, ``confidence_ratio``, ``kl`` (mean ``KL(p_full || p_masked)``), and
        with ``labels`` also ``accuracy`` (masked) and ``full_accuracy``.
    """
    masks = _check_masks(masks)
    n = next(iter(masks.values())).shape[0]
    if x.shape[0] != n:
        raise ValueError(f"x: expected {n} inputs to match the masks, got {x.shape[0]}")
    full = _full_logits(model, x) if full_logits is None else full_logits
    masked = masked_logits(model, x, masks)
    agreement, ratio = _scores(masked, full)
    kl = F.kl_div(F.log_softmax(masked, 1), F.log_softmax(full, 1), log_target=True, reduction="batchmean")
    result = {"agreement": agreement, "confidence_ratio": ratio, "kl": float(kl)}
    if labels is not None:
        if labels.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},), got {tuple(labels.shape)}")
        result["accuracy"] = float((masked.argmax(1) == labels).float().mean())
        result["full_accuracy"] = float((full.argmax(1) == labels).float().mean())
    return result


faithfulness = deprecated_alias(
    pathway_faithfulness, "faithfulness", reason="gpex_gpytorch.faithfulness is the GP-vs-network report"
)


@dataclass(frozen=True)
class DeletionInsertion:
    """Faithfulness as a function of the fraction of channels kept (insertion) or removed (deletion).

    At fraction ``f`` every layer keeps (insertion) or loses (deletion) its ``ceil(f * C_l)``
    highest-scoring channels, per instance. Higher insertion and lower deletion curves mean a
    ranking that puts the channels the prediction relies on first.

    :ivar fractions: the fractions ``f``.
    :ivar insertion_agreement: agreement with the full network after keeping the top fraction.
    :ivar insertion_confidence: confidence ratio after keeping the top fraction.
    :ivar deletion_agreement: agreement after removing the top fraction.
    :ivar deletion_confidence: confidence ratio after removing the top fraction.
    """

    fractions: list[float]
    insertion_agreement: list[float]
    insertion_confidence: list[float]
    deletion_agreement: list[float]
    deletion_confidence: list[float]

    def auc(self, curve: str) -> float:
        """Trapezoidal area under one of the curves (by attribute name) over ``fractions``."""
        values = getattr(self, curve)
        xs = torch.tensor(self.fractions, dtype=torch.float64)
        return float(torch.trapezoid(torch.tensor(values, dtype=torch.float64), xs))


def deletion_insertion_curves(
    model: nn.Module,
    x: Tensor,
    scores: Mapping[str, Tensor],
    fractions: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
    *,
    full_logits: Tensor | None = None,
) -> DeletionInsertion:
    """Insertion and deletion curves of a channel ranking ``scores`` ``{layer: (N, C)}`` (higher = more important)."""
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"fractions: expected values in [0, 1], got {fractions}")
    full = _full_logits(model, x) if full_logits is None else full_logits
    curves: dict[str, list[float]] = {k: [] for k in ("ia", "ic", "da", "dc")}
    for f in fractions:
        keep = {n: int(torch.tensor(f * s.shape[1]).ceil()) for n, s in scores.items()}
        inserted = top_k_masks(scores, keep)
        deleted = {n: 1.0 - m for n, m in top_k_masks(scores, keep).items()}
        a, c = _scores(masked_logits(model, x, inserted), full)
        curves["ia"].append(a)
        curves["ic"].append(c)
        a, c = _scores(masked_logits(model, x, deleted), full)
        curves["da"].append(a)
        curves["dc"].append(c)
    return DeletionInsertion(fractions, curves["ia"], curves["ic"], curves["da"], curves["dc"])


def class_pathways(
    masks: Mapping[str, Tensor], classes: Tensor, num_classes: int, *, quorum: float = 0.5
) -> dict[str, Tensor]:
    """One pathway per class: a channel is in class ``k``'s pathway when at least ``quorum`` of its instances keep it.

    :returns: ``{layer: (num_classes, C)}`` binary; a class without instances gets an all-ones row
        (the full network, the neutral choice).
    """
    masks = _check_masks(masks)
    n = next(iter(masks.values())).shape[0]
    if classes.shape != (n,):
        raise ValueError(f"classes: expected shape ({n},), got {tuple(classes.shape)}")
    if not 0.0 < quorum <= 1.0:
        raise ValueError(f"quorum: expected a value in (0, 1], got {quorum}")
    result: dict[str, Tensor] = {}
    for name, m in masks.items():
        rows = torch.ones(num_classes, m.shape[1])
        for k in range(num_classes):
            members = classes == k
            if bool(members.any()):
                rows[k] = (m[members].mean(dim=0) >= quorum).to(torch.float32)
        result[name] = rows
    return result


def transfer_faithfulness(
    model: nn.Module,
    x: Tensor,
    pathways: Mapping[str, Tensor],
    *,
    full_logits: Tensor | None = None,
) -> dict[str, float]:
    """Faithfulness when each input runs on the pathway of its (predicted) class, learnt on *other* inputs.

    :param pathways: ``{layer: (K, C)}`` class pathways (:func:`class_pathways` on training inputs).
    :returns: ``agreement`` and ``confidence_ratio`` with the own-class pathway, the same with the
        pathway of the next class ``(y + 1) mod K`` as a control (``*_other_class``), and
        ``density`` (mean kept fraction of the pathways used).
    """
    if not pathways:
        raise ValueError("pathways: expected at least one layer")
    for name, pathway in pathways.items():
        if not isinstance(pathway, Tensor) or pathway.dim() != 2:
            got = tuple(pathway.shape) if isinstance(pathway, Tensor) else type(pathway).__name__
            raise ValueError(f"pathways[{name!r}]: expected shape (K, C), one row per class, got {got}")
    full = _full_logits(model, x) if full_logits is None else full_logits
    predicted = full.argmax(dim=1)
    num_classes = next(iter(pathways.values())).shape[0]
    if int(predicted.max()) >= num_classes:
        raise ValueError(f"pathways: expected a row per class, got {num_classes} rows for {full.shape[1]} classes")
    own = {n: p[predicted] for n, p in pathways.items()}
    other = {n: p[(predicted + 1) % num_classes] for n, p in pathways.items()}
    agreement, ratio = _scores(masked_logits(model, x, own), full)
    other_agreement, other_ratio = _scores(masked_logits(model, x, other), full)
    density = float(torch.stack([m.mean() for m in own.values()]).mean())
    return {
        "agreement": agreement,
        "confidence_ratio": ratio,
        "agreement_other_class": other_agreement,
        "confidence_ratio_other_class": other_ratio,
        "density": density,
    }


def paper_metrics(
    model: nn.Module,
    x: Tensor,
    masks: Mapping[str, Tensor],
    *,
    classes: Tensor | None = None,
    full_logits: Tensor | None = None,
) -> dict[str, float]:
    """GEN-CNP's metrics of pathways ``{layer: (N, C)}`` on ``x`` (see the module docs), in percent.

    With ``p_i`` the full network's probability of its prediction ``y_i`` and ``q_i`` the masked
    network's probability of the same class:

    * ``mDC = 100 · mean_i max(0, p_i - q_i) / p_i`` (lower is better);
    * ``mIC = 100 · mean_i [q_i > p_i]`` (higher is better);
    * ``sparsity = 100 · (1 - mean kept fraction)``, layers weighted equally;
    * ``acIOU = 100 · mean over classes of the mean IoU over same-class pairs`` (needs two inputs
      of a class; ``classes`` defaults to ``y``).
    """
    masks = _check_masks(masks)
    n = next(iter(masks.values())).shape[0]
    if x.shape[0] != n:
        raise ValueError(f"x: expected {n} inputs to match the masks, got {x.shape[0]}")
    full = _full_logits(model, x) if full_logits is None else full_logits
    predicted = full.argmax(dim=1)
    classes = predicted if classes is None else classes
    masked = masked_logits(model, x, masks)
    p = F.softmax(full.double(), dim=1).gather(1, predicted[:, None]).squeeze(1)
    q = F.softmax(masked.double(), dim=1).gather(1, predicted[:, None]).squeeze(1)
    drop = ((p - q).clamp_min(0.0) / p.clamp_min(1e-300)).mean()
    increase = (q > p).double().mean()
    density = torch.stack([m.mean() for m in masks.values()]).mean()
    per_class = class_iou(masks, classes).per_class
    return {
        "mDC": 100.0 * float(drop),
        "mIC": 100.0 * float(increase),
        "sparsity": 100.0 * float(1.0 - density),
        "acIOU": 100.0 * float(sum(per_class.values()) / len(per_class)) if per_class else float("nan"),
    }


def fraction_masks(scores: Mapping[str, Tensor], fraction: float | Tensor) -> dict[str, Tensor]:
    """Keep the ``ceil(fraction · C_l)`` highest-scoring channels of every layer (per instance).

    :param fraction: one value in ``(0, 1]`` for all instances, or ``(N,)`` values, one per instance.
    :raises ValueError: a fraction outside ``(0, 1]``.
    """
    f = torch.as_tensor(fraction, dtype=torch.float64)
    if f.dim() > 1 or bool(((f <= 0) | (f > 1) | torch.isnan(f)).any()):
        raise ValueError(f"fraction: expected values in (0, 1], got {f.tolist()}")
    # the tolerance absorbs float32 fractions (0.2 in float32 is 0.2000000030, and 5 x that must keep 1)
    counts = {n: torch.ceil(f * s.shape[1] - 1e-5).long() for n, s in scores.items()}
    return top_k_masks(scores, counts)


def minimal_faithful_masks(
    model: nn.Module,
    x: Tensor,
    scores: Mapping[str, Tensor],
    fractions: Sequence[float] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0),
    *,
    min_confidence_ratio: float = 0.0,
    full_logits: Tensor | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Per instance, the smallest fraction of a channel ranking that keeps the full network's prediction.

    An *instance-specific* sparsity obtained by search rather than learnt: for every input, the
    smallest ``f`` in ``fractions`` whose :func:`fraction_masks` keep the prediction ``y`` (and,
    optionally, at least ``min_confidence_ratio`` of ``p(y)``). It costs one masked forward pass
    per fraction and needs no gradient; an input that no fraction satisfies keeps the largest one.

    :returns: the masks and the ``(N,)`` fraction chosen for each input.
    :raises ValueError: ``fractions`` empty or outside ``(0, 1]``, ``min_confidence_ratio`` outside ``[0, 1]``.
    """
    grid = sorted(float(f) for f in fractions)
    if not grid or grid[0] <= 0.0 or grid[-1] > 1.0:
        raise ValueError(f"fractions: expected values in (0, 1], got {list(fractions)}")
    if not 0.0 <= min_confidence_ratio <= 1.0:
        raise ValueError(f"min_confidence_ratio: expected a value in [0, 1], got {min_confidence_ratio}")
    full = _full_logits(model, x) if full_logits is None else full_logits
    predicted = full.argmax(dim=1)
    p = F.softmax(full, dim=1).gather(1, predicted[:, None]).squeeze(1)
    chosen = torch.full((x.shape[0],), grid[-1], dtype=torch.float64)
    settled = torch.zeros(x.shape[0], dtype=torch.bool)
    for f in grid:
        masked = masked_logits(model, x, fraction_masks(scores, f))
        q = F.softmax(masked, dim=1).gather(1, predicted[:, None]).squeeze(1)
        ok = (masked.argmax(dim=1) == predicted) & (q >= min_confidence_ratio * p)
        new = ok.cpu() & ~settled
        chosen[new] = f
        settled |= ok.cpu()
        if bool(settled.all()):
            break
    return fraction_masks(scores, chosen), chosen
