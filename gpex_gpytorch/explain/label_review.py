"""Order training instances for label review (GPEX, Sec. 4.3: dataset debugging).

Two rankings of the inducing (= training) instances of a fitted :class:`GPEXModel`:

* :func:`label_review` — the paper's protocol. Misclassified (or all) test instances take turns;
  each shows the reviewer its most similar training instance, in the kernel space of the head it
  predicts, among those not yet shown. Works for any ``(T, N)`` score matrix through
  :func:`review_order`, which is how the baselines in ``debugging_baselines`` are ranked too.
* :func:`label_self_scores` — a global variant needing no test data: each training label is
  compared with the leave-one-out prediction of the GP's kernel regression of the labels.

:func:`plot_review` and :func:`write_review_html` show the top suspects with their labels.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..models.gpex_model import GPEXModel
from ..utils import check_positive_int, check_tensor
from .cache_freshness import check_cache_fresh
from .kernel_similarity import (
    DEFAULT_METRIC,
    check_metric,
    check_queries,
    choose_heads,
    embed_queries,
    similarity_matrix,
)

__all__ = [
    "ReviewRanking",
    "kernel_similarities",
    "label_review",
    "label_self_scores",
    "plot_review",
    "rank_by_score",
    "review_order",
    "write_review_html",
]


@dataclass(frozen=True)
class ReviewRanking:
    """Training instances in the order a reviewer should check their labels.

    :ivar indices: ``(R,)`` training indices, first to review first; each appears at most once.
    :ivar scores: ``(R,)`` the score at which each was surfaced (larger = more suspect).
    :ivar sources: ``(R,)`` the test instance (row of the score matrix) that surfaced each one;
        ``-1`` for global rankings.
    """

    indices: Tensor
    scores: Tensor
    sources: Tensor

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def _check_max_shown(max_shown: int | None, n: int) -> int:
    if max_shown is None:
        return n
    if isinstance(max_shown, bool) or not isinstance(max_shown, int) or not 1 <= max_shown <= n:
        raise ValueError(f"max_shown: expected None or an integer in [1, {n}], got {max_shown!r}")
    return max_shown


def review_order(scores: Tensor, *, max_shown: int | None = None) -> ReviewRanking:
    """The review protocol on a score matrix: rows take turns, each shows its best unshown column.

    Row ``t`` (a test instance) scores every column ``i`` (a training instance); larger means
    "show earlier". Rows are visited cyclically in index order; at its turn a row shows the
    highest-scoring training instance not shown yet. This continues until ``max_shown``
    instances (default: all) are shown, so every training instance appears exactly once.

    :param scores: ``(T, N)`` finite scores, ``T >= 1`` test instances, ``N >= 1`` training ones.
    :param max_shown: stop after this many instances.
    :raises ValueError: for an empty or non-2-D ``scores``, non-finite scores or a bad ``max_shown``.
    """
    check_tensor("scores", scores, ndim=2, floating=True, finite=True)
    num_rows, n = scores.shape
    if num_rows == 0 or n == 0:
        raise ValueError(f"scores: expected at least one row and one column, got shape {tuple(scores.shape)}")
    limit = _check_max_shown(max_shown, n)
    values = scores.detach().cpu()
    # Stable sort: among ties, lower training indices first, so the ranking is deterministic.
    order = torch.sort(values, dim=1, descending=True, stable=True).indices.tolist()
    pointer = [0] * num_rows
    shown = [False] * n
    indices: list[int] = []
    picked_scores: list[float] = []
    sources: list[int] = []
    row = 0
    while len(indices) < limit:
        ranked, p = order[row], pointer[row]
        while shown[ranked[p]]:  # every row ranks all N columns, so it never runs out before the end
            p += 1
        pick = ranked[p]
        pointer[row] = p + 1
        shown[pick] = True
        indices.append(pick)
        picked_scores.append(float(values[row, pick]))
        sources.append(row)
        row = (row + 1) % num_rows
    return ReviewRanking(
        indices=torch.tensor(indices, dtype=torch.long),
        scores=torch.tensor(picked_scores, dtype=values.dtype),
        sources=torch.tensor(sources, dtype=torch.long),
    )


def rank_by_score(scores: Tensor, *, max_shown: int | None = None) -> ReviewRanking:
    """A global ranking: training instances by decreasing ``scores`` (ties: lower index first).

    :param scores: ``(N,)`` finite per-instance suspicion scores.
    :param max_shown: keep only the first this many.
    """
    check_tensor("scores", scores, ndim=1, floating=True, finite=True)
    if scores.shape[0] == 0:
        raise ValueError("scores: expected at least one training instance, got an empty tensor")
    limit = _check_max_shown(max_shown, scores.shape[0])
    values = scores.detach().cpu()
    order = torch.sort(values, descending=True, stable=True).indices[:limit]
    return ReviewRanking(indices=order, scores=values[order], sources=torch.full_like(order, -1))


@torch.no_grad()
def kernel_similarities(
    model: GPEXModel,
    inputs: Tensor,
    heads: str | int | Tensor = "predicted",
    *,
    metric: str = DEFAULT_METRIC,
    chunk_size: int = 16384,
) -> tuple[Tensor, Tensor]:
    """Similarity of each input to every inducing instance in its head's kernel space.

    Memory is ``T × M`` (the review protocol needs each row's full ordering).

    :param model: a fitted GPEX model.
    :param inputs: ``(T, ...)`` test inputs.
    :param heads: ``"predicted"`` (arg-max of the GP's posterior mean), one head for all, or ``(T,)``.
    :param metric: as in :func:`~gpex_gpytorch.explain.nearest_neighbours` (default: the kernel correlation).
    :param chunk_size: inducing rows scored at a time.
    :returns: ``(similarities (T, M), heads (T,))``.
    """
    metric = check_metric(metric)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    check_queries(model, inputs)
    n = inputs.shape[0]
    mean = model.predict(inputs)[0] if isinstance(heads, str) else None
    chosen = choose_heads(model, mean, heads, n)
    queries = embed_queries(model, inputs, chosen, metric, chunk_size)
    return similarity_matrix(model, queries, metric, chunk_size=chunk_size), chosen


def _check_labels(name: str, labels: Tensor, n: int, what: str) -> Tensor:
    check_tensor(name, labels, ndim=1)
    if labels.shape[0] != n:
        raise ValueError(f"{name}: expected {n} labels (one per {what}), got {labels.shape[0]}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class labels, got dtype {labels.dtype}")
    return labels.long()


def label_review(
    model: GPEXModel,
    test_inputs: Tensor,
    test_labels: Tensor | None = None,
    *,
    predictions: Tensor | None = None,
    instances: str = "misclassified",
    heads: str | int | Tensor = "predicted",
    metric: str = DEFAULT_METRIC,
    max_shown: int | None = None,
    inducing_inputs: Tensor | None = None,
) -> ReviewRanking:
    """The paper's review order: misclassified test instances take turns showing their nearest unshown neighbour.

    "Nearest" is the kernel similarity in the head each test instance predicts, so the reviewer
    sees the training instances that most pulled the model towards its wrong answer — where a
    flipped label is likeliest. Test instances are visited in index order; ``sources`` refers to
    positions in ``test_inputs``.

    :param model: a GPEX model fitted with the training set as its inducing set (ranking indices
        are inducing-set indices).
    :param test_inputs: ``(T, ...)`` inputs with trusted labels.
    :param test_labels: ``(T,)`` their labels; required for ``instances="misclassified"``.
    :param predictions: ``(T,)`` the network's predicted classes (default: arg-max of the GP's
        posterior mean). They decide which instances are misclassified and, with
        ``heads="predicted"``, which head's kernel is searched.
    :param instances: ``"misclassified"`` (the paper's protocol) or ``"all"``.
    :param heads: as in :func:`kernel_similarities`; ``"predicted"`` uses ``predictions``.
    :param metric: how "nearest" is measured (default: the kernel correlation; see
        :mod:`~gpex_gpytorch.explain.kernel_similarity`). With ``"kernel"`` (the raw inner product)
        a few large-norm instances come first for every test instance.
    :param max_shown: stop after this many training instances (default: all ``M``).
    :param inducing_inputs: the ``(M, ...)`` training inputs; when given, the cache's staleness is
        checked on a sample (:func:`~gpex_gpytorch.explain.check_cache_fresh`) and a warning is
        issued if the similarities would not be the current network's.
    :raises ValueError: when no test instance is misclassified, for an empty batch, labels of the
        wrong length or unknown ``instances``.
    """
    if instances not in ("misclassified", "all"):
        raise ValueError(f"instances: expected 'misclassified' or 'all', got {instances!r}")
    metric = check_metric(metric)
    check_tensor("test_inputs", test_inputs)
    if test_inputs.dim() == 0 or test_inputs.shape[0] == 0:
        raise ValueError(f"test_inputs: expected a non-empty batch, got shape {tuple(test_inputs.shape)}")
    num_test = test_inputs.shape[0]
    if predictions is None:
        predicted = model.predict(test_inputs)[0].argmax(1)
    else:
        predicted = _check_labels("predictions", predictions, num_test, "test input").to(test_inputs.device)
        if bool((predicted < 0).any() | (predicted >= model.num_heads).any()):
            raise ValueError(
                f"predictions: expected classes in [0, {model.num_heads - 1}] (one head per class), "
                f"got values in [{int(predicted.min())}, {int(predicted.max())}]"
            )
    keep = torch.arange(num_test, device=test_inputs.device)
    if instances == "misclassified":
        if test_labels is None:
            raise ValueError("test_labels: required when instances='misclassified'")
        truth = _check_labels("test_labels", test_labels, num_test, "test input").to(predicted.device)
        keep = (predicted != truth).nonzero().flatten()
        if keep.numel() == 0:
            raise ValueError("test_labels: no test instance is misclassified; use instances='all'")
    elif test_labels is not None:
        _check_labels("test_labels", test_labels, num_test, "test input")
    chosen_heads: str | int | Tensor = heads
    if isinstance(heads, str) and heads == "predicted":
        chosen_heads = predicted[keep]
    elif isinstance(heads, Tensor):
        check_tensor("heads", heads, shape=(num_test,))
        chosen_heads = heads.to(keep.device)[keep]
    if inducing_inputs is not None:
        check_cache_fresh(model, inducing_inputs)
    similarities, _ = kernel_similarities(model, test_inputs[keep], chosen_heads, metric=metric)
    ranking = review_order(similarities, max_shown=max_shown)
    # Map rows of the (kept) score matrix back to positions in test_inputs.
    return ReviewRanking(ranking.indices, ranking.scores, keep.cpu()[ranking.sources])


@torch.no_grad()
def label_self_scores(model: GPEXModel, train_labels: Tensor, *, max_shown: int | None = None) -> ReviewRanking:
    """A global ranking: how strongly each training label disagrees with its kernel neighbourhood.

    Per head :math:`l`, the GP's kernel regresses the one-hot labels :math:`y_{il}` on the
    inducing embeddings :math:`U_l` (ridge :math:`\\sigma^2`, the GP's noise). The leave-one-out
    prediction is exact in closed form: with :math:`A = U^\\top U + \\sigma^2 I`,
    :math:`h_i = u_i^\\top A^{-1} u_i` and fit :math:`\\hat y_i`, it is
    :math:`(\\hat y_i - h_i y_i) / (1 - h_i)`. The score of instance :math:`i` with label
    :math:`c` is :math:`\\max_{l \\ne c} \\mathrm{loo}_l(i) - \\mathrm{loo}_c(i)`: positive when its
    neighbours (without itself) vote for another class.

    :param model: a GPEX model whose inducing set is the training set, one head per class.
    :param train_labels: ``(M,)`` the (possibly noisy) training labels in ``[0, H)``.
    :param max_shown: keep only the first this many.
    """
    kernel = model.covar_module
    num_heads, m = kernel.num_heads, kernel.num_inducing
    if num_heads < 2:
        raise ValueError(f"model: expected one head per class (at least 2), got {num_heads}")
    labels = _check_labels("train_labels", train_labels, m, "inducing instance").to(kernel.embeddings.device)
    if bool((labels < 0).any() | (labels >= num_heads).any()):
        raise ValueError(f"train_labels: expected classes in [0, {num_heads - 1}]")
    dtype = kernel.statistics_dtype
    u = kernel.embeddings.to(dtype)  # shape: (H, M, D)
    noise = model.noise.detach().to(dtype).expand(num_heads)
    targets = torch.nn.functional.one_hot(labels, num_heads).to(dtype).T  # shape: (H, M)
    eye = torch.eye(u.shape[-1], dtype=dtype, device=u.device)
    chol = torch.linalg.cholesky(u.transpose(1, 2) @ u + noise[:, None, None] * eye)  # shape: (H, D, D)
    solved_u = torch.cholesky_solve(u.transpose(1, 2), chol)  # A⁻¹Uᵀ, shape: (H, D, M)
    leverage = (u * solved_u.transpose(1, 2)).sum(-1)  # h_i per head, < 1 because σ² > 0
    fitted = (u @ (solved_u @ targets.unsqueeze(-1))).squeeze(-1)  # shape: (H, M)
    loo = (fitted - leverage * targets) / (1 - leverage)
    rows = torch.arange(m, device=u.device)
    own = loo[labels, rows]
    others = loo.clone()
    others[labels, rows] = float("-inf")
    return rank_by_score((others.max(0).values - own).cpu(), max_shown=max_shown)


def _check_view_args(ranking: ReviewRanking, inputs: Tensor, labels: Tensor, top: int) -> int:
    check_tensor("inputs", inputs)
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError("inputs: expected the non-empty training inputs the ranking indexes")
    _check_labels("labels", labels, inputs.shape[0], "training input")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top: expected a positive integer, got {top!r}")
    if len(ranking) and int(ranking.indices.max()) >= inputs.shape[0]:
        raise ValueError(f"ranking: indexes up to {int(ranking.indices.max())}, but inputs has {inputs.shape[0]} rows")
    return min(top, len(ranking))


def _image(x: Tensor) -> Tensor:
    x = x.detach().float().cpu()
    if x.dim() == 3 and x.shape[0] in (1, 3):
        x = x.permute(1, 2, 0)
    if x.dim() == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.dim() == 1:  # flat vectors: show a square when possible
        side = int(round(x.numel() ** 0.5))
        x = x.reshape(side, side) if side * side == x.numel() else x.unsqueeze(0)
    return x


def _label_text(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)


def plot_review(
    ranking: ReviewRanking,
    inputs: Tensor,
    labels: Tensor,
    path: str | Path | None = None,
    *,
    top: int = 24,
    columns: int = 8,
    class_names: Sequence[str] | None = None,
) -> object:
    """A grid of the first ``top`` suspects, each titled with its rank, index, label and score.

    :param ranking: from :func:`label_review` or :func:`label_self_scores`.
    :param inputs: the training inputs the ranking indexes (images ``(N, C, H, W)`` or vectors).
    :param labels: ``(N,)`` their current labels.
    :param path: write a PNG here when given.
    :returns: the matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    count = _check_view_args(ranking, inputs, labels, top)
    cols = max(1, min(columns, count))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for slot, ax in enumerate(axes.flat):
        ax.axis("off")
        if slot >= count:
            continue
        i = int(ranking.indices[slot])
        ax.imshow(_image(inputs[i]).numpy(), cmap="gray")
        title = f"#{slot + 1} i={i}\nlabel {_label_text(int(labels[i]), class_names)}"
        ax.set_title(f"{title}\n{float(ranking.scores[slot]):.3g}", fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def write_review_html(
    ranking: ReviewRanking,
    inputs: Tensor,
    labels: Tensor,
    path: str | Path,
    *,
    top: int = 24,
    class_names: Sequence[str] | None = None,
    title: str = "Training labels to review",
) -> Path:
    """A self-contained HTML page: the suspects grid (inlined PNG) and a table of the first ``top``.

    :returns: the path written.
    """
    import matplotlib.pyplot as plt

    count = _check_view_args(ranking, inputs, labels, top)
    fig = plot_review(ranking, inputs, labels, top=top, class_names=class_names)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    rows = "".join(
        f"<tr><td>{rank + 1}</td><td>{int(ranking.indices[rank])}</td>"
        f"<td>{html.escape(_label_text(int(labels[int(ranking.indices[rank])]), class_names))}</td>"
        f"<td>{float(ranking.scores[rank]):.4g}</td><td>{int(ranking.sources[rank])}</td></tr>"
        for rank in range(count)
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><img alt='top suspects' src='data:image/png;base64,{image}'>"
        "<table border='1'><tr><th>rank</th><th>training index</th><th>label</th><th>score</th>"
        f"<th>surfaced by test instance</th></tr>{rows}</table></body></html>"
    )
    target = Path(path)
    target.write_text(page, encoding="utf-8")
    return target
