"""Explain one sub-module of any pipeline with GPs, scikit-learn style."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..distillation import Distiller, FaithfulnessReport, faithfulness
from ..models.gpex_model import GPEXModel
from ..utils.network_output import OutputSelector, check_output_selector, select_output
from .gp_substitution import PipelineComparison, compare_pipeline, substitute_gp
from .kernel_similarity import DEFAULT_METRIC
from .nearest_neighbours import Neighbours, nearest_neighbours
from .submodule_call import SubmoduleCall
from .submodule_capture import (
    CapturedActivations,
    ForwardFn,
    capture_submodule,
    flatten_heads,
    preserved_modes,
    resolve_submodule,
)

__all__ = ["FlattenedOutput", "SubmoduleExplainer"]


class FlattenedOutput(nn.Module):
    """Wraps a sub-module so that its output ``(N, ...)`` reads ``(N, heads)`` (row-major).

    This is the "ANN" the distiller explains: one GP head per output value.

    :param module: the sub-module.
    :param output: which part of its output to explain (see :mod:`gpex_gpytorch.utils.network_output`).
    :param call: how it was called (other arguments replayed around the explained input), or ``None``
        for ``module(x)``.
    """

    def __init__(self, module: nn.Module, output: OutputSelector = None, call: SubmoduleCall | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        check_output_selector("output", output)
        super().__init__()
        self.module = module
        self.output = output
        self.call = call

    def forward(self, x: Tensor) -> Tensor:
        result = self.module(x) if self.call is None else self.call(self.module, x)
        return flatten_heads(select_output(result, self.output, "sub-module"), "sub-module")


class SubmoduleExplainer:
    """Distil the sub-module ``name`` of ``pipeline`` into GPs, from the pipeline's own data.

    :meth:`fit` drives the pipeline with the user's loader, captures the sub-module's inputs and
    outputs with a forward hook (:func:`capture_submodule`), then runs
    :class:`~gpex_gpytorch.distillation.Distiller` on the captured inputs with the sub-module
    (output flattened to heads) as the network to explain. A spatial output such as an attention
    mask ``(N, 1, h, w)`` gives ``h·w`` heads. The captured inputs are the inducing set, so
    neighbour index ``m`` is the ``m``-th captured example (the loader's order).

    Example::

        explainer = SubmoduleExplainer(model, "attention", forward_fn=lambda m, b: m(b[0]), steps=2000)
        explainer.fit(train_loader)
        report = explainer.score(test_loader)        # per-head Pearson; constant heads excluded
        with explainer.substitute():                 # the mask is now the GP's posterior mean
            logits = model(images)

    :param pipeline: the whole model (not modified; its modes are restored after every call).
    :param name: the sub-module's dotted name (``named_modules()``), or the module object.
    :param forward_fn: ``forward_fn(pipeline, batch)`` for batches that are not a tensor or a dict
        (see :func:`~gpex_gpytorch.explain.submodule_capture.run_pipeline`).
    :param kernel_network: the kernel network ``f`` (default: built from the input shape).
    :param max_samples: capture at most this many training examples.
    :param constant_tol: heads whose output standard deviation is at most this are constant.
    :param input: the explained input of a sub-module called with several arguments (a position or
        a parameter name; default the first positional one); the others are replayed as recorded.
    :param output: which part of the sub-module's output to explain: a tuple index (``0`` for an
        attention module's ``(output, weights)``), a key or attribute name, or a callable.
    :param distiller_options: passed to :class:`~gpex_gpytorch.distillation.Distiller`
        (``embedding_dim``, ``steps``, ``lr``, ``seed``, ``progress``...).

    Fitted attributes: ``capture_`` (the :class:`CapturedActivations` of the training data),
    ``model_`` (the :class:`GPEXModel`), ``history_``, ``train_report_`` (faithfulness on the
    captured training data), ``constant_heads_``.
    """

    def __init__(
        self,
        pipeline: nn.Module,
        name: str | nn.Module,
        *,
        forward_fn: ForwardFn | None = None,
        kernel_network: nn.Module | None = None,
        max_samples: int | None = None,
        constant_tol: float = 1e-6,
        input: int | str | None = None,
        output: OutputSelector = None,
        **distiller_options: Any,
    ) -> None:
        self.name, self.submodule = resolve_submodule(pipeline, name)  # fail early on a bad name
        check_output_selector("output", output)
        self.input = input
        self.output = output
        self.pipeline = pipeline
        self.forward_fn = forward_fn
        self.kernel_network = kernel_network
        self.max_samples = max_samples
        self.constant_tol = constant_tol
        self.distiller_options = distiller_options

    # ------------------------------------------------------------------ fitting
    def capture(self, loader: Iterable[Any], *, max_samples: int | None = None) -> CapturedActivations:
        """The sub-module's inputs and outputs over ``loader`` (see :func:`capture_submodule`)."""
        return capture_submodule(
            self.pipeline,
            self.name,
            loader,
            forward_fn=self.forward_fn,
            max_samples=max_samples,
            input=self.input,
            output=self.output,
        )

    def fit(self, loader: Iterable[Any]) -> SubmoduleExplainer:
        """Capture the sub-module on ``loader`` and distil it. Returns ``self``."""
        captured = self.capture(loader, max_samples=self.max_samples)
        ann = FlattenedOutput(self.submodule, self.output, self._replay(captured))
        dataset = TensorDataset(captured.inputs)
        # The distiller toggles the network's mode; restore every module's own flag afterwards.
        with preserved_modes(self.pipeline, eval_mode=True):
            distiller = Distiller(ann, self.kernel_network, **self.distiller_options).fit(dataset)
            train_report = faithfulness(
                distiller.model_, ann, dataset, classifier=False, constant_tol=self.constant_tol
            )
        self.capture_ = captured
        self.model_: GPEXModel = distiller.model_
        self.history_ = distiller.history_
        self.train_report_ = train_report
        self.constant_heads_ = train_report.constant_heads
        return self

    @staticmethod
    def _replay(captured: CapturedActivations) -> SubmoduleCall | None:
        return None if captured.call is None or captured.call.is_single_tensor else captured.call

    def _fitted(self) -> GPEXModel:
        model = getattr(self, "model_", None)
        if model is None:
            raise RuntimeError("SubmoduleExplainer: call fit(loader) first")
        return model

    # ------------------------------------------------------------------ evaluation
    def score(self, loader: Iterable[Any]) -> FaithfulnessReport:
        """Faithfulness on held-out data: per-head Pearson of GP mean and sub-module output.

        Heads on which the sub-module's output is constant (e.g. always-off mask positions) are
        listed in ``constant_heads`` and excluded from ``pearson_mean`` rather than dropped silently.
        """
        model = self._fitted()
        captured = self.capture(loader)
        with preserved_modes(self.pipeline, eval_mode=True):
            return faithfulness(
                model,
                FlattenedOutput(self.submodule, self.output, self._replay(captured)),
                TensorDataset(captured.inputs),
                classifier=False,
                constant_tol=self.constant_tol,
            )

    def predict(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance at sub-module inputs, each shaped like the sub-module's output."""
        model = self._fitted()
        mean, variance = model.predict(inputs.to(model.covar_module.embeddings.device))
        return self.capture_.unflatten(mean), self.capture_.unflatten(variance)

    def neighbours(
        self, inputs: Tensor, k: int = 10, heads: str | int | Tensor = "predicted", *, metric: str = DEFAULT_METRIC
    ) -> Neighbours:
        """The ``k`` most similar captured training examples per input, in a head's kernel space.

        The cache's staleness is checked against the captured inputs (a
        :class:`~gpex_gpytorch.explain.StaleCacheWarning` when it no longer matches the kernel network).

        :param inputs: sub-module inputs (e.g. from :meth:`capture`).
        :param metric: as in :func:`~gpex_gpytorch.explain.nearest_neighbours`.
        :raises ValueError: for ``k`` larger than the number of captured examples.
        """
        model = self._fitted()
        device = model.covar_module.embeddings.device
        return nearest_neighbours(
            model, inputs.to(device), k=k, heads=heads, metric=metric, inducing_inputs=self.capture_.inputs
        )

    # ------------------------------------------------------------------ the GP in the pipeline
    @contextmanager
    def substitute(self, mode: str = "mean", generator: torch.Generator | None = None) -> Iterator[nn.Module]:
        """Context in which the sub-module's output is the GP's posterior mean (or a sample).

        The explained input and output part are this explainer's ``input`` and ``output``: the other
        arguments and the rest of the output pass through unchanged.
        """
        fitted = self._fitted()
        with substitute_gp(
            self.pipeline, self.name, fitted, mode=mode, generator=generator, input=self.input, output=self.output
        ) as module:
            yield module

    def compare(
        self,
        loader: Iterable[Any],
        *,
        label_fn: Callable[[Any], Tensor] | None = None,
        mode: str = "mean",
    ) -> PipelineComparison:
        """How the pipeline's output (and accuracy, given ``label_fn``) changes with the GP in place."""
        return compare_pipeline(
            self.pipeline,
            self.name,
            self._fitted(),
            loader,
            forward_fn=self.forward_fn,
            label_fn=label_fn,
            mode=mode,
            input=self.input,
            output=self.output,
        )
