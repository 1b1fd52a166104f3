"""Baseline pathways: random, top-k activation, gradient x activation and class-mean gradient x activation masks.

(Formerly ``pathways.baselines``; renamed so that "baselines" alone no longer names two things: these
mask baselines and the dataset-debugging package :mod:`gpex_gpytorch.explain.debugging_baselines`.)

Each baseline is a per-channel *score* turned into a binary mask by keeping the ``k`` highest
scores of each instance and layer (:func:`top_k_masks`). Comparisons "at equal sparsity" use
:func:`matched_counts`: ``k`` is taken from a reference pathway (the generator's) per instance and
per layer, so a baseline keeps exactly as many channels of each layer of each input as the
generator did -- the generator's instance-specific sparsity is matched, not just its average.

The class-mean baseline (:func:`class_mean_scores`, :func:`class_scores_for`) averages gradient x
activation scores over the training inputs the network assigns to each class, once; at test time
an input's channel scores are its predicted class's row, looked up without a backward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from gpex_gpytorch.explain.pathways.channel_masks import capture_outputs, channel_dim, resolve_layers
from gpex_gpytorch.utils.deprecation import deprecated_alias

__all__ = [
    "ActivationReduce",
    "activation_scores",
    "class_mean_scores",
    "class_scores_for",
    "gradient_x_activation_scores",
    "matched_counts",
    "random_channel_scores",
    "top_k_masks",
]

ActivationReduce = Literal["mean_relu", "mean_abs", "mean"]


def matched_counts(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Number of kept channels ``(N,)`` (int64) of each instance in each layer of binary ``masks``."""
    for name, mask in masks.items():
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"masks[{name!r}]: expected shape (N, C), got {got}")
    return {n: (m > 0.5).sum(dim=1).long() for n, m in masks.items()}


def top_k_masks(scores: Mapping[str, Tensor], counts: Mapping[str, Tensor | int]) -> dict[str, Tensor]:
    """Binary masks keeping the ``counts[layer][i]`` highest-scoring channels of instance ``i``.

    :param scores: ``{layer: (N, C)}``; ties are broken towards the lower channel index.
    :param counts: ``{layer: (N,) or int}`` channels to keep, each in ``[0, C]``.
    """
    if set(scores) != set(counts):
        raise ValueError(f"counts: expected the layers of scores {sorted(scores)}, got {sorted(counts)}")
    masks: dict[str, Tensor] = {}
    for name, score in scores.items():
        if score.dim() != 2:
            raise ValueError(f"scores[{name!r}]: expected shape (N, C), got {tuple(score.shape)}")
        n, c = score.shape
        k = torch.as_tensor(counts[name], device=score.device).long().expand(n)
        if bool((k < 0).any()) or bool((k > c).any()):
            low, high = int(k.min()), int(k.max())
            raise ValueError(f"counts[{name!r}]: expected values in [0, {c}], got range [{low}, {high}]")
        order = torch.sort(score, dim=1, descending=True, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(c, device=score.device).expand(n, c))
        masks[name] = (ranks < k[:, None]).to(torch.float32)
    return masks


def random_channel_scores(channels: Mapping[str, int], n: int, *, seed: int = 0) -> dict[str, Tensor]:
    """I.i.d. uniform channel scores ``{layer: (n, C)}``.

    With :func:`top_k_masks` they give uniformly random masks of a given size.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    for name, c in channels.items():
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"channels[{name!r}]: expected an integer >= 1, got {c!r}")
    rng = torch.Generator().manual_seed(seed)
    return {name: torch.rand(n, c, generator=rng) for name, c in channels.items()}


random_scores = deprecated_alias(
    random_channel_scores, "random_scores", reason="debugging_baselines.random_scores ranks training instances"
)


def _reduce(module: nn.Module, output: Tensor, reduce: ActivationReduce) -> Tensor:
    dim = channel_dim(module, output)
    moved = output.movedim(dim, -1).reshape(output.shape[0], -1, output.shape[dim])
    if reduce == "mean_relu":
        return moved.clamp_min(0).mean(dim=1)
    if reduce == "mean_abs":
        return moved.abs().mean(dim=1)
    if reduce == "mean":
        return moved.mean(dim=1)
    raise ValueError(f"reduce: expected 'mean_relu', 'mean_abs' or 'mean', got {reduce!r}")


def activation_scores(
    model: nn.Module, x: Tensor, layers: Sequence[str], *, reduce: ActivationReduce = "mean_relu"
) -> dict[str, Tensor]:
    """Per-channel activation strength ``{layer: (N, C)}`` of the unmasked network on ``x``.

    :param reduce: how a channel's outputs are reduced over positions. ``"mean_relu"`` (default)
        averages ``max(out, 0)``: for a layer followed by a ReLU, that is exactly what removing the
        channel takes away downstream. ``"mean_abs"`` is the usual magnitude criterion for layers
        not followed by a ReLU.
    """
    modules = resolve_layers(model, layers)
    with torch.no_grad(), capture_outputs(model, layers, detach=True) as outputs:
        model(x)
    return {n: _reduce(modules[n], outputs[n], reduce) for n in modules}


def gradient_x_activation_scores(
    model: nn.Module, x: Tensor, layers: Sequence[str], *, classes: Tensor | None = None
) -> dict[str, Tensor]:
    """First-order (Taylor) contribution of each channel to the logit of the explained class.

    Score of channel ``c`` = ``sum over positions of d logit_y / d out_c * out_c``: removing the
    channel changes the logit by about minus this amount, so high positive scores mark channels
    that support the prediction (signed, not absolute: a channel voting against ``y`` should not be
    kept for faithfulness).

    :param classes: ``(N,)`` class to explain per instance; defaults to the network's prediction.
    """
    modules = resolve_layers(model, layers)
    # Inputs that require grad make every captured output differentiable even with a frozen model.
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), capture_outputs(model, layers) as outputs:
        logits = model(x)
        if classes is None:
            classes = logits.argmax(dim=1)
        if classes.shape != (x.shape[0],):
            raise ValueError(f"classes: expected shape ({x.shape[0]},), got {tuple(classes.shape)}")
        selected = logits.gather(1, classes[:, None].to(logits.device)).sum()
        captured = [outputs[n] for n in modules]
        grads = torch.autograd.grad(selected, captured)
    scores: dict[str, Tensor] = {}
    for (name, module), out, grad in zip(modules.items(), captured, grads, strict=True):
        dim = channel_dim(module, out)
        prod = (grad * out).detach().movedim(dim, -1)
        scores[name] = prod.reshape(out.shape[0], -1, out.shape[dim]).sum(dim=1)
    return scores


def class_mean_scores(scores: Mapping[str, Tensor], classes: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Mean channel score of each class: ``{layer: (num_classes, C)}`` from per-instance ``{layer: (N, C)}``.

    :param scores: e.g. :func:`gradient_x_activation_scores` on the training inputs.
    :param classes: ``(N,)`` the class of each instance (normally the network's prediction).
    :param num_classes: ``K``; a class without instances gets a row of zeros (ties: the lower
        channel indices are kept first by :func:`top_k_masks`).
    :raises ValueError: ``classes`` of the wrong shape or outside ``[0, K)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected an integer >= 1, got {num_classes!r}")
    result: dict[str, Tensor] = {}
    for name, score in scores.items():
        if score.dim() != 2:
            raise ValueError(f"scores[{name!r}]: expected shape (N, C), got {tuple(score.shape)}")
        if classes.shape != (score.shape[0],):
            raise ValueError(f"classes: expected shape ({score.shape[0]},), got {tuple(classes.shape)}")
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise ValueError(
                f"classes: expected values in [0, {num_classes}), got [{int(classes.min())}, {int(classes.max())}]"
            )
        index = classes.to(score.device).long()
        sums = torch.zeros(num_classes, score.shape[1], dtype=torch.float64, device=score.device)
        sums.index_add_(0, index, score.to(torch.float64))
        counts = torch.bincount(index, minlength=num_classes).to(torch.float64).clamp_min(1.0)
        result[name] = (sums / counts[:, None]).to(score.dtype)
    return result


def class_scores_for(class_scores: Mapping[str, Tensor], classes: Tensor) -> dict[str, Tensor]:
    """Per-instance scores ``{layer: (N, C)}``: the row of each instance's class in ``{layer: (K, C)}``."""
    result: dict[str, Tensor] = {}
    for name, table in class_scores.items():
        if table.dim() != 2:
            raise ValueError(f"class_scores[{name!r}]: expected shape (K, C), got {tuple(table.shape)}")
        if classes.dim() != 1 or (classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= table.shape[0])):
            raise ValueError(
                f"classes: expected a (N,) tensor of values in [0, {table.shape[0]}), got {classes.tolist()[:8]}"
            )
        result[name] = table[classes.to(table.device).long()]
    return result
