"""Train and evaluate the reference classifiers (the ANNs that GPEX then explains)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..utils.modules import eval_mode
from ..utils.progress import ProgressSetting, progress_bar, resolve_progress

__all__ = ["accuracy", "fit_classifier", "predict_logits"]


def _check_dataset(dataset: Dataset, name: str, labels: bool = True) -> int:
    try:
        length = len(dataset)  # type: ignore[arg-type]
    except TypeError as error:
        raise TypeError(f"{name}: expected a map-style dataset with __len__, got {type(dataset).__name__}") from error
    if length == 0:
        raise ValueError(f"{name}: expected a non-empty dataset, got one of length 0")
    item = dataset[0]
    if not isinstance(item, (tuple, list)) or len(item) < (2 if labels else 1) or not isinstance(item[0], Tensor):
        expected = "(inputs, labels)" if labels else "(inputs, ...)"
        raise ValueError(
            f"{name}: expected items {expected} with a tensor input, got {type(item).__name__}"
            + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        )
    return length


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError("model: expected a module with parameters, found none")
    return parameter.device


def _adam(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # The fused kernel (CPU since torch 2.4) is a large share of a step for a 1,024-wide layer;
    # fall back to the default implementation where it is unsupported.
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def fit_classifier(
    model: nn.Module,
    train_dataset: Dataset,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: ProgressSetting = False,
) -> nn.Module:
    """Train ``model`` with Adam on the cross-entropy of its logits.

    Shuffling and any randomness inside the model (e.g. dropout) are drawn from a generator
    seeded with ``seed``, inside a forked RNG state, so the same model initialisation and seed
    give the same weights, and the caller's global RNG is left untouched.

    :param model: maps an input batch to logits ``(B, num_classes)``; trained in place.
    :param train_dataset: map-style dataset of ``(inputs, labels)``, labels int class indices.
    :param epochs: passes over the data.
    :param batch_size: examples per step (the last, smaller batch is kept).
    :param lr: Adam's learning rate.
    :param weight_decay: Adam's L2 penalty.
    :param seed: seed of the shuffling and of the model's own randomness.
    :param progress: show a tqdm bar with the running loss (``"auto"``: only on a terminal).
    :returns: ``model``, trained and switched to eval mode.
    :raises ValueError: for an empty dataset, items that are not ``(inputs, labels)``, a model
        without parameters or non-positive ``epochs``/``batch_size``/``lr``.
    """
    _check_dataset(train_dataset, "train_dataset")
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr: expected a value > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay: expected a value >= 0, got {weight_decay!r}")
    device = _device(model)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []

    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = _adam(model, lr, weight_decay)
    loss_fn = nn.CrossEntropyLoss()

    bar = None
    if resolve_progress(progress):
        bar = progress_bar(total=epochs * len(loader), desc="fit_classifier", unit="step", progress=progress)
    model.train()
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        try:
            for epoch in range(epochs):
                for inputs, labels in loader:
                    inputs, labels = inputs.to(device), labels.to(device)
                    logits = model(inputs)
                    if logits.dim() != 2 or logits.shape[0] != inputs.shape[0]:
                        raise ValueError(
                            f"model: expected logits of shape (batch, num_classes), got {tuple(logits.shape)}"
                        )
                    loss = loss_fn(logits, labels.long())
                    if not torch.isfinite(loss):
                        raise ValueError(f"epoch {epoch}: non-finite training loss {loss.item()}; lower lr?")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if bar is not None:
                        bar.update()
                        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
    model.eval()
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> Tensor:
    """The model's outputs on every item of ``dataset``, in order, in eval mode.

    The model's train/eval mode is restored afterwards.

    :param dataset: items ``(inputs, ...)``; labels, if any, are ignored.
    :returns: ``(N, num_classes)`` on the model's device.
    """
    _check_dataset(dataset, "dataset", labels=False)
    _check_positive_int("batch_size", batch_size)
    device = _device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with eval_mode(model):
        return torch.cat([model(inputs.to(device)) for inputs, *_ in loader])


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> float:
    """Fraction of ``dataset``'s ``(inputs, labels)`` whose arg-max logit is the label.

    Runs in eval mode and restores the model's previous train/eval mode afterwards.
    """
    _check_dataset(dataset, "dataset")
    _check_positive_int("batch_size", batch_size)
    device = _device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    correct = total = 0
    with eval_mode(model):
        for inputs, labels, *_ in loader:
            predicted = model(inputs.to(device)).argmax(dim=-1)
            correct += int((predicted == labels.to(device)).sum())
            total += labels.shape[0]
    return correct / total
