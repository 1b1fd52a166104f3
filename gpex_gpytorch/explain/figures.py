"""Figures in the style of the GPEX paper's Fig. 2: a test input next to its nearest inducing examples.

Drawn on a private :class:`~matplotlib.figure.Figure` with the Agg canvas (no pyplot, so no
global backend or figure registry is touched).
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["figure_png", "neighbour_grid", "save_neighbour_grid"]


def _image_array(image: Tensor) -> tuple[np.ndarray, str | None]:
    """``(C, h, w)`` / ``(h, w)`` to something ``imshow`` draws: grey for 1 channel, RGB for 3."""
    array = image.detach().float().cpu().numpy()
    if array.ndim == 3 and array.shape[0] == 3:
        rgb = np.moveaxis(array, 0, -1)
        low, high = float(rgb.min()), float(rgb.max())
        if low < 0 or high > 1:  # normalised inputs: rescale for display only
            rgb = (rgb - low) / max(high - low, 1e-12)
        return rgb, None
    if array.ndim == 3:
        array = array.mean(0)  # any other channel count: show the channel mean
    if array.ndim != 2:
        raise ValueError(f"images: expected (C, h, w) or (h, w) per image, got {tuple(image.shape)}")
    return array, "gray_r"


def _draw(ax: Axes, image: Tensor, overlay: Tensor | None, alpha: float, title: str) -> None:
    array, cmap = _image_array(image)
    height, width = array.shape[:2]
    ax.imshow(array, cmap=cmap, interpolation="nearest")
    if overlay is not None:
        values = overlay.detach().double().cpu().numpy()
        if values.ndim == 1:  # a 1-D map: one row
            values = values[None]
        bound = max(float(np.abs(values).max()), 1e-12)
        # Stretched over the whole image; a diverging map since contributions can be negative.
        ax.imshow(
            values,
            cmap="RdBu_r",
            vmin=-bound,
            vmax=bound,
            alpha=alpha,
            interpolation="bilinear",
            extent=(-0.5, width - 0.5, height - 0.5, -0.5),
        )
    ax.set_title(title, fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])


def neighbour_grid(
    test_images: Tensor,
    neighbour_images: Tensor,
    *,
    similarities: Tensor | None = None,
    test_labels: Tensor | Sequence[int] | None = None,
    neighbour_labels: Tensor | None = None,
    heads: Tensor | None = None,
    test_maps: Tensor | None = None,
    neighbour_maps: Tensor | None = None,
    map_alpha: float = 0.55,
    title: str | None = None,
) -> Figure:
    """One row per test input: the input, then its ``K`` neighbours with similarity and label.

    With ``neighbour_maps`` each neighbour is overlaid with its similarity map; with
    ``test_maps`` a second row shows the test input overlaid with its map against each neighbour.

    :param test_images: ``(N, C, h, w)``.
    :param neighbour_images: ``(N, K, C, h, w)``.
    :param similarities: ``(N, K)``.
    :param test_labels: ``(N,)``.
    :param neighbour_labels: ``(N, K)``.
    :param heads: ``(N,)`` the head explained per row (shown under the test input).
    :param test_maps: ``(N, K, h', w')`` (see :class:`~gpex_gpytorch.explain.SimilarityMaps`).
    :param neighbour_maps: ``(N, K, h', w')``.
    """
    n, k = neighbour_images.shape[:2]
    if test_images.shape[0] != n:
        raise ValueError(f"test_images: expected {n} images (one per neighbour row), got {test_images.shape[0]}")
    rows_per = 2 if test_maps is not None else 1
    fig = Figure(figsize=(1.15 * (k + 1), 1.3 * n * rows_per + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n * rows_per, k + 1, squeeze=False)
    for i in range(n):
        top = axes[i * rows_per]
        caption = "test"
        if test_labels is not None:
            caption += f" y={int(test_labels[i])}"
        if heads is not None:
            caption += f"\nhead {int(heads[i])}"
        _draw(top[0], test_images[i], None, map_alpha, caption)
        for j in range(k):
            parts = []
            if neighbour_labels is not None:
                parts.append(f"y={int(neighbour_labels[i, j])}")
            if similarities is not None:
                parts.append(f"s={float(similarities[i, j]):.3g}")
            overlay = None if neighbour_maps is None else neighbour_maps[i, j]
            _draw(top[j + 1], neighbour_images[i, j], overlay, map_alpha, " ".join(parts))
        if test_maps is not None:
            bottom = axes[i * rows_per + 1]
            bottom[0].axis("off")
            bottom[0].text(0.5, 0.5, "test input:\nmap vs.\neach neighbour", ha="center", va="center", fontsize=6)
            for j in range(k):
                _draw(bottom[j + 1], test_images[i], test_maps[i, j], map_alpha, "")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_neighbour_grid(path: str | Path, *args: Tensor, dpi: int = 110, **kwargs: object) -> Path:
    """:func:`neighbour_grid` written to ``path`` as a PNG; returns the path."""
    path = Path(path)
    path.write_bytes(figure_png(neighbour_grid(*args, **kwargs), dpi=dpi))  # type: ignore[arg-type]
    return path
