r"""Principal components of a GPEX kernel space, and how much of the GP posterior mean each carries.

Each GP head :math:`l` has a kernel network with embeddings :math:`f_l(x) \in \mathbb R^D`,
inducing embeddings :math:`U_l` (``M × D``), inducing values :math:`v_l` (``M``) and noise
:math:`\sigma_l^2`. Its posterior mean is linear in the embedding,

.. math::

    \mu_l(x) = f_l(x)^\top w_l, \qquad w_l = (U_l^\top U_l + \sigma_l^2 I_D)^{-1} U_l^\top v_l .

With the dataset mean :math:`\bar f_l` and the principal components :math:`p_j` (variances
:math:`\lambda_j`) of :math:`f_l(x)` over a dataset, write :math:`c_j = p_j^\top w_l`. Then
:math:`\mu_l(x) = \bar f_l^\top w_l + \sum_j c_j\, p_j^\top (f_l(x) - \bar f_l)`, and since PC
scores are uncorrelated with variances :math:`\lambda_j`,

.. math::

    \operatorname{Var}_x[\mu_l(x)] = \sum_j \lambda_j c_j^2 ,

so PC :math:`j` carries the share :math:`\lambda_j c_j^2 / \sum_i \lambda_i c_i^2` of the variation
of the posterior mean over the dataset. A PC with a large variance but :math:`c_j \approx 0` is
a direction of similarity the GP does not use for this head; a small PC can matter if
:math:`w_l` points along it.

:func:`kernel_space_pca` works on plain tensors (an ``embed`` callable and the inducing
statistics); :func:`gpex_kernel_space_pca` reads them from a GPEX model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checks import check_choice, check_count
from ._data import Data, iter_batches, num_examples
from .completeness import k_for_fraction
from .interpretability import GridPanel, nearest_along_direction, plot_grid_panels
from .layer_pca import evaluation_mode
from .streaming_pca import PCAResult, StreamingPCA

__all__ = [
    "HeadKernelPCA",
    "KernelSpacePCA",
    "gpex_kernel_space_pca",
    "kernel_space_grids",
    "kernel_space_pca",
    "posterior_mean_weights",
]


@dataclass(frozen=True)
class HeadKernelPCA:
    """The kernel-space PCA of one GP head.

    :ivar head: the head's index ``l``.
    :ivar pca: PCs of :math:`f_l(x)` over the dataset (``D``-dimensional).
    :ivar weights: ``(D,)`` :math:`w_l`, the posterior-mean weights.
    :ivar projection: ``(D,)`` :math:`c_j = p_j^\\top w_l`, one per PC.
    :ivar mean_variance_share: ``(D,)`` :math:`\\lambda_j c_j^2 / \\sum_i \\lambda_i c_i^2`.
    :ivar weight_share: ``(D,)`` :math:`c_j^2 / \\|w_l\\|^2`, how :math:`w_l` itself splits over the PCs.
    :ivar mean_offset: :math:`\\bar f_l^\\top w_l`, the dataset average of the posterior mean.
    :ivar mean_variance: :math:`\\sum_j \\lambda_j c_j^2`, the variance of :math:`\\mu_l(x)` over the dataset.
    """

    head: int
    pca: PCAResult
    weights: Tensor
    projection: Tensor
    mean_variance_share: Tensor
    weight_share: Tensor
    mean_offset: float
    mean_variance: float

    @property
    def cumulative_mean_variance_share(self) -> Tensor:
        """``(D,)`` share of :math:`\\operatorname{Var}[\\mu_l]` in the top-``k`` PCs (by embedding variance)."""
        return torch.cumsum(self.mean_variance_share, 0)

    def k_for(self, fraction: float, curve: str = "mean") -> int | None:
        """Smallest number of top PCs reaching ``fraction`` of the posterior-mean variance (``curve="mean"``)
        or of the embedding variance (``curve="embedding"``)."""
        check_choice("curve", curve, ("mean", "embedding"))
        cumulative = self.cumulative_mean_variance_share if curve == "mean" else self.pca.cumulative_explained_variance
        return k_for_fraction(cumulative, fraction)

    def to_dict(self, fractions: Sequence[float] = (0.8, 0.99), digits: int = 6) -> dict[str, object]:
        """A JSON-ready summary of the head."""

        def rounded(values: Tensor) -> list[float]:
            return [round(float(v), digits) for v in values]

        return {
            "head": self.head,
            "embedding_variance_ratio": rounded(self.pca.explained_variance_ratio),
            "mean_variance_share": rounded(self.mean_variance_share),
            "weight_share": rounded(self.weight_share),
            "projection": rounded(self.projection),
            "mean_offset": round(self.mean_offset, digits),
            "mean_variance": round(self.mean_variance, digits),
            "k": {
                f"{f:g}": {"embedding": self.k_for(f, "embedding"), "posterior_mean": self.k_for(f, "mean")}
                for f in fractions
            },
        }


@dataclass(frozen=True)
class KernelSpacePCA:
    """Per-head kernel-space PCA.

    :ivar heads: one :class:`HeadKernelPCA` per GP head.
    :ivar embeddings: ``(H, N, D)`` float32 CPU embeddings of the dataset (``None`` unless kept);
        :func:`kernel_space_grids` needs them.
    """

    heads: list[HeadKernelPCA]
    embeddings: Tensor | None

    def to_dict(self, fractions: Sequence[float] = (0.8, 0.99)) -> dict[str, object]:
        """A JSON-ready summary of every head."""
        return {"heads": [head.to_dict(fractions) for head in self.heads]}


def _head_noise(noise: float | Tensor, num_heads: int) -> Tensor:
    value = torch.as_tensor(noise, dtype=torch.float64).detach().cpu()
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, num_heads)):
        raise ValueError(f"noise: expected a float or a tensor of shape () or ({num_heads},), got {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()) or not bool((value > 0).all()):
        raise ValueError(f"noise: expected finite values > 0, got {value.tolist()}")
    return value.expand(num_heads).clone()


def posterior_mean_weights(inducing_embeddings: Tensor, inducing_values: Tensor, noise: float | Tensor) -> Tensor:
    """``(H, D)`` float64 :math:`w_l = (U_l^\\top U_l + \\sigma_l^2 I)^{-1} U_l^\\top v_l` for every head.

    :param inducing_embeddings: ``(H, M, D)`` :math:`U`.
    :param inducing_values: ``(M, H)`` :math:`v`.
    :param noise: :math:`\\sigma^2 > 0`: a float, or a tensor of shape ``()`` or ``(H,)``.
    """
    if not isinstance(inducing_embeddings, Tensor) or inducing_embeddings.dim() != 3:
        shape = tuple(inducing_embeddings.shape) if isinstance(inducing_embeddings, Tensor) else None
        raise ValueError(f"inducing_embeddings: expected a (H, M, D) tensor, got {shape}")
    h, m, d = inducing_embeddings.shape
    if not isinstance(inducing_values, Tensor) or tuple(inducing_values.shape) != (m, h):
        shape = tuple(inducing_values.shape) if isinstance(inducing_values, Tensor) else None
        raise ValueError(f"inducing_values: expected shape ({m}, {h}) (M, H), got {shape}")
    u = inducing_embeddings.detach().to(torch.float64)
    v = inducing_values.detach().to(device=u.device, dtype=torch.float64).T  # shape: (H, M)
    if not bool(torch.isfinite(u).all()) or not bool(torch.isfinite(v).all()):
        raise ValueError("inducing_embeddings / inducing_values: expected finite values, found NaN or inf")
    sigma2 = _head_noise(noise, h).to(u.device)
    gram = u.transpose(1, 2) @ u + sigma2.view(h, 1, 1) * torch.eye(d, dtype=torch.float64, device=u.device)
    cross = u.transpose(1, 2) @ v.unsqueeze(-1)  # shape: (H, D, 1)
    return torch.cholesky_solve(cross, torch.linalg.cholesky(gram)).squeeze(-1)


def _head_summary(head: int, pca: PCAResult, weights: Tensor) -> HeadKernelPCA:
    w = weights.to(pca.components.device)
    projection = pca.components @ w  # shape: (D,)
    carried = pca.eigenvalues * projection.square()
    mean_variance = float(carried.sum())
    norm2 = float(w.square().sum())
    return HeadKernelPCA(
        head=head,
        pca=pca,
        weights=w,
        projection=projection,
        mean_variance_share=carried / (mean_variance if mean_variance > 0 else 1.0),
        weight_share=projection.square() / (norm2 if norm2 > 0 else 1.0),
        mean_offset=float(pca.mean @ w),
        mean_variance=mean_variance,
    )


@torch.no_grad()
def kernel_space_pca(
    embed: Callable[[Tensor], Tensor],
    data: Data,
    inducing_embeddings: Tensor,
    inducing_values: Tensor,
    noise: float | Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    keep_embeddings: bool = True,
    progress: bool = False,
) -> KernelSpacePCA:
    """PCA of every head's kernel space over ``data`` and the share of the posterior mean per PC.

    :param embed: maps a batch of inputs to embeddings ``(H, N, D)``.
    :param data: a tensor of inputs, a dataset, or a DataLoader (labels, if any, are ignored).
    :param inducing_embeddings: ``(H, M, D)`` :math:`U`.
    :param inducing_values: ``(M, H)`` :math:`v`.
    :param noise: :math:`\\sigma^2`, a float or a tensor of shape ``()`` / ``(H,)``.
    :param batch_size: batch size for tensors / datasets.
    :param device: where inputs are sent before ``embed`` (default: left where they are).
    :param keep_embeddings: keep the dataset's embeddings (float32, CPU) for :func:`kernel_space_grids`.
    :param progress: show a tqdm bar.
    :raises ValueError: empty ``data``, shapes that disagree, non-positive ``noise``.
    """
    if not callable(embed):
        raise TypeError(f"embed: expected a callable returning (H, N, D) embeddings, got {type(embed).__name__}")
    weights = posterior_mean_weights(inducing_embeddings, inducing_values, noise)
    h, _, d = inducing_embeddings.shape
    accumulators = [StreamingPCA(d) for _ in range(h)]
    kept: list[Tensor] = []
    size = num_examples(data)
    total = None if size is None else -(-size // batch_size)
    for inputs, _ in tqdm(
        iter_batches(data, batch_size, device), total=total, desc="kernel-space PCA", disable=not progress, leave=False
    ):
        e = embed(inputs)
        if not isinstance(e, Tensor) or e.dim() != 3 or e.shape[0] != h or e.shape[2] != d:
            shape = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"embed: expected embeddings of shape ({h}, N, {d}) (H, N, D), got {shape}")
        e = e.detach()
        for head, accumulator in enumerate(accumulators):
            accumulator.update(e[head])
        if keep_embeddings:
            kept.append(e.to(device="cpu", dtype=torch.float32))
    heads = [_head_summary(head, acc.result(), weights[head]) for head, acc in enumerate(accumulators)]
    return KernelSpacePCA(heads=heads, embeddings=torch.cat(kept, dim=1) if keep_embeddings else None)


def gpex_kernel_space_pca(model: nn.Module, data: Data, **kwargs: object) -> KernelSpacePCA:
    """:func:`kernel_space_pca` for a GPEX model (a :class:`~gpex_gpytorch.models.GPEXModel`).

    Reads ``model.covar_module.embed`` (``(H, N, D)``), ``model.covar_module.embeddings`` (``U``,
    ``(H, M, D)``), ``model.covar_module.inducing_values`` (``(M, H)``) and
    ``model.variational_strategy.noise`` (:math:`\\sigma^2`). The model is in eval mode during the
    pass (restored afterwards). Keyword arguments go to :func:`kernel_space_pca`.
    """
    kernel = getattr(model, "covar_module", None)
    strategy = getattr(model, "variational_strategy", None)
    missing = [
        name
        for name, ok in (
            ("covar_module.embed", callable(getattr(kernel, "embed", None))),
            ("covar_module.embeddings", isinstance(getattr(kernel, "embeddings", None), Tensor)),
            ("covar_module.inducing_values", isinstance(getattr(kernel, "inducing_values", None), Tensor)),
            ("variational_strategy.noise", getattr(strategy, "noise", None) is not None),
        )
        if not ok
    ]
    if missing:
        raise TypeError(f"model: expected a GPEX model, {type(model).__name__} lacks {', '.join(missing)}")
    assert kernel is not None and strategy is not None
    with evaluation_mode(model):
        return kernel_space_pca(
            kernel.embed,
            data,
            kernel.embeddings,
            kernel.inducing_values,
            strategy.noise.detach(),
            **kwargs,  # type: ignore[arg-type]
        )


def kernel_space_grids(
    result: KernelSpacePCA,
    images: Tensor,
    path: str | Path,
    *,
    heads: Sequence[int] | None = None,
    num_pcs: int = 6,
    num_points: int = 8,
    order: str = "mean",
    quantile: float = 0.01,
) -> dict[str, object]:
    """Image grids along the top PCs of each head's kernel space, one panel per head, in one PNG.

    :param result: from :func:`kernel_space_pca` with ``keep_embeddings=True``.
    :param images: the dataset's inputs (as passed to :func:`kernel_space_pca`).
    :param heads: which heads to draw (default: all).
    :param num_pcs: grid rows per head.
    :param order: ``"mean"``: the PCs carrying most of the posterior-mean variance; ``"variance"``:
        the PCs of largest embedding variance.
    :returns: a JSON-ready record of the PNG and, per head, the PCs and input indices shown.
    """
    if result.embeddings is None:
        raise ValueError("result: the embeddings were not kept; call kernel_space_pca(..., keep_embeddings=True)")
    check_choice("order", order, ("mean", "variance"))
    num_heads = len(result.heads)
    chosen = (
        list(range(num_heads)) if heads is None else [check_count("heads", h, low=0, high=num_heads - 1) for h in heads]
    )
    if not chosen:
        raise ValueError("heads: expected at least one head index, got none")
    panels: list[GridPanel] = []
    record: dict[str, object] = {}
    for head in chosen:
        summary = result.heads[head]
        count = check_count("num_pcs", num_pcs, low=1, high=summary.pca.num_components)
        if order == "mean":
            picked = torch.argsort(summary.mean_variance_share, descending=True, stable=True)[:count].tolist()
        else:
            picked = list(range(count))
        rows = result.embeddings[head]
        grid = torch.stack(
            [
                nearest_along_direction(
                    rows,
                    summary.pca.mean.cpu(),
                    summary.pca.components[j].cpu(),
                    num_points=num_points,
                    quantile=quantile,
                )
                for j in picked
            ]
        )
        ratio = summary.pca.explained_variance_ratio
        labels = [f"PC{j + 1} var {float(ratio[j]):.0%} μ {float(summary.mean_variance_share[j]):.0%}" for j in picked]
        panels.append(GridPanel(f"head {head}", grid, labels))
        record[str(head)] = {"pcs": picked, "inputs": grid.tolist()}
    written = plot_grid_panels(
        images, panels, path, title="kernel-space PCs (var: embedding variance, μ: posterior mean)"
    )
    return {"png": str(written), "heads": record}
