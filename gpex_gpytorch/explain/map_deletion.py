r"""A deletion test for pixel rankings: does removing the top-ranked pixels remove the kernel similarity?

A similarity map claims that some pixels of an input make it similar to a neighbour. The deletion
test checks the claim: set the top-:math:`q` fraction of the input's pixels (ranked by the map) to
a background value, keep the neighbour as it is, and recompute the kernel similarity with the
current kernel network,

.. math::

    s(q) = k_l\bigl(x_{-\text{top}(q)}, \tilde x\bigr) = f_l(x_{-\text{top}(q)})^\top f_l(\tilde x).

A ranking that finds the pixels the similarity rests on makes :math:`s(q)/s(0)` fall fast; the
area under that curve over the fractions tried (normalised to the fractions' range) is the score:
lower is better. Any ranking can be tested the same way, which is how maps are compared with
baselines at the same :math:`q`:

* :func:`random_ink_scores` — pixels that carry ink (differ from the background), in random
  order, then the background pixels: deleting a background pixel changes nothing, so this is the
  baseline a map must beat *just* to show it knows where the ink is;
* :func:`gradient_input_scores` — gradient × (input − background) of the similarity, summed over
  channels: the first-order estimate of what deleting each pixel does;
* :func:`map_pixel_scores` — a similarity map, brought to pixel resolution;
* :func:`ink_first` — any ranking restricted to the ink first (its order among the ink pixels,
  then among the background): compared with random-ink, it asks whether the ranking orders the ink
  better than chance, given the same knowledge of where the ink is.

A deleted pixel is a spatial position: every channel there is set to the background. Pixels are
taken in descending score order, ties in index order (a stable sort); the number deleted at
fraction :math:`q` is :math:`\lfloor qP + 1/2 \rfloor` of the :math:`P` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..kernels import CachedDeepKernel
from ..models.gpex_model import GPEXModel
from ..utils import check_tensor

__all__ = [
    "DeletionCurves",
    "deletion_curves",
    "gradient_input_scores",
    "ink_first",
    "map_pixel_scores",
    "random_ink_scores",
]


@dataclass(frozen=True)
class DeletionCurves:
    """Kernel similarity of ``N`` (input, reference) pairs as the top-ranked input pixels are deleted.

    :ivar fractions: ``(Q,)`` the fractions of pixels deleted (ascending, the first is 0 or the smallest).
    :ivar counts: ``(Q,)`` the number of pixels deleted at each fraction.
    :ivar similarities: ``(N, Q)`` the similarity after each deletion (float64).
    :ivar relative: ``(N, Q)`` ``similarities`` over the similarity with nothing deleted.
    :ivar area: ``(N,)`` trapezoid area under ``relative`` over ``fractions``, divided by the
        fractions' range (1 = no drop at all, 0 = gone at once; lower is a better ranking).
    """

    fractions: Tensor
    counts: Tensor
    similarities: Tensor
    relative: Tensor
    area: Tensor

    def summary(self) -> dict[str, object]:
        """Mean curve and mean area, for JSON."""
        return {
            "fractions": self.fractions.tolist(),
            "counts": self.counts.tolist(),
            "mean_relative": self.relative.mean(0).tolist(),
            "mean_area": float(self.area.mean()),
            "num_pairs": int(self.area.numel()),
        }


def _kernel(model: GPEXModel | CachedDeepKernel) -> CachedDeepKernel:
    kernel = model.covar_module if isinstance(model, GPEXModel) else model
    if not isinstance(kernel, CachedDeepKernel):
        raise TypeError(f"model: expected a GPEXModel or a CachedDeepKernel, got {type(model).__name__}")
    return kernel


def _check_pairs(
    kernel: CachedDeepKernel, inputs: Tensor, references: Tensor, heads: int | Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    check_tensor("inputs", inputs, floating=True, finite=True)
    if inputs.dim() < 3:
        raise ValueError(f"inputs: expected (N, C, *spatial) images, got shape {tuple(inputs.shape)}")
    check_tensor("references", references, shape=(inputs.shape[0], *inputs.shape[1:]), floating=True, finite=True)
    n = inputs.shape[0]
    if isinstance(heads, bool) or not isinstance(heads, (int, Tensor)):
        raise TypeError(f"heads: expected an int or an (N,) integer tensor, got {type(heads).__name__}")
    if isinstance(heads, Tensor) and heads.is_floating_point():
        raise TypeError(f"heads: expected integer indices, got dtype {heads.dtype}")
    chosen = torch.full((n,), heads, dtype=torch.long) if isinstance(heads, int) else heads.long().flatten().cpu()
    if chosen.shape != (n,) or bool((chosen < 0).any() | (chosen >= kernel.num_heads).any()):
        raise ValueError(f"heads: expected an index or (N={n},) indices in [0, {kernel.num_heads - 1}], got {heads}")
    device = kernel.embeddings.device
    return inputs.to(device), references.to(device), chosen.to(device)


def _background(background: float | Tensor, inputs: Tensor) -> Tensor:
    if isinstance(background, Tensor):
        check_tensor("background", background, finite=True)
        try:
            return torch.broadcast_to(background.to(inputs), inputs.shape[1:])
        except RuntimeError as error:
            raise ValueError(
                f"background: expected a value or a tensor broadcastable to one input {tuple(inputs.shape[1:])}, "
                f"got shape {tuple(background.shape)}"
            ) from error
    if not math.isfinite(float(background)):
        raise ValueError(f"background: expected a finite value, got {background!r}")
    return torch.full(inputs.shape[1:], float(background), dtype=inputs.dtype, device=inputs.device)


def _fractions(fractions: Sequence[float], num_pixels: int) -> tuple[Tensor, Tensor]:
    values = torch.as_tensor(list(fractions), dtype=torch.float64)
    if values.dim() != 1 or values.numel() < 2:
        raise ValueError(f"fractions: expected at least two fractions, got {list(fractions)}")
    if bool((values < 0).any() | (values > 1).any()) or bool((values[1:] <= values[:-1]).any()):
        raise ValueError(f"fractions: expected strictly increasing values in [0, 1], got {values.tolist()}")
    counts = torch.floor(values * num_pixels + 0.5).long()
    return values, counts


def _similarity(kernel: CachedDeepKernel, x: Tensor, reference_embedding: Tensor, heads: Tensor) -> Tensor:
    embedded = kernel.embed(x)  # shape: (H, n, D)
    rows = torch.arange(x.shape[0], device=x.device)
    return (embedded[heads, rows].double() * reference_embedding.double()).sum(-1)


@torch.no_grad()
def deletion_curves(
    model: GPEXModel | CachedDeepKernel,
    inputs: Tensor,
    references: Tensor,
    heads: int | Tensor,
    pixel_scores: Tensor,
    *,
    fractions: Sequence[float] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
    background: float | Tensor = 0.0,
    batch_size: int = 256,
) -> DeletionCurves:
    """Delete each input's top-scored pixels and recompute its kernel similarity with its reference.

    :param model: a GPEX model (or its kernel); the similarity uses the kernel network as it is now.
    :param inputs: ``(N, C, *spatial)`` the inputs whose pixels are deleted.
    :param references: ``(N, C, *spatial)`` the input each is compared with (e.g. its neighbour), unchanged.
    :param heads: one head for all pairs, or ``(N,)`` heads.
    :param pixel_scores: ``(N, *spatial)``; higher is deleted first.
    :param fractions: strictly increasing fractions of the pixels to delete.
    :param background: the value a deleted pixel takes (a number, or a tensor broadcastable to one input).
    :param batch_size: deleted copies embedded per forward pass.
    :raises ValueError: for mismatched shapes, bad fractions or heads, non-finite values, or a pair
        whose similarity with nothing deleted is not positive (there is no drop to measure).
    """
    kernel = _kernel(model)
    x, refs, chosen = _check_pairs(kernel, inputs, references, heads)
    n, spatial = x.shape[0], tuple(x.shape[2:])
    check_tensor("pixel_scores", pixel_scores, shape=(n, *spatial), finite=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    num_pixels = math.prod(spatial)
    values, counts = _fractions(fractions, num_pixels)
    fill = _background(background, x)
    order = pixel_scores.reshape(n, num_pixels).to(x.device).argsort(dim=1, descending=True, stable=True)
    # rank[n, p]: position of pixel p in the deletion order of input n.
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_pixels, device=x.device).expand(n, -1))
    reference_embedding = kernel.embed(refs)[chosen, torch.arange(n, device=x.device)]  # shape: (N, D)
    similarities = torch.empty(n, values.numel(), dtype=torch.float64, device=x.device)
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(values.numel())).to(x.device)  # (N·Q, 2)
    for start in range(0, pairs.shape[0], batch_size):
        row, col = pairs[start : start + batch_size].unbind(1)
        deleted = rank[row] < counts.to(x.device)[col][:, None]  # shape: (b, P)
        mask = deleted.reshape(-1, 1, *spatial)
        copies = torch.where(mask, fill, x[row])
        similarities[row, col] = _similarity(kernel, copies, reference_embedding[row], chosen[row])
    base = similarities[:, 0]
    if values[0] == 0 and bool((base <= 0).any()):
        bad = (base <= 0).nonzero().flatten()[:10].tolist()
        raise ValueError(f"references: pairs {bad} have a non-positive similarity; there is no drop to measure")
    relative = similarities / base[:, None]
    area = torch.trapezoid(relative, values.to(relative.device), dim=1) / float(values[-1] - values[0])
    return DeletionCurves(
        fractions=values, counts=counts, similarities=similarities.cpu(), relative=relative.cpu(), area=area.cpu()
    )


def map_pixel_scores(maps: Tensor, spatial: Sequence[int]) -> Tensor:
    """Bring ``(N, *map_spatial)`` maps to pixel resolution ``(N, *spatial)`` by repeating each cell.

    Each map cell covers a block of ``spatial[i] / map_spatial[i]`` pixels per axis (which must divide).
    """
    check_tensor("maps", maps, finite=True)
    target = tuple(int(s) for s in spatial)
    source = tuple(maps.shape[1:])
    if len(source) != len(target) or any(t % s for s, t in zip(source, target, strict=True)):
        raise ValueError(
            f"maps: expected (N, *map_spatial) with map_spatial dividing {target}, got {tuple(maps.shape)}"
        )
    out = maps
    for axis, (s, t) in enumerate(zip(source, target, strict=True)):
        out = out.repeat_interleave(t // s, dim=axis + 1)
    return out


def _ink(inputs: Tensor, background: float | Tensor) -> Tensor:
    check_tensor("inputs", inputs, floating=True, finite=True)
    if inputs.dim() < 3:
        raise ValueError(f"inputs: expected (N, C, *spatial) images, got shape {tuple(inputs.shape)}")
    return (inputs != _background(background, inputs)).any(1)


def ink_first(pixel_scores: Tensor, inputs: Tensor, *, background: float | Tensor = 0.0) -> Tensor:
    """The ranking ``pixel_scores`` with every ink pixel (any channel differs from the background)
    ahead of every background pixel, each group kept in the ranking's own order: ``(N, *spatial)``.
    """
    ink = _ink(inputs, background)
    check_tensor("pixel_scores", pixel_scores, shape=tuple(ink.shape), finite=True)
    flat = pixel_scores.double().flatten(1)
    shifted = flat - flat.min(1, keepdim=True).values  # >= 0
    span = shifted.max(1, keepdim=True).values + 1.0
    return (shifted + ink.flatten(1).double() * span).reshape(ink.shape)


def random_ink_scores(inputs: Tensor, generator: torch.Generator, *, background: float | Tensor = 0.0) -> Tensor:
    """Random order among the ink pixels (any channel differs from the background), background pixels last.

    :returns: ``(N, *spatial)`` scores in ``[0, 2)``: ink pixels ``1 + u``, background pixels ``u``,
        with ``u`` uniform from ``generator``.
    """
    ink = _ink(inputs, background)
    u = torch.rand(ink.shape, generator=generator, dtype=torch.float64).to(inputs.device)
    return u + ink.double()


def gradient_input_scores(
    model: GPEXModel | CachedDeepKernel,
    inputs: Tensor,
    references: Tensor,
    heads: int | Tensor,
    *,
    background: float | Tensor = 0.0,
    batch_size: int = 256,
) -> Tensor:
    r"""Gradient × (input − background) of the similarity :math:`f_l(x)^\top f_l(\tilde x)` w.r.t. ``x``,
    summed over channels: ``(N, *spatial)``.

    :param batch_size: pairs differentiated per backward pass.
    """
    kernel = _kernel(model)
    x, refs, chosen = _check_pairs(kernel, inputs, references, heads)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    fill = _background(background, x)
    parts = []
    for start in range(0, x.shape[0], batch_size):
        xb, rb, hb = (t[start : start + batch_size] for t in (x, refs, chosen))
        rows = torch.arange(xb.shape[0], device=xb.device)
        with torch.no_grad():
            reference_embedding = kernel.embed(rb)[hb, rows]  # shape: (b, D)
        with torch.enable_grad():
            xb = xb.detach().requires_grad_(True)
            similarity = (kernel.embed(xb)[hb, rows] * reference_embedding).sum()
            (gradient,) = torch.autograd.grad(similarity, xb)
        parts.append((gradient * (xb.detach() - fill)).sum(1))
    return torch.cat(parts)
