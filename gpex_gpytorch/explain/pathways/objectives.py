"""Training objectives of the pathway generator: faithfulness, instance-specific sparsity, class relevance.

All functions take masks as ``{layer name: (B, C_l)}`` dicts and return scalar tensors (means over
the batch) unless stated otherwise. The exact forms, and why they were chosen, are documented in
``docs/pathways.md``:

* **faithfulness** -- knowledge distillation of the full network into the masked one: the KL
  divergence ``KL(p_full^T || p_masked^T)`` between temperature-softened class distributions,
  scaled by ``T**2`` so its gradient size does not depend on ``T`` (Hinton et al.'s convention).
* **instance-specific sparsity** -- each instance pays for the density of its own mask (mean of
  the per-layer densities, every layer weighted equally), but only while its masked network is
  still faithful: the penalty is multiplied by a detached *faithfulness gate* in ``[0, 1]``. An
  instance whose pathway already lost the prediction feels only the distillation term, which grows
  the pathway back. Each instance therefore settles at its own density, close to the smallest one
  that keeps its prediction, instead of at one global keep ratio shared by all inputs.
* **class relevance** -- a supervised contrastive loss on the (per-layer normalised, concatenated)
  soft masks, with the class predicted by the *full network* as the label: pathways of inputs the
  network assigns to the same class are pulled together, others pushed apart. A prototype
  variant (squared distance to the batch class mean) is also provided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GateKind",
    "PathwayObjective",
    "RelevanceKind",
    "class_relevance_loss",
    "faithfulness_gate",
    "faithfulness_loss",
    "flatten_masks",
    "mask_density",
    "prototype_loss",
    "sparsity_loss",
]

GateKind = Literal["confidence", "agreement", "none"]
RelevanceKind = Literal["contrastive", "prototype", "none"]


def _check_logits(masked_logits: Tensor, full_logits: Tensor) -> None:
    if masked_logits.shape != full_logits.shape or masked_logits.dim() != 2:
        raise ValueError(
            f"masked_logits: expected the shape of full_logits (B, K) = {tuple(full_logits.shape)}, "
            f"got {tuple(masked_logits.shape)}"
        )


def faithfulness_loss(masked_logits: Tensor, full_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Distillation loss ``T^2 * KL(softmax(full/T) || softmax(masked/T))`` averaged over the batch.

    :param masked_logits: ``(B, K)`` logits of the masked network (differentiable).
    :param full_logits: ``(B, K)`` logits of the full network (treated as a constant).
    :param temperature: softening temperature ``T > 0``.
    """
    _check_logits(masked_logits, full_logits)
    if not temperature > 0:
        raise ValueError(f"temperature: expected a value > 0, got {temperature}")
    target = F.log_softmax(full_logits.detach() / temperature, dim=1)
    student = F.log_softmax(masked_logits / temperature, dim=1)
    return F.kl_div(student, target, log_target=True, reduction="batchmean") * temperature**2


def mask_density(masks: Mapping[str, Tensor]) -> Tensor:
    """Per-instance density ``(B,)``: mean over layers of the fraction of kept channels (layers weigh the same)."""
    if not masks:
        raise ValueError("masks: expected at least one layer")
    return torch.stack([m.mean(dim=1) for m in masks.values()], dim=0).mean(dim=0)


def faithfulness_gate(
    masked_logits: Tensor, full_logits: Tensor, kind: GateKind = "confidence", threshold: float = 0.8
) -> Tensor:
    """Detached per-instance weight ``(B,)`` in ``[0, 1]`` of the sparsity penalty.

    :param kind: ``"confidence"``: with ``r = q(y) / p(y)`` the masked network's probability of the
        full network's predicted class ``y`` relative to the full network's own, the gate is
        ``clamp((r - threshold) / (1 - threshold), 0, 1)``: full pressure while the pathway keeps
        the whole confidence, none once it keeps less than ``threshold`` of it;
        ``"agreement"``: 1 where the masked network predicts ``y``, else 0; ``"none"``: all ones
        (a global L1 penalty, the ablation without instance-specific sparsity).
    :param threshold: ``threshold`` of the ``"confidence"`` gate, in ``[0, 1)``.
    """
    _check_logits(masked_logits, full_logits)
    with torch.no_grad():
        if kind == "none":
            return torch.ones(full_logits.shape[0], dtype=full_logits.dtype, device=full_logits.device)
        predicted = full_logits.argmax(dim=1)
        if kind == "agreement":
            return (masked_logits.argmax(dim=1) == predicted).to(full_logits.dtype)
        if kind == "confidence":
            if not 0.0 <= threshold < 1.0:
                raise ValueError(f"threshold: expected a value in [0, 1), got {threshold}")
            p = F.softmax(full_logits, dim=1).gather(1, predicted[:, None]).squeeze(1)
            q = F.softmax(masked_logits, dim=1).gather(1, predicted[:, None]).squeeze(1)
            ratio = q / p.clamp_min(1e-12)
            return ((ratio - threshold) / (1.0 - threshold)).clamp(0.0, 1.0)
    raise ValueError(f"kind: expected 'confidence', 'agreement' or 'none', got {kind!r}")


def sparsity_loss(masks: Mapping[str, Tensor], gate: Tensor | None = None) -> Tensor:
    """Mean over the batch of ``gate_i * density_i`` (see :func:`mask_density`, :func:`faithfulness_gate`)."""
    density = mask_density(masks)
    if gate is None:
        return density.mean()
    if gate.shape != density.shape:
        raise ValueError(f"gate: expected shape {tuple(density.shape)}, got {tuple(gate.shape)}")
    return (gate.detach() * density).mean()


def flatten_masks(masks: Mapping[str, Tensor], *, normalize: bool = False) -> Tensor:
    """Concatenate per-layer masks into ``(B, sum C_l)``.

    :param normalize: divide each layer's block by its L2 norm and by ``sqrt(number of layers)``
        first, so every layer contributes equally to a cosine similarity (a 1024-unit layer would
        otherwise drown a 16-channel one).
    """
    if not masks:
        raise ValueError("masks: expected at least one layer")
    blocks = list(masks.values())
    if normalize:
        scale = len(blocks) ** 0.5
        blocks = [F.normalize(b, dim=1) / scale for b in blocks]
    return torch.cat(blocks, dim=1)


def _check_classes(classes: Tensor, batch: int) -> None:
    if classes.shape != (batch,):
        raise ValueError(f"classes: expected shape ({batch},), got {tuple(classes.shape)}")


def class_relevance_loss(masks: Mapping[str, Tensor], classes: Tensor, temperature: float = 0.2) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020 form) on cosine similarities of pathways.

    For each anchor ``i`` with at least one other same-class instance in the batch, the loss is
    ``-mean_{j in P(i)} log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) )`` with ``s`` the cosine
    similarity of the layer-normalised masks. Anchors without positives are skipped; a batch with
    none returns zero.
    """
    flat = flatten_masks(masks, normalize=True)
    _check_classes(classes, flat.shape[0])
    if not temperature > 0:
        raise ValueError(f"temperature: expected a value > 0, got {temperature}")
    unit = F.normalize(flat, dim=1)
    logits = unit @ unit.T / temperature
    eye = torch.eye(flat.shape[0], dtype=torch.bool, device=flat.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (classes[:, None] == classes[None, :]) & ~eye
    counts = positives.sum(dim=1)
    valid = counts > 0
    if not bool(valid.any()):
        return flat.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(dim=1)[valid] / counts[valid])
    return per_anchor.mean()


def prototype_loss(masks: Mapping[str, Tensor], classes: Tensor) -> Tensor:
    """Mean squared distance of each (layer-normalised) pathway to its class mean within the batch."""
    flat = flatten_masks(masks, normalize=True)
    _check_classes(classes, flat.shape[0])
    unique, inverse = torch.unique(classes, return_inverse=True)
    sums = torch.zeros(unique.numel(), flat.shape[1], dtype=flat.dtype, device=flat.device)
    sums.index_add_(0, inverse, flat)
    counts = torch.bincount(inverse, minlength=unique.numel()).to(flat.dtype)
    centres = sums / counts[:, None]
    return ((flat - centres[inverse]) ** 2).sum(dim=1).mean()


@dataclass(frozen=True)
class PathwayObjective:
    """The weighted sum of the three terms.

    :ivar sparsity_weight: weight of :func:`sparsity_loss`; trades pathway size against faithfulness.
    :ivar relevance_weight: weight of the class-relevance term.
    :ivar kd_temperature: temperature of :func:`faithfulness_loss`.
    :ivar gate: faithfulness gate of the sparsity term (:func:`faithfulness_gate`).
    :ivar gate_threshold: confidence ratio below which the ``"confidence"`` gate is closed.
    :ivar relevance: ``"contrastive"``, ``"prototype"`` or ``"none"``.
    :ivar relevance_temperature: temperature of the contrastive loss.
    """

    sparsity_weight: float = 10.0
    relevance_weight: float = 0.02
    kd_temperature: float = 2.0
    gate: GateKind = "confidence"
    gate_threshold: float = 0.8
    relevance: RelevanceKind = "contrastive"
    relevance_temperature: float = 0.2

    def __post_init__(self) -> None:
        # Checked here, not at the first training step.
        if self.relevance not in ("contrastive", "prototype", "none"):
            raise ValueError(f"relevance: expected 'contrastive', 'prototype' or 'none', got {self.relevance!r}")
        if self.gate not in ("confidence", "agreement", "none"):
            raise ValueError(f"gate: expected 'confidence', 'agreement' or 'none', got {self.gate!r}")
        for name in ("kd_temperature", "relevance_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a value > 0, got {getattr(self, name)}")
        for name in ("sparsity_weight", "relevance_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a value >= 0, got {getattr(self, name)}")

    def __call__(
        self,
        masks: Mapping[str, Tensor],
        masked_logits: Tensor,
        full_logits: Tensor,
        classes: Tensor | None = None,
        soft_masks: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Evaluate the objective.

        :param masks: the masks the network was run with (possibly straight-through binary).
        :param masked_logits: logits of the masked network.
        :param full_logits: logits of the full network.
        :param classes: class of each instance for the relevance term; defaults to the full
            network's prediction (pathways explain the model, not the labels).
        :param soft_masks: the soft masks behind ``masks``; the sparsity and relevance terms use
            them when given (a binary mask's straight-through gradient is the soft one anyway, and
            the soft density keeps pushing channels that sit just above the threshold).
        :returns: ``{"loss", "faithfulness", "sparsity", "relevance", "density", "gate"}``;
            ``density`` and ``gate`` are detached batch means for logging.
        """
        if classes is None:
            classes = full_logits.argmax(dim=1)
        penalised = soft_masks if soft_masks is not None else masks
        faithful = faithfulness_loss(masked_logits, full_logits, self.kd_temperature)
        gate = faithfulness_gate(masked_logits, full_logits, self.gate, self.gate_threshold)
        sparse = sparsity_loss(penalised, gate)
        if self.relevance == "contrastive":
            relevant = class_relevance_loss(penalised, classes, self.relevance_temperature)
        elif self.relevance == "prototype":
            relevant = prototype_loss(penalised, classes)
        elif self.relevance == "none":
            relevant = faithful.new_zeros(())
        else:
            raise ValueError(f"relevance: expected 'contrastive', 'prototype' or 'none', got {self.relevance!r}")
        loss = faithful + self.sparsity_weight * sparse + self.relevance_weight * relevant
        return {
            "loss": loss,
            "faithfulness": faithful,
            "sparsity": sparse,
            "relevance": relevant,
            "density": mask_density(masks).detach().mean(),
            "gate": gate.mean(),
        }
