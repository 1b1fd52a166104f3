"""Run a pipeline with one sub-module's output replaced by its GP, and measure what changes.

The swap is a forward hook on the sub-module that *returns* the replacement (PyTorch then uses
it as the sub-module's output; :class:`~gpex_gpytorch.utils.hooks.ForwardHooks`); the
sub-module's own ``forward`` is untouched and still runs. Leaving the context removes the hook
(also when an exception is raised), so the pipeline's output afterwards is exactly what it was
before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..models.gpex_model import GPEXModel
from ..utils.hooks import ForwardHooks, ModuleCall
from ..utils.network_output import OutputSelector, check_output_selector, replace_output, select_output
from .submodule_call import SubmoduleCall
from .submodule_capture import ForwardFn, preserved_modes, resolve_submodule, run_pipeline

__all__ = ["PipelineComparison", "compare_pipeline", "gp_replacement", "substitute_gp"]

MODES = ("mean", "sample")


@torch.no_grad()
def gp_replacement(
    model: GPEXModel,
    x: Tensor,
    output_shape: tuple[int, ...],
    *,
    mode: str = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    """The GP's stand-in for a sub-module's output on input ``x``: ``(N, *output_shape)``.

    :param mode: ``"mean"`` (the posterior mean) or ``"sample"`` (a draw from each head's marginal
        posterior :math:`\\mathcal N(\\mu, \\sigma^2)` at each input, independently; correlations
        between inputs of a batch are ignored).
    :param generator: the random source of ``"sample"``.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    device = model.covar_module.embeddings.device
    mean, variance = model.predict(x.to(device))  # shape: (N, H) each
    heads = math.prod(output_shape)
    if mean.shape[1] != heads:
        raise ValueError(
            f"model: the GP has {mean.shape[1]} heads but the sub-module's output {tuple(output_shape)} "
            f"has {heads} values per example"
        )
    if mode == "sample":
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(device)
        mean = mean + variance.clamp_min(0).sqrt() * noise
    return mean.reshape(mean.shape[0], *output_shape)


@contextmanager
def substitute_gp(
    pipeline: nn.Module,
    name: str | nn.Module,
    model: GPEXModel,
    *,
    mode: str = "mean",
    generator: torch.Generator | None = None,
    input: int | str | None = None,
    output: OutputSelector = None,
) -> Iterator[nn.Module]:
    """Within the context, the sub-module's output is the GP's posterior mean (or a sample).

    The GP is evaluated on the sub-module's own input (the input it was distilled on), and its
    ``(N, H)`` result is reshaped to the sub-module's output shape, dtype and device. For a
    sub-module called with several arguments or returning a structure (a transformer block's
    ``(hidden_states, mask)``, an attention module's ``(output, weights)``, a HuggingFace
    model-output object), ``input`` and ``output`` say which argument was explained and which part
    of the output the GP stands for, as they did when it was distilled
    (:class:`~gpex_gpytorch.explain.SubmoduleExplainer`); the rest of the output passes through.

    Example::

        with substitute_gp(model, "attention", explainer.model_):
            logits_with_gp = model(images)
        # here the model is back to its original behaviour, exactly

    :param pipeline: the whole model.
    :param name: the sub-module's dotted name, or the module.
    :param model: the GPEX model distilled from the sub-module.
    :param mode: ``"mean"`` or ``"sample"`` (see :func:`gp_replacement`).
    :param generator: the random source of ``"sample"``.
    :param input: the explained input: a position or a parameter name (default: the first positional
        argument, else the only tensor keyword argument).
    :param output: the explained part of the output: a tuple index, a key or an attribute name
        (a callable selector cannot be inverted and is refused).
    :returns: (as the context value) the sub-module whose output is replaced.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not isinstance(model, GPEXModel):
        raise TypeError(f"model: expected a GPEXModel, got {type(model).__name__}")
    check_output_selector("output", output)
    if output is not None and not isinstance(output, (int, str)):
        raise TypeError(
            "output: a callable selector cannot be inverted to put the GP's values back into the sub-module's "
            "output; select the tensor with a key or attribute name or a tuple index"
        )
    dotted, module = resolve_submodule(pipeline, name)
    where = f"sub-module {dotted!r}"

    def replace(call: ModuleCall) -> Any:
        slot = SubmoduleCall.find_slot(module, call.args, call.kwargs, input, where)
        x = call.args[slot[1]] if slot[0] == "arg" else call.kwargs[slot[1]]  # type: ignore[index]
        if not isinstance(x, Tensor) or x.dim() == 0:
            raise TypeError(
                f"{where}: the explained input is a {type(x).__name__}, expected a batched tensor (see input=)"
            )
        explained = select_output(call.output, output, where)
        replacement = gp_replacement(model, x, tuple(explained.shape[1:]), mode=mode, generator=generator)
        replacement = replacement.to(dtype=explained.dtype, device=explained.device)
        return replace_output(call.output, output, replacement, where)

    with ForwardHooks({dotted: module}, replace):
        yield module


@dataclass(frozen=True)
class PipelineComparison:
    """How the pipeline's final output changes when the sub-module is replaced by its GP.

    :ivar mean_abs_change: mean of ``|output_gp - output|`` over all entries.
    :ivar max_abs_change: its maximum.
    :ivar agreement: fraction of examples whose arg-max (last dimension) is unchanged.
    :ivar accuracy: the original pipeline's accuracy (when ``label_fn`` was given), else ``None``.
    :ivar accuracy_with_gp: the accuracy with the GP in place.
    :ivar num_samples: examples compared.
    """

    mean_abs_change: float
    max_abs_change: float
    agreement: float
    accuracy: float | None
    accuracy_with_gp: float | None
    num_samples: int


@torch.no_grad()
def compare_pipeline(
    pipeline: nn.Module,
    name: str | nn.Module,
    model: GPEXModel,
    loader: Iterable[Any],
    *,
    forward_fn: ForwardFn | None = None,
    label_fn: Callable[[Any], Tensor] | None = None,
    mode: str = "mean",
    generator: torch.Generator | None = None,
    input: int | str | None = None,
    output: OutputSelector = None,
) -> PipelineComparison:
    """Run each batch twice — as is, and with the sub-module replaced by its GP — and compare.

    The pipeline runs in eval mode; every module's mode is restored afterwards.

    :param label_fn: ``label_fn(batch) -> (N,)`` class labels, to report accuracies (the pipeline's
        output must then be ``(N, num_classes)`` scores).
    :param input: the sub-module's explained input (see :func:`substitute_gp`).
    :param output: the explained part of the sub-module's output (see :func:`substitute_gp`).
    """
    abs_sum, abs_max, count, agree = 0.0, 0.0, 0, 0
    correct = correct_gp = 0
    with preserved_modes(pipeline, eval_mode=True):
        for batch in loader:
            original = run_pipeline(pipeline, batch, forward_fn)
            with substitute_gp(pipeline, name, model, mode=mode, generator=generator, input=input, output=output):
                replaced = run_pipeline(pipeline, batch, forward_fn)
            if not isinstance(original, Tensor) or not isinstance(replaced, Tensor):
                raise TypeError(f"pipeline: expected a tensor output to compare, got {type(original).__name__}")
            diff = (replaced.double() - original.double()).abs()
            abs_sum += float(diff.sum())
            abs_max = max(abs_max, float(diff.max())) if diff.numel() else abs_max
            count += original.shape[0]
            agree += int((original.argmax(-1) == replaced.argmax(-1)).sum()) if original.dim() > 1 else 0
            if label_fn is not None:
                labels = label_fn(batch).to(original.device)
                correct += int((original.argmax(-1) == labels).sum())
                correct_gp += int((replaced.argmax(-1) == labels).sum())
    if count == 0:
        raise ValueError("loader: expected at least one batch, got none")
    per_example = original[0].numel()
    return PipelineComparison(
        mean_abs_change=abs_sum / (count * per_example),
        max_abs_change=abs_max,
        agreement=agree / count,
        accuracy=None if label_fn is None else correct / count,
        accuracy_with_gp=None if label_fn is None else correct_gp / count,
        num_samples=count,
    )
