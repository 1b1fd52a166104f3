"""Fitting the pathway generator against a frozen target network.

Because the target is frozen, its unmasked logits and the channel summaries the generator reads
are constants of the data: :func:`fit_pathways` computes them once, before the first epoch, and
each step then costs one generator pass and one masked pass of the target.

Schedule: the learning rate follows a cosine from ``lr`` to 0. The first ``soft_fraction`` of
the epochs run the target with soft masks ``sigmoid(logit)`` (smooth, easy to optimise, lets the
sparsity term prune gradually); the rest run it with straight-through binary masks, so the
network the generator is trained against is the one it is evaluated on (binary at inference).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gpex_gpytorch.explain.pathways.generator import PathwayExplainer, binarize
from gpex_gpytorch.explain.pathways.objectives import PathwayObjective
from gpex_gpytorch.utils.modules import eval_mode

__all__ = [
    "PathwayTrainingConfig",
    "dataset_inputs",
    "fit_pathways",
    "frozen",
    "train_pathway_explainer",
]


@dataclass(frozen=True)
class PathwayTrainingConfig:
    """Hyper-parameters of :func:`fit_pathways`.

    :ivar epochs: passes over the data.
    :ivar batch_size: instances per step (the contrastive term needs several per class).
    :ivar lr: initial AdamW learning rate, annealed to 0 along a cosine over all steps (the
        straight-through phase is noisy; annealing lets the masks settle instead of oscillating
        across the faithfulness boundary at the last epoch).
    :ivar weight_decay: decoupled weight decay (AdamW) of the generator's parameters.
    :ivar soft_fraction: fraction of the epochs trained with soft masks before switching to
        straight-through binary masks.
    :ivar seed: seeds the generator's initialisation (in :func:`train_pathway_explainer`) and the
        batch order; the global RNG state is restored afterwards.
    :ivar progress: show a tqdm progress bar.
    :ivar objective: the loss (:class:`PathwayObjective`).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 0.05
    soft_fraction: float = 0.3
    seed: int = 0
    progress: bool = False
    objective: PathwayObjective = field(default_factory=PathwayObjective)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs: expected >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size: expected >= 2, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a value > 0, got {self.lr}")
        if not 0.0 <= self.soft_fraction <= 1.0:
            raise ValueError(f"soft_fraction: expected a value in [0, 1], got {self.soft_fraction}")


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` on every parameter; restore both on exit
    (every sub-module's own train/eval flag, see :func:`~gpex_gpytorch.utils.modules.eval_mode`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def dataset_inputs(dataset: Dataset | Tensor) -> Tensor:
    """The inputs of a dataset: a tensor as is, ``dataset.tensors[0]`` of a ``TensorDataset``, else stacked items."""
    if isinstance(dataset, Tensor):
        return dataset
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return tensors[0]
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([item[0] if isinstance(item, tuple | list) else item for item in items])


def fit_pathways(
    explainer: PathwayExplainer,
    dataset: Dataset | Tensor,
    config: PathwayTrainingConfig | None = None,
) -> list[dict[str, float]]:
    """Train ``explainer.generator`` in place; the target stays frozen and is restored afterwards.

    :param dataset: the inputs (a tensor or a dataset whose items start with the input); labels are
        not used -- the pathway of an input is defined relative to the network's own prediction.
    :returns: one dict per epoch with the mean ``loss``, ``faithfulness``, ``sparsity``,
        ``relevance``, ``density``, ``gate`` and the ``agreement`` of the masked with the full network.
    """
    config = config or PathwayTrainingConfig()
    inputs = dataset_inputs(dataset)
    if inputs.shape[0] < 2:
        raise ValueError(f"dataset: expected at least 2 instances, got {inputs.shape[0]}")
    history: list[dict[str, float]] = []
    generator = explainer.generator
    optimizer = torch.optim.AdamW(generator.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = sum(1 for b in torch.arange(inputs.shape[0]).split(config.batch_size) if b.numel() >= 2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    order_rng = torch.Generator().manual_seed(config.seed)
    soft_epochs = math.ceil(config.soft_fraction * config.epochs)
    with frozen(explainer.target):
        full_logits, summaries = _precompute(explainer, inputs, config.batch_size)
        generator.train()
        epochs = tqdm(range(config.epochs), desc="pathways", disable=not config.progress)
        for epoch in epochs:
            mode = "soft" if epoch < soft_epochs else "straight_through"
            totals: dict[str, float] = {}
            permutation = torch.randperm(inputs.shape[0], generator=order_rng)
            batches = [b for b in permutation.split(config.batch_size) if b.numel() >= 2]
            for index in batches:
                batch_summaries = {n: s[index] for n, s in summaries.items()}
                soft = explainer.probabilities(batch_summaries, full_logits[index])
                masks = {n: binarize(p, mode) for n, p in soft.items()}
                masked = explainer.masked_logits(inputs[index], masks)
                terms = config.objective(masks, masked, full_logits[index], soft_masks=soft)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                optimizer.step()
                scheduler.step()
                agreement = (masked.argmax(1) == full_logits[index].argmax(1)).float().mean()
                for key, value in [*terms.items(), ("agreement", agreement)]:
                    totals[key] = totals.get(key, 0.0) + float(value.detach()) * index.numel()
            record = {k: v / inputs.shape[0] for k, v in totals.items()}
            record["epoch"] = float(epoch)
            history.append(record)
            epochs.set_postfix(density=f"{record['density']:.3f}", agree=f"{record['agreement']:.3f}")
        generator.eval()
    return history


def _precompute(explainer: PathwayExplainer, inputs: Tensor, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
    logits: list[Tensor] = []
    parts: dict[str, list[Tensor]] = {}
    for chunk in inputs.split(max(batch_size, 256)):
        chunk_logits, chunk_summaries = explainer.full_forward(chunk)
        logits.append(chunk_logits)
        for name, value in chunk_summaries.items():
            parts.setdefault(name, []).append(value)
    return torch.cat(logits), {n: torch.cat(v) for n, v in parts.items()}


def train_pathway_explainer(
    target: nn.Module,
    mask_layers: Sequence[str],
    dataset: Dataset | Tensor,
    config: PathwayTrainingConfig | None = None,
    *,
    read_layers: Sequence[str] | None = None,
    hidden: int = 64,
    init_bias: float = 1.0,
    dropout: float = 0.0,
    condition_on_prediction: bool = True,
) -> tuple[PathwayExplainer, list[dict[str, float]]]:
    """Build a :class:`PathwayExplainer` for ``target`` and fit it on ``dataset``, reproducibly from ``config.seed``.

    The generator's initialisation draws from a forked RNG seeded with ``config.seed``; the global
    RNG state is left as it was.
    """
    config = config or PathwayTrainingConfig()
    inputs = dataset_inputs(dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        with frozen(target):
            explainer = PathwayExplainer.build(
                target,
                mask_layers,
                inputs[:2],
                read_layers=read_layers,
                hidden=hidden,
                init_bias=init_bias,
                dropout=dropout,
                condition_on_prediction=condition_on_prediction,
            )
    history = fit_pathways(explainer, inputs, config)
    return explainer, history
