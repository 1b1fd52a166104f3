"""The inducing instances most similar to a test input in a GP head's kernel space (GPEX, Sec. 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.gpex_model import GPEXModel
from ..utils import check_tensor

__all__ = ["Neighbours", "nearest_neighbours"]


@dataclass(frozen=True)
class Neighbours:
    """Nearest inducing instances of a batch of test inputs.

    :ivar indices: ``(N, k)`` inducing-set indices, most similar first.
    :ivar similarities: ``(N, k)`` kernel similarities :math:`f_l(x)^\\top f_l(\\tilde x_m)`.
    :ivar heads: ``(N,)`` the head whose kernel space was searched for each input.
    :ivar mean: ``(N,)`` the GP's posterior mean of that head at the input.
    :ivar variance: ``(N,)`` its posterior variance.
    """

    indices: Tensor
    similarities: Tensor
    heads: Tensor
    mean: Tensor
    variance: Tensor


@torch.no_grad()
def nearest_neighbours(
    model: GPEXModel,
    inputs: Tensor,
    k: int = 10,
    heads: str | int | Tensor = "predicted",
    *,
    chunk_size: int = 65536,
) -> Neighbours:
    """Exact top-``k`` inducing instances by kernel similarity, without materialising ``N × M``.

    :param model: a fitted GPEX model.
    :param inputs: a batch of test inputs (what the kernel network takes).
    :param k: neighbours per input, ``1 <= k <= M``.
    :param heads: ``"predicted"`` (the head of largest posterior mean, i.e. the predicted class),
        one head index for all inputs, or an ``(N,)`` tensor of head indices.
    :param chunk_size: inducing rows scored at a time (memory ``N × chunk_size``).
    """
    kernel = model.covar_module
    num_inducing, num_heads = kernel.num_inducing, kernel.num_heads
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_inducing:
        raise ValueError(f"k: expected an integer in [1, M={num_inducing}], got {k!r}")
    check_tensor("inputs", inputs, device=kernel.embeddings.device)
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"inputs: expected a non-empty batch, got shape {tuple(inputs.shape)}")
    mean, variance = model.predict(inputs)  # shape: (N, H) each
    n = inputs.shape[0]
    if isinstance(heads, str):
        if heads != "predicted":
            raise ValueError(f"heads: expected 'predicted', an int or a tensor of head indices, got {heads!r}")
        chosen = mean.argmax(1)
    elif isinstance(heads, int) and not isinstance(heads, bool):
        if not 0 <= heads < num_heads:
            raise ValueError(f"heads: expected a head index in [0, {num_heads - 1}], got {heads}")
        chosen = torch.full((n,), heads, dtype=torch.long, device=mean.device)
    else:
        check_tensor("heads", heads, shape=(n,))
        chosen = heads.to(device=mean.device, dtype=torch.long)
        if bool((chosen < 0).any() | (chosen >= num_heads).any()):
            raise ValueError(f"heads: expected indices in [0, {num_heads - 1}], got {chosen.tolist()}")
    queries = kernel.embed(inputs)  # shape: (H, N, D)
    rows = torch.arange(n, device=chosen.device)
    query = queries[chosen, rows].to(kernel.statistics_dtype)  # shape: (N, D)
    best_sim = torch.full((n, k), float("-inf"), dtype=query.dtype, device=query.device)
    best_idx = torch.zeros((n, k), dtype=torch.long, device=query.device)
    groups = [(head, (chosen == head).nonzero().flatten()) for head in chosen.unique().tolist()]
    for start in range(0, num_inducing, chunk_size):
        block = kernel.embeddings[:, start : start + chunk_size]  # shape: (H, C, D)
        scores = torch.empty((n, block.shape[1]), dtype=query.dtype, device=query.device)
        for head, members in groups:  # each input against its own head's rows: (N_head, C)
            scores[members] = query[members] @ block[head].to(query.dtype).T
        positions = torch.arange(start, start + block.shape[1], device=query.device).expand(n, -1)
        best_sim, order = torch.cat([best_sim, scores], 1).topk(k, dim=1)
        best_idx = torch.cat([best_idx, positions], 1).gather(1, order)
    return Neighbours(
        indices=best_idx,
        similarities=best_sim.to(mean.dtype),
        heads=chosen,
        mean=mean[rows, chosen],
        variance=variance[rows, chosen],
    )
