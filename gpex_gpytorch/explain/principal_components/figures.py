"""Completeness figures: cumulative explained variance and ablation curves, PCs against neurons."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from .completeness import AblationCurve, VarianceCompleteness

__all__ = ["plot_completeness"]

_STYLE = {
    "pc_descending": ("tab:blue", "-", "PCs, highest variance first"),
    "pc_ascending": ("tab:blue", ":", "PCs, lowest variance first"),
    "neuron_descending": ("tab:orange", "-", "neurons, highest variance first"),
    "neuron_ascending": ("tab:orange", ":", "neurons, lowest variance first"),
}


def plot_completeness(
    variance: VarianceCompleteness,
    curves: Mapping[str, AblationCurve],
    path: str | Path,
    *,
    title: str | None = None,
    baseline: float | None = None,
    dpi: int = 120,
) -> Path:
    """Two panels saved as a PNG: completeness 1 (left) and completeness 2 (right).

    :param variance: from :func:`variance_completeness`.
    :param curves: from :func:`ablation_curves` (any subset of its four keys).
    :param path: the PNG to write (parent folders are created).
    :param baseline: the unablated accuracy, drawn as a dashed line.
    :returns: the path written.
    """
    if not isinstance(variance, VarianceCompleteness):
        raise TypeError(f"variance: expected a VarianceCompleteness, got {type(variance).__name__}")
    if not isinstance(curves, Mapping) or not all(isinstance(c, AblationCurve) for c in curves.values()):
        raise TypeError(f"curves: expected a mapping of name to AblationCurve, got {type(curves).__name__}")
    fig = Figure(figsize=(10.0, 3.8))
    left, right = fig.subplots(1, 2)
    k_pc = range(1, len(variance.pc) + 1)
    k_neuron = range(1, len(variance.neuron) + 1)
    left.plot(k_pc, variance.pc.numpy(), color="tab:blue", label="top-k PCs")
    left.plot(k_neuron, variance.neuron.numpy(), color="tab:orange", label="top-k neurons (by variance)")
    for share, k in variance.k_pc.items():
        left.axhline(share, color="0.8", lw=0.8, zorder=0)
        if k is not None:
            left.plot([k], [share], "o", color="tab:blue", ms=3)
        kn = variance.k_neuron.get(share)
        if kn is not None:
            left.plot([kn], [share], "o", color="tab:orange", ms=3)
    left.set_xscale("log")
    left.set_xlabel("k (basis vectors kept)")
    left.set_ylabel("share of activation variance")
    left.set_title("completeness 1: explained variance", fontsize=9)
    left.legend(fontsize=7, loc="lower right")
    for key, curve in curves.items():
        color, style, label = _STYLE.get(key, ("0.3", "-", key))
        right.plot(curve.ks, curve.scores, style, color=color, label=label, marker=".", ms=3)
    if baseline is not None:
        right.axhline(baseline, color="0.5", ls="--", lw=0.8, label="no ablation")
    right.set_xscale("symlog", linthresh=1.0)
    right.set_xlim(left=0)
    right.set_xlabel("k (basis vectors ablated)")
    right.set_ylabel("accuracy")
    right.set_title("completeness 2: cumulative ablation", fontsize=9)
    right.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    # fixed margins: tight_layout costs about half a second per figure
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84 if title else 0.9, wspace=0.22)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out
