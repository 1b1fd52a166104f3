"""Save a fitted explainer to one file and load it back without the training data or retraining.

The file holds everything the GPs' posterior and the explanations need: the inducing cache
``U`` and its statistics ``G``, ``b``, ``VᵀV``, the inducing values, the noise, the kernel
network's weights, the model's construction settings, and optionally the inducing inputs and
labels (to show neighbours), head and feature names, and free-form JSON metadata. It is written
atomically and read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickled objects.

A kernel network built by :class:`~gpex_gpytorch.distillation.DefaultKernelNetwork` (the
``Distiller``'s default) is rebuilt from its recorded arguments; any other network must be
passed to :func:`load_explainer` as an instance of the same architecture (like
``load_state_dict``), and a mismatch is reported key by key.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..kernels import CachedDeepKernel
from ..models.gpex_model import GPEXModel
from ..utils.batch_shape import check_batched
from .checkpointing import save_checkpoint
from .default_kernel_network import DefaultKernelNetwork

__all__ = ["EXPLAINER_FORMAT", "EXPLAINER_VERSION", "SavedExplainer", "load_explainer", "save_explainer"]

EXPLAINER_FORMAT = "gpex-explainer"
EXPLAINER_VERSION = 1

_DTYPES = {str(dtype): dtype for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


@dataclass(frozen=True, eq=False)  # eq would compare tensors elementwise
class SavedExplainer:
    """A fitted GPEX model with what explanations show about its inducing set.

    :ivar model: the :class:`GPEXModel` (eval mode).
    :ivar inducing_inputs: ``(M, ...)`` the inducing inputs (to draw neighbours), or ``None``.
    :ivar inducing_labels: ``(M,)`` their labels, or ``None``.
    :ivar head_names: one name per GP head (e.g. class names), or ``None``.
    :ivar feature_names: one name per input feature of tabular inputs, or ``None``.
    :ivar metadata: free-form JSON-ready settings recorded at save time (e.g. the distiller's).
    """

    model: GPEXModel
    inducing_inputs: Tensor | None = None
    inducing_labels: Tensor | None = None
    head_names: list[str] | None = None
    feature_names: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The model's posterior mean and variance, each ``(N, H)``.

        :raises ValueError: for inputs not shaped like a batch of the inducing inputs (one example
            without a batch dimension is told to add one).
        """
        if self.inducing_inputs is not None and isinstance(inputs, Tensor):
            check_batched("inputs", inputs, self.inducing_inputs.shape[1:])
        return self.model.predict(inputs)

    def save(self, path: str | Path) -> Path:
        """Write this explainer to ``path`` (see :func:`save_explainer`)."""
        return save_explainer(
            path,
            self.model,
            inducing_inputs=self.inducing_inputs,
            inducing_labels=self.inducing_labels,
            head_names=self.head_names,
            feature_names=self.feature_names,
            metadata=self.metadata,
        )


def _names(name: str, values: Sequence[str] | None, expected: int | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{name}: expected a sequence of strings, got {values!r:.80}")
    values = [str(v) for v in values]  # numpy.str_ (e.g. sklearn's names) would need unpickling
    if expected is not None and len(values) != expected:
        raise ValueError(f"{name}: expected {expected} names, got {len(values)}")
    return values


def _json_ready(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata: expected a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as error:
        raise TypeError(f"metadata: expected JSON-ready values (str, numbers, lists, dicts): {error}") from error


def _network_record(network: nn.Module) -> dict[str, Any]:
    if type(network) is DefaultKernelNetwork:
        return {"kind": "default", **network.spec()}
    cls = type(network)
    return {"kind": "custom", "class": f"{cls.__module__}.{cls.__qualname__}"}


def save_explainer(
    path: str | Path,
    model: GPEXModel,
    *,
    inducing_inputs: Tensor | None = None,
    inducing_labels: Tensor | None = None,
    head_names: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a fitted model (and what its explanations show) to one file, atomically.

    Example::

        distiller = Distiller(ann).fit(train)
        save_explainer("explainer.pt", distiller.model_, inducing_inputs=x_train, inducing_labels=y_train)
        explainer = load_explainer("explainer.pt")        # no data, no network code, no training
        mean, variance = explainer.predict(x_test)        # bit-identical to distiller.model_.predict

    :param path: the file to write (its folder is created).
    :param model: the fitted :class:`GPEXModel`.
    :param inducing_inputs: ``(M, ...)`` inducing inputs, stored to draw neighbours later.
    :param inducing_labels: ``(M,)`` their labels.
    :param head_names: ``H`` names, one per GP head.
    :param feature_names: names of the input features (tabular inputs).
    :param metadata: JSON-ready extras (settings, data provenance...).
    :returns: ``path``.
    """
    if not isinstance(model, GPEXModel):
        raise TypeError(f"model: expected a GPEXModel, got {type(model).__name__}")
    kernel = model.covar_module
    m = kernel.num_inducing
    for name, tensor in (("inducing_inputs", inducing_inputs), ("inducing_labels", inducing_labels)):
        if tensor is not None and (not isinstance(tensor, Tensor) or tensor.dim() == 0 or tensor.shape[0] != m):
            got = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"{name}: expected a tensor with num_inducing={m} rows, got {got}")
    if inducing_labels is not None and inducing_labels.dim() != 1:
        raise ValueError(f"inducing_labels: expected shape ({m},), got {tuple(inducing_labels.shape)}")
    state = {
        "format": EXPLAINER_FORMAT,
        "version": EXPLAINER_VERSION,
        "config": {
            "num_inducing": m,
            "num_heads": kernel.num_heads,
            "embedding_dim": kernel.embedding_dim,
            "embedding_dtype": str(kernel.embeddings.dtype),
            "statistics_dtype": str(kernel.statistics_dtype),
            "noise_shape": list(model.variational_strategy.raw_noise.shape),
            "learn_noise": bool(model.variational_strategy.raw_noise.requires_grad),
        },
        "kernel_network": _network_record(kernel.feature_extractor),
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
        "inducing_inputs": None if inducing_inputs is None else inducing_inputs.detach().cpu(),
        "inducing_labels": None if inducing_labels is None else inducing_labels.detach().cpu(),
        "head_names": _names("head_names", head_names, kernel.num_heads),
        "feature_names": _names("feature_names", feature_names, None),
        "metadata": _json_ready(metadata),
    }
    path = Path(path)
    save_checkpoint(path, state)
    return path


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"path: no saved explainer at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        # torch's message advises weights_only=False, which would run arbitrary code: keep only the reason.
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s+Please use|\n\n|$)", str(error), flags=re.S)
        text = found.group(1) if found else (str(error).strip().splitlines() or [type(error).__name__])[0]
        reason = " ".join(text.split())[:200]
        raise ValueError(
            f"path: {path} is truncated or corrupted, or not a saved explainer ({reason}); "
            "nothing beyond tensors and plain containers was unpickled"
        ) from error
    if not isinstance(state, dict) or state.get("format") != EXPLAINER_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"path: {path} is not a saved explainer (format {found!r}, expected {EXPLAINER_FORMAT!r})")
    version = state.get("version")
    if not isinstance(version, int) or version > EXPLAINER_VERSION:
        raise ValueError(
            f"path: {path} has explainer format version {version!r}; this gpex_gpytorch reads versions up to "
            f"{EXPLAINER_VERSION} (upgrade the package)"
        )
    missing = {"config", "kernel_network", "state_dict"} - set(state)
    if missing:
        raise ValueError(f"path: {path} is an incomplete saved explainer (missing {sorted(missing)})")
    return state


def _network(record: dict[str, Any], kernel_network: nn.Module | None, path: Path) -> nn.Module:
    if kernel_network is not None:
        if not isinstance(kernel_network, nn.Module):
            raise TypeError(f"kernel_network: expected a torch.nn.Module or None, got {type(kernel_network).__name__}")
        return kernel_network
    if record.get("kind") == "default":
        return DefaultKernelNetwork(
            tuple(record["input_shape"]), int(record["num_heads"]), int(record["embedding_dim"]), int(record["width"])
        )
    raise ValueError(
        f"kernel_network: {path} was saved with a custom kernel network ({record.get('class')}); pass "
        "kernel_network= an instance of the same architecture (its weights are loaded from the file)"
    )


def _check_state(model: GPEXModel, saved: dict[str, Tensor]) -> None:
    current = model.state_dict()
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = [
        f"{name}: saved {tuple(saved[name].shape)} vs network {tuple(current[name].shape)}"
        for name in sorted(set(current) & set(saved))
        if saved[name].shape != current[name].shape
    ]
    if missing or unexpected or shapes:
        details = "; ".join(
            part
            for part in (
                f"missing from the file: {missing[:5]}" if missing else "",
                f"not in the network: {unexpected[:5]}" if unexpected else "",
                f"shape mismatch: {shapes[:5]}" if shapes else "",
            )
            if part
        )
        raise ValueError(f"kernel_network: does not match the saved kernel network ({details})")


def load_explainer(
    path: str | Path,
    kernel_network: nn.Module | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> SavedExplainer:
    """Load what :func:`save_explainer` wrote; predictions are bit-identical to the saved model's.

    :param path: the file.
    :param kernel_network: an instance of the saved kernel network's architecture (its weights are
        overwritten); not needed for the default kernel network.
    :param map_location: device to load onto.
    :raises FileNotFoundError: no file at ``path``.
    :raises ValueError: a corrupted or truncated file, another format, a newer format version, or a
        ``kernel_network`` whose parameters do not match the saved ones.
    """
    path = Path(path)
    state = _read(path, map_location)
    config = state["config"]
    saved = state["state_dict"]
    try:
        sizes = [int(config[name]) for name in ("num_inducing", "num_heads", "embedding_dim")]
        embedding_dtype = _DTYPES[config["embedding_dtype"]]
        statistics_dtype = _DTYPES[config["statistics_dtype"]]
        noise = torch.ones(config["noise_shape"], dtype=torch.float64)
        learn_noise = bool(config["learn_noise"])
        values = saved["variational_strategy.kernel.inducing_values"]
    except KeyError as error:
        raise ValueError(f"path: {path} is an incomplete saved explainer (no entry {error})") from error
    network = _network(state["kernel_network"], kernel_network, path)
    kernel = CachedDeepKernel(
        network, *sizes, embedding_dtype=embedding_dtype, statistics_dtype=statistics_dtype, device=map_location
    )
    model = GPEXModel(kernel, values, noise=noise, learn_noise=learn_noise).to(map_location)
    _check_state(model, saved)
    model.load_state_dict(saved)
    model.eval()
    return SavedExplainer(
        model=model,
        inducing_inputs=state.get("inducing_inputs"),
        inducing_labels=state.get("inducing_labels"),
        head_names=state.get("head_names"),
        feature_names=state.get("feature_names"),
        metadata=dict(state.get("metadata") or {}),
    )
