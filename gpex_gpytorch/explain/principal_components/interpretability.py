r"""Image grids along basis directions: what a PC (or a neuron) "looks like" in the dataset.

For a unit direction :math:`d` in a layer's activation space (a PC, or a neuron's axis
:math:`e_j`) and the mean activation :math:`\mu`, points :math:`p_t = \mu + t\,d` are sampled at
evenly spaced :math:`t` between the ``quantile`` and ``1 - quantile`` quantiles of the dataset's
scores :math:`(a_i - \mu)^\top d`. Each point is matched with its nearest dataset activation
(Euclidean distance in the full layer space), and the matching inputs are shown left to right.
The squared distance :math:`\|a_i - \mu\|^2 - 2t\,(a_i - \mu)^\top d + t^2` needs only each row's
norm and score, so a grid costs :math:`O(N F)` whatever the number of points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ._checks import check_choice, check_count
from .layer_pca import LayerActivations, LayerPCA
from .streaming_pca import PCAResult

__all__ = [
    "GridPanel",
    "direction_grid",
    "nearest_along_direction",
    "pc_vs_neuron_grids",
    "plot_grid_panels",
]


def nearest_along_direction(
    rows: Tensor,
    mean: Tensor,
    direction: Tensor,
    *,
    num_points: int = 8,
    quantile: float = 0.01,
    rows_per_input: int = 1,
    distinct: bool = True,
) -> Tensor:
    """Inputs nearest to ``num_points`` points sampled along ``direction`` (see the module docs).

    :param rows: ``(N·r, F)`` activation rows over the dataset.
    :param mean: ``(F,)`` the mean activation.
    :param direction: ``(F,)`` a unit vector.
    :param num_points: how many points to sample (columns of the grid).
    :param quantile: the sampled range is the ``[quantile, 1 - quantile]`` range of the scores
        (0 spans min to max; a little more keeps single outliers from stretching the range).
    :param rows_per_input: ``r``: row ``i`` belongs to input ``i // r``.
    :param distinct: never show the same input twice in one grid row (take the next nearest).
    :returns: ``(num_points,)`` input indices, from the low end of the direction to the high end.
    """
    check_count("num_points", num_points)
    check_count("rows_per_input", rows_per_input)
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile: expected a number in [0, 0.5), got {quantile}")
    if rows.dim() != 2 or rows.shape[0] == 0:
        raise ValueError(f"rows: expected a non-empty (N, F) tensor, got shape {tuple(rows.shape)}")
    x = rows.to(torch.float64)
    mu = mean.to(device=x.device, dtype=torch.float64)
    d = direction.to(device=x.device, dtype=torch.float64)
    centred = x - mu
    scores = centred @ d  # shape: (N,)
    norms = (centred * centred).sum(1)  # shape: (N,)
    low, high = torch.quantile(scores, torch.tensor([quantile, 1.0 - quantile], dtype=torch.float64)).tolist()
    steps = torch.linspace(low, high, num_points, dtype=torch.float64)
    inputs_used: set[int] = set()
    chosen: list[int] = []
    for t in steps.tolist():
        distance = norms - 2.0 * t * scores + t * t
        if not distinct:
            chosen.append(int(distance.argmin()) // rows_per_input)
            continue
        # at most (shown + 1) * r nearest rows are needed to reach an input not shown yet
        budget = min(distance.numel(), (len(inputs_used) + 1) * rows_per_input)
        nearest = torch.topk(distance, budget, largest=False, sorted=True).indices
        index = int(nearest[0]) // rows_per_input
        for row in nearest.tolist():
            if row // rows_per_input not in inputs_used:
                index = row // rows_per_input
                break
        inputs_used.add(index)
        chosen.append(index)
    return torch.tensor(chosen, dtype=torch.long)


def direction_grid(
    activations: LayerActivations,
    pca: PCAResult | LayerPCA,
    *,
    basis: str = "pc",
    directions: Sequence[int] | None = None,
    num_directions: int = 8,
    num_points: int = 8,
    quantile: float = 0.01,
    distinct: bool = True,
) -> tuple[Tensor, list[int]]:
    """Nearest-input grids for several PCs or neurons.

    :param basis: ``"pc"`` (principal directions) or ``"neuron"`` (coordinate axes).
    :param directions: which PCs (0-based, by decreasing variance) or neurons to show; default: the
        top ``num_directions`` PCs, or the ``num_directions`` highest-variance neurons.
    :returns: ``(R, num_points)`` input indices and the ``R`` PC / neuron indices shown.
    :raises ValueError: ``basis`` unknown or a direction index out of range.
    """
    result = pca.pca if isinstance(pca, LayerPCA) else pca
    check_choice("basis", basis, ("pc", "neuron"))
    available = result.num_components if basis == "pc" else result.num_features
    if activations.rows.shape[1] != result.num_features:
        raise ValueError(
            f"activations: expected rows with {result.num_features} features (as the PCA), "
            f"got {activations.rows.shape[1]}"
        )
    if directions is None:
        count = check_count("num_directions", num_directions, low=1, high=available)
        picked = list(range(count)) if basis == "pc" else result.neuron_order[:count].tolist()
    else:
        picked = [check_count("directions", int(j), low=0, high=available - 1) for j in directions]
    rows = activations.rows
    mean = result.mean.to(rows.device)
    grid = []
    for j in picked:
        if basis == "pc":
            direction = result.components[j].to(rows.device)
        else:
            direction = torch.zeros(result.num_features, dtype=torch.float64, device=rows.device)
            direction[j] = 1.0
        grid.append(
            nearest_along_direction(
                rows,
                mean,
                direction,
                num_points=num_points,
                quantile=quantile,
                rows_per_input=activations.rows_per_input,
                distinct=distinct,
            )
        )
    return torch.stack(grid), picked


@dataclass(frozen=True)
class GridPanel:
    """One panel of a figure: a grid of dataset inputs.

    :ivar title: the panel's title.
    :ivar indices: ``(R, C)`` input indices.
    :ivar row_labels: ``R`` labels, one per grid row.
    """

    title: str
    indices: Tensor
    row_labels: list[str]


def _as_hwc(images: Tensor) -> np.ndarray:
    x = images.detach().cpu().to(torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"images: expected (N, H, W) or (N, C, H, W) with C in (1, 3), got shape {tuple(images.shape)}"
        )
    low, high = float(x.min()), float(x.max())
    x = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    return x.permute(0, 2, 3, 1).numpy()


def _mosaic(tiles: np.ndarray, indices: Tensor, pad: int = 1) -> np.ndarray:
    rows, cols = indices.shape
    h, w, c = tiles.shape[1:]
    canvas = np.ones(((h + pad) * rows + pad, (w + pad) * cols + pad, c), dtype=np.float32)
    for r in range(rows):
        for col in range(cols):
            top, left = pad + r * (h + pad), pad + col * (w + pad)
            canvas[top : top + h, left : left + w] = tiles[int(indices[r, col])]
    return canvas


def plot_grid_panels(
    images: Tensor,
    panels: Sequence[GridPanel],
    path: str | Path,
    *,
    title: str | None = None,
    tile_inches: float = 0.45,
    dpi: int = 120,
) -> Path:
    """Draw panels of input grids side by side and save them as a PNG.

    :param images: ``(N, C, H, W)`` (``C`` 1 or 3) or ``(N, H, W)`` dataset inputs, indexed by the panels.
    :param panels: the grids to draw, left to right.
    :param path: the PNG file to write (parent folders are created).
    :returns: the path written.
    """
    if not panels:
        raise ValueError("panels: expected at least one panel, got none")
    tiles = _as_hwc(images)
    for panel in panels:
        if panel.indices.numel() and (int(panel.indices.max()) >= len(tiles) or int(panel.indices.min()) < 0):
            raise ValueError(f"panels: panel {panel.title!r} indexes past the {len(tiles)} images given")
    max_rows = max(p.indices.shape[0] for p in panels)
    widths = [p.indices.shape[1] for p in panels]
    label_inches = 1.3
    width = tile_inches * sum(widths) + (label_inches + 0.2) * len(panels)
    height = tile_inches * max_rows + 1.0
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, panel in zip(axes, panels, strict=True):
        canvas = _mosaic(tiles, panel.indices)
        ax.imshow(canvas[..., 0] if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0.0, vmax=1.0)
        h = tiles.shape[1] + 1
        ax.set_yticks([1 + h * (r + 0.5) for r in range(panel.indices.shape[0])])
        ax.set_yticklabels(panel.row_labels, fontsize=7)
        ax.set_xticks([])
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("low  ←  score along the direction  →  high", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    # fixed margins in inches (tight_layout costs about half a second per figure)
    fig.subplots_adjust(
        left=label_inches / width,
        right=1.0 - 0.1 / width,
        bottom=0.35 / height,
        top=1.0 - (0.65 if title else 0.35) / height,
        wspace=label_inches / (tile_inches * sum(widths) / len(panels)),
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def pc_vs_neuron_grids(
    activations: LayerActivations,
    pca: LayerPCA,
    images: Tensor,
    path: str | Path,
    *,
    num_directions: int = 8,
    num_points: int = 8,
    quantile: float = 0.01,
    title: str | None = None,
) -> dict[str, object]:
    """The top PCs and the highest-variance neurons of a layer, as two grids side by side in one PNG.

    :param activations: the layer's rows over the dataset (:func:`collect_layer_activations`).
    :param pca: the layer's PCA.
    :param images: the dataset's inputs, one per input index.
    :param path: the PNG to write.
    :returns: a JSON-ready record: the PNG path and, per basis, the directions shown, their share
        of the variance and the grid's input indices.
    """
    result = pca.pca
    total = result.total_variance if result.total_variance > 0 else 1.0
    count = min(num_directions, result.num_components, result.num_features)
    pcs, pc_ids = direction_grid(
        activations, pca, basis="pc", num_directions=count, num_points=num_points, quantile=quantile
    )
    neurons, neuron_ids = direction_grid(
        activations, pca, basis="neuron", num_directions=count, num_points=num_points, quantile=quantile
    )
    pc_share = [float(result.eigenvalues[j]) / total for j in pc_ids]
    neuron_share = [float(result.neuron_variance[j]) / total for j in neuron_ids]
    panels = [
        GridPanel("principal components", pcs, [f"PC{j + 1} ({s:.1%})" for j, s in zip(pc_ids, pc_share, strict=True)]),
        GridPanel(
            "highest-variance neurons",
            neurons,
            [f"n{j} ({s:.1%})" for j, s in zip(neuron_ids, neuron_share, strict=True)],
        ),
    ]
    written = plot_grid_panels(images, panels, path, title=title)
    return {
        "png": str(written),
        "pc": {"index": pc_ids, "variance_share": pc_share, "inputs": pcs.tolist()},
        "neuron": {"index": neuron_ids, "variance_share": neuron_share, "inputs": neurons.tolist()},
    }
