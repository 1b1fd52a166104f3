"""One call, one result: what the GPs say about a batch of inputs, ready to tabulate, serialise and draw.

:func:`explain` gathers what is otherwise several calls — the posterior mean and variance of
every head, the nearest inducing instances in the explained head's kernel space
(:func:`~gpex_gpytorch.explain.nearest_neighbours`) with their labels, and the instances that
push the posterior mean up or pull it down (:func:`~gpex_gpytorch.explain.posterior_contributions`)
— into one :class:`Explanation`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..models.gpex_model import GPEXModel
from ..utils.batch_shape import check_batched
from ..utils.modules import eval_mode
from .contributions import Contributions, posterior_contributions
from .kernel_similarity import DEFAULT_METRIC
from .nearest_neighbours import nearest_neighbours

__all__ = ["Explanation", "explain"]

_TABLES = ("queries", "neighbours", "contributions")


@dataclass(frozen=True, eq=False)  # eq would compare tensors elementwise
class Explanation:
    """What the GPs say about ``N`` inputs (all tensors on the CPU).

    :ivar inputs: ``(N, ...)`` the inputs explained.
    :ivar prediction: ``(N,)`` the head of largest posterior mean (the predicted class of a classifier).
    :ivar mean: ``(N, H)`` posterior means of every head.
    :ivar variance: ``(N, H)`` posterior variances of every head.
    :ivar heads: ``(N,)`` the head explained for each input (its kernel space is searched).
    :ivar neighbour_indices: ``(N, k)`` inducing indices, most similar first.
    :ivar similarities: ``(N, k)`` their similarity under :attr:`metric`.
    :ivar kernel_values: ``(N, k)`` their kernel value :math:`k_l(x, \\tilde x_m)`.
    :ivar contributions: the largest positive and negative terms of the explained head's mean.
    :ivar metric: the similarity that ranked the neighbours.
    :ivar neighbour_labels: ``(N, k)`` labels of the neighbours, when the inducing labels are known.
    :ivar neighbour_inputs: ``(N, k, ...)`` the neighbours themselves, when the inducing inputs are known.
    :ivar network_output: ``(N, H)`` the explained network's output, when the network was given.
    :ivar head_names: ``H`` names (e.g. class names), or ``None``.
    :ivar feature_names: names of the input features of tabular inputs, or ``None``.
    """

    inputs: Tensor
    prediction: Tensor
    mean: Tensor
    variance: Tensor
    heads: Tensor
    neighbour_indices: Tensor
    similarities: Tensor
    kernel_values: Tensor
    contributions: Contributions
    metric: str = DEFAULT_METRIC
    neighbour_labels: Tensor | None = None
    neighbour_inputs: Tensor | None = None
    network_output: Tensor | None = None
    head_names: list[str] | None = None
    feature_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def _head_name(self, head: int) -> str:
        if self.head_names is not None and 0 <= head < len(self.head_names):
            return self.head_names[head]
        return str(head)

    # ------------------------------------------------------------------ tables
    def to_records(self, table: str = "neighbours") -> list[dict[str, Any]]:
        """One table as a list of dicts (JSON-ready).

        :param table: ``"queries"`` (one row per input: prediction, mean and variance of the
            explained head, network output), ``"neighbours"`` (one row per input and neighbour
            rank) or ``"contributions"`` (one row per input and term, positive then negative).
        """
        if table not in _TABLES:
            raise ValueError(f"table: expected one of {_TABLES}, got {table!r}")
        rows: list[dict[str, Any]] = []
        for i in range(len(self)):
            head = int(self.heads[i])
            base = {"query": i, "head": head, "head_name": self._head_name(head)}
            if table == "queries":
                row = {
                    **base,
                    "prediction": int(self.prediction[i]),
                    "prediction_name": self._head_name(int(self.prediction[i])),
                    "mean": float(self.mean[i, head]),
                    "variance": float(self.variance[i, head]),
                }
                if self.network_output is not None:
                    row["network_output"] = float(self.network_output[i, head])
                    row["network_prediction"] = int(self.network_output[i].argmax())
                rows.append(row)
            elif table == "neighbours":
                for rank in range(self.neighbour_indices.shape[1]):
                    row = {
                        **base,
                        "rank": rank,
                        "index": int(self.neighbour_indices[i, rank]),
                        "similarity": float(self.similarities[i, rank]),
                        "kernel_value": float(self.kernel_values[i, rank]),
                    }
                    if self.neighbour_labels is not None:
                        row["label"] = int(self.neighbour_labels[i, rank])
                    rows.append(row)
            else:
                c = self.contributions
                for sign, indices, values in (
                    ("positive", c.positive_indices, c.positive),
                    ("negative", c.negative_indices, c.negative),
                ):
                    for rank in range(indices.shape[1]):
                        rows.append(
                            {
                                **base,
                                "sign": sign,
                                "rank": rank,
                                "index": int(indices[i, rank]),
                                "contribution": float(values[i, rank]),
                            }  # fmt: skip
                        )
        return rows

    def to_frame(self, table: str = "neighbours") -> Any:
        """One table (see :meth:`to_records`) as a ``pandas.DataFrame``.

        :raises ImportError: when pandas is not installed (use :meth:`to_records` instead).
        """
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError(
                "Explanation.to_frame needs pandas (pip install pandas); to_records() returns the same rows as dicts"
            ) from error
        return pd.DataFrame.from_records(self.to_records(table))

    def to_dict(self) -> dict[str, Any]:
        """Everything, nested per input: JSON-ready."""
        neighbours = self.to_records("neighbours")
        contributions = self.to_records("contributions")
        queries = self.to_records("queries")
        for query in queries:
            i = query["query"]
            query["mean_all_heads"] = self.mean[i].tolist()
            query["variance_all_heads"] = self.variance[i].tolist()
            query["contribution_total"] = float(self.contributions.total[i])
            query["neighbours"] = [{k: v for k, v in n.items() if k not in ("query", "head", "head_name")}
                                   for n in neighbours if n["query"] == i]  # fmt: skip
            query["contributions"] = [{k: v for k, v in c.items() if k not in ("query", "head", "head_name")}
                                      for c in contributions if c["query"] == i]  # fmt: skip
        return {"metric": self.metric, "head_names": self.head_names, "queries": queries}

    def to_json(self, path: str | Path | None = None, *, indent: int = 2) -> str:
        """:meth:`to_dict` as JSON text, also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    # ------------------------------------------------------------------ figure
    def plot(self, path: str | Path | None = None, *, max_queries: int = 6, dpi: int = 110) -> Figure:
        """Each input next to its neighbours: an image grid for image inputs, a feature table for tabular rows.

        Tabular inputs (one feature axis) are drawn as a heat map per input — the input and its
        neighbours as rows, the features (named by :attr:`feature_names`) as columns, coloured by
        each feature's range over the rows shown — next to a bar chart of the largest positive and
        negative contributions to the explained head's mean.

        :param path: also write the figure there as a PNG.
        :param max_queries: draw at most this many inputs.
        """
        if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
            raise ValueError(f"max_queries: expected an integer >= 1, got {max_queries!r}")
        n = min(len(self), max_queries)
        example_dims = self.inputs.dim() - 1
        if example_dims in (2, 3):
            fig = self._plot_images(n)
        elif example_dims == 1:
            fig = self._plot_table(n)
        else:
            raise ValueError(
                f"inputs: plot draws images (C, h, w) / (h, w) or feature vectors, got per-example shape "
                f"{tuple(self.inputs.shape[1:])}"
            )
        if path is not None:
            fig.savefig(path, format="png", dpi=dpi)
        return fig

    def _plot_images(self, n: int) -> Figure:
        from .figures import neighbour_grid

        if self.neighbour_inputs is None:
            raise ValueError(
                "inducing_inputs: pass them to explain() (or save them with the explainer) to draw neighbours"
            )
        return neighbour_grid(
            self.inputs[:n],
            self.neighbour_inputs[:n],
            similarities=self.similarities[:n],
            test_labels=self.prediction[:n],
            neighbour_labels=None if self.neighbour_labels is None else self.neighbour_labels[:n],
            heads=self.heads[:n],
            title=f"inputs (y = GP prediction) and their nearest inducing examples ({self.metric})",
        )

    def _plot_table(self, n: int) -> Figure:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        k = self.neighbour_indices.shape[1]
        num_features = self.inputs.shape[1]
        names = self.feature_names or [f"x{j}" for j in range(num_features)]
        if len(names) != num_features:
            raise ValueError(f"feature_names: expected {num_features} names, got {len(names)}")
        width = min(max(4.0, 0.45 * num_features + 2.0), 16.0)
        fig = Figure(figsize=(width + 4.0, (0.32 * (k + 1) + 1.2) * n))
        FigureCanvasAgg(fig)
        axes = fig.subplots(n, 2, squeeze=False, gridspec_kw={"width_ratios": [width, 4.0]})
        for i in range(n):
            head = int(self.heads[i])
            left, right = axes[i]
            labels = [f"input: {self._head_name(int(self.prediction[i]))} (μ={float(self.mean[i, head]):.3g}, "
                      f"σ²={float(self.variance[i, head]):.2g})"]  # fmt: skip
            for rank in range(k):
                label = f"#{int(self.neighbour_indices[i, rank])}"
                if self.neighbour_labels is not None:
                    label += f" y={self._head_name(int(self.neighbour_labels[i, rank]))}"
                labels.append(f"{label} s={float(self.similarities[i, rank]):.3f}")
            if self.neighbour_inputs is not None:
                rows = torch.cat([self.inputs[i : i + 1], self.neighbour_inputs[i]]).double().numpy()
                low, high = rows.min(0), rows.max(0)
                scaled = (rows - low) / np.maximum(high - low, 1e-12)
                left.imshow(scaled, aspect="auto", cmap="viridis", interpolation="nearest")
                if num_features <= 16:
                    for r in range(rows.shape[0]):
                        for c in range(num_features):
                            colour = "white" if scaled[r, c] < 0.5 else "black"
                            left.text(c, r, f"{rows[r, c]:.3g}", ha="center", va="center", fontsize=5, color=colour)
                left.set_xticks(range(num_features), names, rotation=60, ha="right", fontsize=6)
            else:
                left.barh(range(k + 1), [0.0] + self.similarities[i].tolist())
                left.invert_yaxis()
                left.set_xlabel(f"similarity ({self.metric})", fontsize=6)
            left.set_yticks(range(k + 1), labels, fontsize=6)
            left.set_title(f"input {i}: head {self._head_name(head)}, nearest inducing rows", fontsize=7)
            c = self.contributions
            values = c.positive[i].tolist() + c.negative[i].tolist()
            indices = c.positive_indices[i].tolist() + c.negative_indices[i].tolist()
            right.barh(range(len(values)), values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
            right.set_yticks(range(len(values)), [f"#{m}" for m in indices], fontsize=6)
            right.invert_yaxis()
            right.axvline(0.0, color="black", linewidth=0.5)
            right.set_title(f"contributions to μ (sum {float(c.total[i]):.3g})", fontsize=7)
            right.tick_params(axis="x", labelsize=6)
        fig.tight_layout()
        return fig


def _example_shape(model: GPEXModel, inducing_inputs: Tensor | None) -> tuple[int, ...] | None:
    if inducing_inputs is not None:
        return tuple(inducing_inputs.shape[1:])
    spec = getattr(model.covar_module.feature_extractor, "input_shape", None)
    return tuple(spec) if isinstance(spec, tuple) else None


@torch.no_grad()
def explain(
    model: Any,
    inputs: Tensor,
    k: int = 10,
    *,
    heads: str | int | Tensor = "predicted",
    metric: str = DEFAULT_METRIC,
    num_contributions: int = 5,
    network: nn.Module | None = None,
    inducing_inputs: Tensor | None = None,
    inducing_labels: Tensor | None = None,
    head_names: list[str] | None = None,
    feature_names: list[str] | None = None,
) -> Explanation:
    """Explain a batch of inputs: prediction, posterior mean and variance, neighbours, contributions.

    Example::

        explanation = explain(load_explainer("explainer.pt"), x_test[:4], k=5)
        explanation.to_frame("neighbours")     # one row per input and neighbour
        explanation.to_json("explanation.json")
        explanation.plot("explanation.png")    # images: a neighbour grid; tabular: feature tables

    :param model: a fitted :class:`GPEXModel`, or a :class:`~gpex_gpytorch.distillation.SavedExplainer`
        (whose inducing inputs, labels and names are then used unless given here).
    :param inputs: ``(N, ...)`` a batch of inputs (a single example needs a batch dimension).
    :param k: neighbours per input.
    :param heads: the head explained: ``"predicted"`` (largest posterior mean), an ``int``, or ``(N,)``.
    :param metric: similarity ranking the neighbours (see :func:`nearest_neighbours`).
    :param num_contributions: positive and negative contribution terms kept per input.
    :param network: the explained network; its output is reported next to the GP's.
    :param inducing_inputs: ``(M, ...)`` the inducing inputs, to show the neighbours themselves.
    :param inducing_labels: ``(M,)`` their labels.
    :param head_names: one name per head.
    :param feature_names: names of the input features (tabular inputs).
    """
    saved_inputs = saved_labels = saved_heads = saved_features = None
    if not isinstance(model, GPEXModel):
        from ..distillation.saved_explainer import SavedExplainer

        if not isinstance(model, SavedExplainer):
            raise TypeError(f"model: expected a GPEXModel or a SavedExplainer, got {type(model).__name__}")
        saved_inputs, saved_labels = model.inducing_inputs, model.inducing_labels
        saved_heads, saved_features = model.head_names, model.feature_names
        model = model.model
    inducing_inputs = saved_inputs if inducing_inputs is None else inducing_inputs
    inducing_labels = saved_labels if inducing_labels is None else inducing_labels
    head_names = saved_heads if head_names is None else list(head_names)
    feature_names = saved_features if feature_names is None else list(feature_names)
    kernel = model.covar_module
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs: expected a tensor, got {type(inputs).__name__}")
    shape = _example_shape(model, inducing_inputs)
    if shape is not None:
        check_batched("inputs", inputs, shape)
    for name, tensor in (("inducing_inputs", inducing_inputs), ("inducing_labels", inducing_labels)):
        if tensor is not None and tensor.shape[0] != kernel.num_inducing:
            raise ValueError(f"{name}: expected num_inducing={kernel.num_inducing} rows, got {tuple(tensor.shape)}")
    if head_names is not None and len(head_names) != model.num_heads:
        raise ValueError(f"head_names: expected {model.num_heads} names, got {len(head_names)}")
    device = kernel.embeddings.device
    x = inputs.to(device)
    neighbours = nearest_neighbours(model, x, k=k, heads=heads, metric=metric)
    # The same heads for the contributions as for the neighbours (already chosen and validated).
    contributions = posterior_contributions(model, x, k=num_contributions, heads=neighbours.heads)
    mean, variance = model.predict(x)
    network_output = None
    if network is not None:
        with eval_mode(network):
            network_output = network(x)
        if not isinstance(network_output, Tensor) or network_output.shape != mean.shape:
            got = tuple(network_output.shape) if isinstance(network_output, Tensor) else type(network_output).__name__
            raise ValueError(
                f"network: expected an output of shape {tuple(mean.shape)} (one column per head), got {got}"
            )
    indices = neighbours.indices.cpu()
    return Explanation(
        inputs=inputs.detach().cpu(),
        prediction=mean.argmax(1).cpu(),
        mean=mean.cpu(),
        variance=variance.cpu(),
        heads=neighbours.heads.cpu(),
        neighbour_indices=indices,
        similarities=neighbours.similarities.cpu(),
        kernel_values=neighbours.kernel_values.cpu(),
        contributions=Contributions(**{name: value.cpu() for name, value in vars(contributions).items()}),
        metric=neighbours.metric,
        neighbour_labels=None if inducing_labels is None else inducing_labels.cpu()[indices],
        neighbour_inputs=None if inducing_inputs is None else inducing_inputs.cpu()[indices],
        network_output=None if network_output is None else network_output.detach().cpu(),
        head_names=head_names,
        feature_names=feature_names,
    )
