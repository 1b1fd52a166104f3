r"""Image grids along basis directions, and numbers that say how interpretable each grid row is.

A *direction* is a unit vector :math:`d` in a layer's activation space: a principal component, a
neuron's axis :math:`e_j`, or (the chance baseline) a random unit vector. Every input ``i`` gets a
*score* along it, :math:`s_i = (\bar a_i - \mu)^\top d`, where :math:`\bar a_i` is the mean of the
input's activation rows (its only row for a dense layer; the mean over positions for a conv layer
in ``positions`` mode, which is the projection of the pooled activation). Four ways to pick the
inputs of one grid row, all applied identically to every basis:

* ``"quantile"`` (default): the inputs at evenly spaced quantiles of the scores, from the
  ``quantile`` to the ``1 - quantile`` quantile. The row walks along the direction by
  construction, whatever the basis, so bases are compared on what the walk shows, not on whether
  a walk happened.
* ``"top"`` / ``"bottom"``: the highest- / lowest-scoring inputs (the usual "top-activating
  images" view of a neuron).
* ``"nearest"``: the construction of Dey et al. Points :math:`\mu + t\,d` at evenly spaced
  :math:`t` across the same quantile range are matched with their nearest activation row
  (Euclidean, in the full layer space). For a direction of small variance (a single neuron among
  a thousand) the nearest row to :math:`\mu + t\,d` is a near-mean row whatever :math:`t` is, so
  the row does not follow the direction: :func:`row_interpretability` measures that
  (monotonicity, coverage). The squared distance
  :math:`\|a_i - \mu\|^2 - 2t\,(a_i - \mu)^\top d + t^2` needs only each row's norm and score.

:func:`row_interpretability` scores one grid row: label purity and label entropy of the inputs
shown, monotonicity (Spearman correlation between column position and score) and coverage (the
share of the quantile range of the scores that the row spans). :func:`interpretability_summary`
adds the purity of the ``m`` top- and bottom-scoring inputs, a less noisy number than one row of
eight images.
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
    "BASES",
    "SAMPLINGS",
    "GridPanel",
    "RowInterpretability",
    "direction_grid",
    "direction_scores",
    "interpretability_summary",
    "label_entropy",
    "label_purity",
    "nearest_along_direction",
    "pc_vs_neuron_grids",
    "plot_grid_panels",
    "quantile_along_direction",
    "row_interpretability",
    "spearman",
]

#: The bases a grid can be drawn in: principal components, neurons, random unit vectors.
BASES: tuple[str, ...] = ("pc", "neuron", "random")
#: How the inputs of a grid row are picked (see the module docs).
SAMPLINGS: tuple[str, ...] = ("quantile", "top", "bottom", "nearest")


def _check_quantile(quantile: float) -> float:
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile: expected a number in [0, 0.5), got {quantile!r}")
    return float(quantile)


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
    _check_quantile(quantile)
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


def quantile_along_direction(scores: Tensor, *, num_points: int = 8, quantile: float = 0.01) -> Tensor:
    """Inputs at ``num_points`` evenly spaced quantiles of ``scores``, from the low end to the high end.

    The input at quantile ``p`` is the one of rank ``round(p · (N - 1))`` (stable ranks). Ranks that
    rounding would repeat (tiny datasets) are spread to the next free rank, so no input appears twice.

    :param scores: ``(N,)`` one score per input.
    :param num_points: how many inputs to pick, at most ``N``.
    :param quantile: the picked range is the ``[quantile, 1 - quantile]`` quantile range.
    :returns: ``(num_points,)`` input indices.
    """
    check_count("num_points", num_points)
    _check_quantile(quantile)
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"scores: expected a non-empty (N,) tensor, got shape {tuple(scores.shape)}")
    n = scores.numel()
    if num_points > n:
        raise ValueError(f"num_points: expected at most the {n} inputs scored, got {num_points}")
    order = torch.sort(scores.to(torch.float64), stable=True).indices
    ranks = torch.round(torch.linspace(quantile, 1.0 - quantile, num_points, dtype=torch.float64) * (n - 1)).long()
    for i in range(1, num_points):  # strictly increasing ...
        ranks[i] = max(int(ranks[i]), int(ranks[i - 1]) + 1)
    for i in range(num_points - 1, -1, -1):  # ... and within range
        ranks[i] = min(int(ranks[i]), n - num_points + i)
    return order[ranks]


def _unit_directions(result: PCAResult, basis: str, picked: list[int], seed: int) -> Tensor:
    """``(R, F)`` float64 unit vectors: PCs, coordinate axes, or seeded random directions."""
    f = result.num_features
    if basis == "pc":
        return result.components[picked].to(torch.float64)
    if basis == "neuron":
        return torch.eye(f, dtype=torch.float64, device=result.mean.device)[picked]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(max(picked) + 1, f, generator=generator, dtype=torch.float64)
    draws = draws / draws.norm(dim=1, keepdim=True)
    return draws[picked].to(result.mean.device)


def direction_scores(
    activations: LayerActivations,
    pca: PCAResult | LayerPCA,
    *,
    basis: str = "pc",
    directions: Sequence[int] | None = None,
    num_directions: int = 8,
    seed: int = 0,
) -> tuple[Tensor, list[int], Tensor, Tensor]:
    """Per-input scores along several PCs, neurons or random directions (see the module docs).

    :param basis: ``"pc"``, ``"neuron"`` or ``"random"`` (seeded Gaussian directions, normalised).
    :param directions: which PCs (0-based, by decreasing variance), neurons or random draws; default:
        the top ``num_directions`` PCs, the ``num_directions`` highest-variance neurons, or the first
        ``num_directions`` random draws.
    :param seed: seed of the random directions.
    :returns: ``(R, N)`` float64 scores, the ``R`` direction indices, the ``(R, F)`` unit vectors, and
        ``(R,)`` the share of the layer's total variance along each direction.
    :raises ValueError: ``basis`` unknown, a direction index out of range, or activations whose
        width differs from the PCA's.
    """
    result = pca.pca if isinstance(pca, LayerPCA) else pca
    check_choice("basis", basis, BASES)
    if activations.rows.shape[1] != result.num_features:
        raise ValueError(
            f"activations: expected rows with {result.num_features} features (as the PCA), "
            f"got {activations.rows.shape[1]}"
        )
    available = {"pc": result.num_components, "neuron": result.num_features, "random": None}[basis]
    if directions is None:
        count = check_count("num_directions", num_directions, low=1, high=available)
        picked = result.neuron_order[:count].tolist() if basis == "neuron" else list(range(count))
    else:
        high = None if available is None else available - 1
        picked = [check_count("directions", int(j), low=0, high=high) for j in directions]
        if not picked:
            raise ValueError("directions: expected at least one direction index, got none")
    rows = activations.rows
    vectors = _unit_directions(result, basis, picked, seed).to(rows.device)
    centred = rows.to(torch.float64) - result.mean.to(device=rows.device, dtype=torch.float64)
    projected = centred @ vectors.T  # shape: (N·r, R)
    r = activations.rows_per_input
    scores = projected.reshape(-1, r, len(picked)).mean(1).T.contiguous()  # shape: (R, N)
    total = result.total_variance if result.total_variance > 0 else 1.0
    share = projected.var(0, unbiased=True) / total if projected.shape[0] > 1 else torch.zeros(len(picked))
    return scores.cpu(), picked, vectors, share.cpu()


def _pick(
    scores: Tensor,
    sampling: str,
    *,
    rows: Tensor,
    mean: Tensor,
    vector: Tensor,
    rows_per_input: int,
    num_points: int,
    quantile: float,
    distinct: bool,
) -> Tensor:
    if sampling == "quantile":
        return quantile_along_direction(scores, num_points=num_points, quantile=quantile)
    if sampling in ("top", "bottom"):
        if num_points > scores.numel():
            raise ValueError(f"num_points: expected at most the {scores.numel()} inputs scored, got {num_points}")
        order = torch.sort(scores, descending=sampling == "top", stable=True).indices
        return order[:num_points]
    return nearest_along_direction(
        rows, mean, vector, num_points=num_points, quantile=quantile, rows_per_input=rows_per_input, distinct=distinct
    )


def direction_grid(
    activations: LayerActivations,
    pca: PCAResult | LayerPCA,
    *,
    basis: str = "pc",
    sampling: str = "quantile",
    directions: Sequence[int] | None = None,
    num_directions: int = 8,
    num_points: int = 8,
    quantile: float = 0.01,
    distinct: bool = True,
    seed: int = 0,
) -> tuple[Tensor, list[int]]:
    """Input grids for several PCs, neurons or random directions, one grid row per direction.

    :param basis: ``"pc"``, ``"neuron"`` or ``"random"`` (see :func:`direction_scores`).
    :param sampling: ``"quantile"``, ``"top"``, ``"bottom"`` or ``"nearest"`` (see the module docs).
    :param distinct: ``"nearest"`` only: never show one input twice in a row.
    :returns: ``(R, num_points)`` input indices and the ``R`` direction indices shown.
    """
    check_choice("sampling", sampling, SAMPLINGS)
    check_count("num_points", num_points)
    _check_quantile(quantile)
    result = pca.pca if isinstance(pca, LayerPCA) else pca
    scores, picked, vectors, _ = direction_scores(
        activations, result, basis=basis, directions=directions, num_directions=num_directions, seed=seed
    )
    mean = result.mean.to(activations.rows.device)
    grid = [
        _pick(
            scores[i],
            sampling,
            rows=activations.rows,
            mean=mean,
            vector=vectors[i],
            rows_per_input=activations.rows_per_input,
            num_points=num_points,
            quantile=quantile,
            distinct=distinct,
        )
        for i in range(len(picked))
    ]
    return torch.stack(grid), picked


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values)


def spearman(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either input is constant.

    A grid row whose inputs all have the same score does not move along its direction: 0, not NaN.
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"y: expected as many values as x (at least 2), got {a.size} and {b.size}")
    ra, rb = _ranks(a) - (a.size + 1) / 2, _ranks(b) - (b.size + 1) / 2
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def label_purity(labels: Tensor) -> float:
    """Share of the most frequent label among ``labels`` (1: one class only)."""
    if labels.numel() == 0:
        raise ValueError("labels: expected at least one label, got none")
    _, counts = torch.unique(labels, return_counts=True)
    return float(counts.max()) / labels.numel()


def label_entropy(labels: Tensor) -> float:
    """Shannon entropy of the label distribution among ``labels``, in bits (0: one class only)."""
    if labels.numel() == 0:
        raise ValueError("labels: expected at least one label, got none")
    _, counts = torch.unique(labels, return_counts=True)
    p = counts.to(torch.float64) / labels.numel()
    return float(-(p * torch.log2(p)).sum())


@dataclass(frozen=True)
class RowInterpretability:
    """How interpretable one grid row is, as numbers.

    :ivar purity: share of the row's most frequent label.
    :ivar entropy: entropy of the row's labels, in bits.
    :ivar monotonicity: Spearman correlation between column position and score (1: the row walks
        steadily along the direction; 0: it does not move along it).
    :ivar coverage: ``(max - min)`` of the shown scores over the ``[quantile, 1 - quantile]``
        range of all scores (about 1 for a quantile row; near 0 for a row of near-mean inputs).
    """

    purity: float
    entropy: float
    monotonicity: float
    coverage: float


def row_interpretability(
    indices: Tensor, scores: Tensor, labels: Tensor, *, quantile: float = 0.01
) -> RowInterpretability:
    """Score one grid row (see :class:`RowInterpretability`).

    :param indices: ``(P,)`` the inputs shown, left to right (``P >= 2``).
    :param scores: ``(N,)`` every input's score along the row's direction.
    :param labels: ``(N,)`` every input's label.
    """
    _check_quantile(quantile)
    if indices.dim() != 1 or indices.numel() < 2:
        raise ValueError(f"indices: expected a (P,) tensor with P >= 2, got shape {tuple(indices.shape)}")
    if labels.shape != scores.shape or scores.dim() != 1:
        raise ValueError(f"labels: expected the shape of scores {tuple(scores.shape)}, got {tuple(labels.shape)}")
    shown = scores[indices].to(torch.float64)
    low, high = torch.quantile(scores.to(torch.float64), torch.tensor([quantile, 1.0 - quantile], dtype=torch.float64))
    span = float(high - low)
    coverage = float(shown.max() - shown.min()) / span if span > 0 else 0.0
    return RowInterpretability(
        purity=label_purity(labels[indices]),
        entropy=label_entropy(labels[indices]),
        monotonicity=spearman(torch.arange(indices.numel()), shown),
        coverage=coverage,
    )


def interpretability_summary(
    activations: LayerActivations,
    pca: PCAResult | LayerPCA,
    *,
    basis: str = "pc",
    directions: Sequence[int] | None = None,
    num_directions: int = 8,
    num_points: int = 8,
    quantile: float = 0.01,
    top_m: int = 50,
    labels: Tensor | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Every sampling of :data:`SAMPLINGS` for one basis, each grid row scored, as a JSON-ready record.

    :param top_m: also score the ``top_m`` highest- and lowest-scoring inputs of each direction
        (label purity and entropy; a larger sample than one grid row).
    :param labels: ``(N,)`` labels (default: ``activations.labels``).
    :returns: ``{"basis", "directions", "variance_share", "rows": {sampling: {"inputs", "purity",
        "entropy", "monotonicity", "coverage"}}, "mean": {sampling: {metric: mean over rows}},
        "extremes": {"m", "purity_top", "purity_bottom", "entropy_top", "entropy_bottom"},
        "mean_extremes": {...}}``.
    :raises ValueError: no labels, or ``top_m`` larger than the number of inputs.
    """
    labels = activations.labels if labels is None else labels
    if labels is None:
        raise ValueError("labels: expected labels (pass labels= or collect activations from a labelled dataset)")
    scores, picked, vectors, share = direction_scores(
        activations, pca, basis=basis, directions=directions, num_directions=num_directions, seed=seed
    )
    n = scores.shape[1]
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), one per input, got {tuple(labels.shape)}")
    check_count("top_m", top_m, low=1, high=n)
    result = pca.pca if isinstance(pca, LayerPCA) else pca
    mean = result.mean.to(activations.rows.device)
    labels = labels.cpu()
    rows: dict[str, dict[str, list]] = {}
    for sampling in SAMPLINGS:
        record: dict[str, list] = {"inputs": [], "purity": [], "entropy": [], "monotonicity": [], "coverage": []}
        for i in range(len(picked)):
            chosen = _pick(
                scores[i],
                sampling,
                rows=activations.rows,
                mean=mean,
                vector=vectors[i],
                rows_per_input=activations.rows_per_input,
                num_points=num_points,
                quantile=quantile,
                distinct=True,
            )
            scored = row_interpretability(chosen, scores[i], labels, quantile=quantile)
            record["inputs"].append(chosen.tolist())
            for key in ("purity", "entropy", "monotonicity", "coverage"):
                record[key].append(getattr(scored, key))
        rows[sampling] = record
    extremes: dict[str, object] = {"m": top_m}
    for end, descending in (("top", True), ("bottom", False)):
        order = torch.sort(scores, dim=1, descending=descending, stable=True).indices[:, :top_m]
        extremes[f"purity_{end}"] = [label_purity(labels[o]) for o in order]
        extremes[f"entropy_{end}"] = [label_entropy(labels[o]) for o in order]
    return {
        "basis": basis,
        "directions": picked,
        "variance_share": share.tolist(),
        "rows": rows,
        "mean": {
            sampling: {k: float(np.mean(v)) for k, v in record.items() if k != "inputs"}
            for sampling, record in rows.items()
        },
        "extremes": extremes,
        "mean_extremes": {k: float(np.mean(v)) for k, v in extremes.items() if k != "m"},
    }


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
    xlabel: str = "low  ←  score along the direction  →  high",
    tile_inches: float = 0.45,
    dpi: int = 120,
) -> Path:
    """Draw panels of input grids side by side and save them as a PNG.

    :param images: ``(N, C, H, W)`` (``C`` 1 or 3) or ``(N, H, W)`` dataset inputs, indexed by the panels.
    :param panels: the grids to draw, left to right.
    :param path: the PNG file to write (parent folders are created).
    :param xlabel: the caption under each panel.
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
    label_inches = 1.9
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
        ax.set_xlabel(xlabel, fontsize=7)
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


_XLABELS = {
    "quantile": "evenly spaced quantiles of the score:  low  →  high",
    "top": "highest-scoring inputs, highest first",
    "bottom": "lowest-scoring inputs, lowest first",
    "nearest": "nearest input to μ + t·d:  t low  →  high",
}
_BASIS_TITLES = {"pc": "principal components", "neuron": "highest-variance neurons", "random": "random directions"}


def pc_vs_neuron_grids(
    activations: LayerActivations,
    pca: LayerPCA,
    images: Tensor,
    path: str | Path,
    *,
    num_directions: int = 8,
    num_points: int = 8,
    quantile: float = 0.01,
    sampling: str = "quantile",
    bases: Sequence[str] = ("pc", "neuron"),
    title: str | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """The top PCs, the highest-variance neurons (and optionally random directions) of a layer, as
    grids side by side in one PNG, every basis sampled the same way.

    Each grid row is labelled with its share of the variance and, when the activations carry
    labels, its label purity ``p`` and monotonicity ``ρ`` (:func:`row_interpretability`).

    :param activations: the layer's rows over the dataset (:func:`collect_layer_activations`).
    :param pca: the layer's PCA.
    :param images: the dataset's inputs, one per input index.
    :param path: the PNG to write.
    :param sampling: ``"quantile"`` (default), ``"top"``, ``"bottom"`` or ``"nearest"``.
    :param bases: the panels, left to right, from ``"pc"``, ``"neuron"``, ``"random"``.
    :returns: a JSON-ready record: the PNG path, the sampling and, per basis, the directions shown,
        their share of the variance, the grid's input indices and (with labels) the row scores.
    """
    check_choice("sampling", sampling, SAMPLINGS)
    if not bases:
        raise ValueError("bases: expected at least one of 'pc', 'neuron', 'random', got none")
    result = pca.pca
    count = min(num_directions, result.num_components, result.num_features)
    labels = activations.labels.cpu() if activations.labels is not None else None
    panels: list[GridPanel] = []
    record: dict[str, object] = {"sampling": sampling}
    for basis in bases:
        scores, picked, vectors, share = direction_scores(
            activations, result, basis=basis, num_directions=count, seed=seed
        )
        grid = torch.stack(
            [
                _pick(
                    scores[i],
                    sampling,
                    rows=activations.rows,
                    mean=result.mean.to(activations.rows.device),
                    vector=vectors[i],
                    rows_per_input=activations.rows_per_input,
                    num_points=num_points,
                    quantile=quantile,
                    distinct=True,
                )
                for i in range(len(picked))
            ]
        )
        name = {"pc": "PC{}", "neuron": "n{}", "random": "r{}"}[basis]
        row_labels = []
        entry: dict[str, object] = {"index": picked, "variance_share": share.tolist(), "inputs": grid.tolist()}
        scored = []
        for i, j in enumerate(picked):
            label = f"{name.format(j + 1 if basis == 'pc' else j)} ({float(share[i]):.1%})"
            if labels is not None and num_points >= 2:
                row = row_interpretability(grid[i], scores[i], labels, quantile=quantile)
                scored.append(row)
                label += f" p={row.purity:.2f} ρ={row.monotonicity:+.2f}"
            row_labels.append(label)
        if scored:
            entry["rows"] = [row.__dict__ for row in scored]
        panels.append(GridPanel(_BASIS_TITLES[basis], grid, row_labels))
        record[basis] = entry
    written = plot_grid_panels(images, panels, path, title=title, xlabel=_XLABELS[sampling], tile_inches=0.5)
    record["png"] = str(written)
    return record
