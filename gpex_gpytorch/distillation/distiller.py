"""Fit the GPs that explain a trained network (GPEX, Alg. 2), scikit-learn style."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..kernels import CachedDeepKernel, Sharding, SingleProcess
from ..models.gpex_model import GPEXModel
from ..utils import check_input_data, check_positive_int, module_dtype
from ..utils.modules import eval_mode
from ..utils.network_output import OutputSelector, check_output_selector, select_output
from ..utils.progress import ProgressSetting, progress_bar, resolve_progress
from .dataset_access import dataset_length, take_inputs
from .default_kernel_network import default_kernel_network
from .metrics import pearson_per_head
from .training_data import as_map_dataset
from .training_loop import LoopData, LoopSettings, run_training
from .training_state import OPTIONAL_STATE_KEYS, STATE_KEYS, TrainingState

__all__ = ["Distiller", "distill", "pearson_per_head"]

CHECKPOINT_FORMAT = "gpex-distiller-1"


def _check_real(name: str, value: object, *, positive: bool) -> None:
    """A finite real number, > 0 (``positive``) or >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name}: expected a finite value {'>' if positive else '>='} 0, got {value}")


def _check_device(device: object) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected a torch.device or a string such as 'cpu', got {type(device).__name__}")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device: expected a device such as 'cpu' or 'cuda:0', got {device!r}") from error
    if resolved.type == "meta":
        raise ValueError("device: expected a device with data (cpu or cuda), got the meta device")
    return resolved


class Distiller:
    r"""Explain a trained network ``ann`` with one GP per output head (GPEX, Alg. 2).

    Each step draws a batch of mixed training inputs :math:`x = \alpha x_1 + (1-\alpha) x_2`,
    :math:`\alpha \sim U(-1, 2)`, recomputes a batch of inducing rows with gradient, maximises
    :class:`~gpex_gpytorch.ANNMatchingELBO` with Adam, then refreshes another batch of cached
    rows without gradient. Both batches walk through the inducing set in shuffled sweeps, so
    every cached row is refreshed once per ``M / refresh_batch_size`` steps.

    Example::

        distiller = Distiller(ann, steps=3000).fit(train_dataset)
        mean, variance = distiller.model_.predict(x_test)

    :param ann: the trained network; its output must be ``(N, L)`` (one GP per column). It is run
        in eval mode without gradient and is not modified.
    :param kernel_network: ``f``, mapping inputs to ``(N, L*D)`` or ``(N, L, D)``; by default an
        MLP or small CNN built from the input shape (:func:`default_kernel_network`).
    :param embedding_dim: ``D`` per head.
    :param noise: :math:`\sigma^2` of the posterior.
    :param learn_noise: train it too.
    :param steps: total optimisation steps.
    :param batch_size: training inputs per step.
    :param inducing_batch_size: inducing rows recomputed with gradient per step.
    :param refresh_batch_size: inducing rows refreshed without gradient per step (default: as many).
    :param lr: Adam's learning rate.
    :param mix: use mixed inputs (on by default, as in the paper).
    :param ann_noise: :math:`\sigma_g^2`.
    :param beta: weight of the KL term.
    :param detach_variance: weight the squared error by a detached 1/c (the original code's
        effective loss; on by default: measured on digits, it reaches Pearson 0.999 where the
        full Eq. 5, whose gradient can also inflate c where matching is hard, plateaus at 0.985;
        see ``docs/objective.md``).
    :param recompute_every: recompute ``G`` and ``b`` exactly every this many steps (``None``:
        rely on float64 accumulation; each recompute is :math:`O(M)`).
    :param eval_every: steps between Pearson / staleness reports.
    :param eval_size: their batch size.
    :param checkpoint_every: steps between checkpoints to ``checkpoint_path`` (the final step is saved too).
    :param embedding_dtype: storage dtype of the inducing cache (e.g. ``torch.bfloat16``).
    :param device: where the GPs live (default: the device of ``ann``'s parameters).
    :param seed: seeds every random draw of the run (and the default kernel network's weights).
    :param fill_batch_size: batch size of the initial sweep over the inducing set.
    :param progress: show tqdm progress bars: ``"auto"`` (default) only when stderr is a terminal, so
        that logs and pipes stay free of redraw frames; ``True`` always; ``False`` never.
    :param output: which part of ``ann``'s output to explain when it is not one tensor: an attribute
        or key name (``"logits"`` for a HuggingFace classifier), a tuple index, or a callable
        (see :mod:`gpex_gpytorch.utils.network_output`).
    :param final_refresh: end ``fit`` with one full refresh of the inducing cache, without
        gradient and with the kernel network in eval mode (one inference pass over the inducing
        set), so that every similarity an explanation shows is the kernel value of the trained
        network. Without it the cache holds rows computed at different steps (stale).

    Fitted attributes: ``model_`` (a :class:`GPEXModel`), ``history_`` (a list of dicts with
    ``step``, ``loss`` and, every ``eval_every`` steps, ``pearson`` and ``staleness``),
    ``final_refresh_`` (``None`` without the final refresh, else a dict with its ``seconds`` and the
    ``staleness`` it removed, measured on a sample of up to 4,096 rows), ``communication_`` (what
    this process handed to collectives, per category: empty for one process).
    """

    def __init__(
        self,
        ann: nn.Module,
        kernel_network: nn.Module | None = None,
        *,
        embedding_dim: int = 20,
        noise: float = 1.0,
        learn_noise: bool = False,
        steps: int = 2000,
        batch_size: int = 64,
        inducing_batch_size: int = 64,
        refresh_batch_size: int | None = None,
        lr: float = 1e-3,
        mix: bool = True,
        ann_noise: float = 0.0,
        beta: float = 1.0,
        detach_variance: bool = True,
        recompute_every: int | None = None,
        eval_every: int = 100,
        eval_size: int = 256,
        checkpoint_every: int | None = None,
        checkpoint_path: str | Path | None = None,
        embedding_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        fill_batch_size: int = 1024,
        progress: ProgressSetting = "auto",
        final_refresh: bool = True,
        output: OutputSelector = None,
        sharding: Sharding | None = None,
    ) -> None:
        if not isinstance(ann, nn.Module):
            raise TypeError(f"ann: expected a torch.nn.Module, got {type(ann).__name__}")
        if kernel_network is not None and not isinstance(kernel_network, nn.Module):
            raise TypeError(f"kernel_network: expected a torch.nn.Module or None, got {type(kernel_network).__name__}")
        for name, value in (
            ("embedding_dim", embedding_dim),
            ("steps", steps),
            ("batch_size", batch_size),
            ("inducing_batch_size", inducing_batch_size),
            ("eval_every", eval_every),
            ("eval_size", eval_size),
            ("fill_batch_size", fill_batch_size),
        ):
            check_positive_int(name, value)
        for name, value in (
            ("refresh_batch_size", refresh_batch_size),
            ("recompute_every", recompute_every),
            ("checkpoint_every", checkpoint_every),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected None or an integer >= 1, got {value!r}")
        _check_real("lr", lr, positive=True)
        _check_real("noise", noise, positive=True)
        _check_real("ann_noise", ann_noise, positive=False)
        _check_real("beta", beta, positive=False)
        for name, flag in (
            ("learn_noise", learn_noise),
            ("mix", mix),
            ("detach_variance", detach_variance),
            ("final_refresh", final_refresh),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected True or False, got {type(flag).__name__} {flag!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an integer, got {type(seed).__name__} {seed!r}")
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed: expected an integer in [0, 2**63), got {seed}")
        if embedding_dtype is not None and not (
            isinstance(embedding_dtype, torch.dtype) and embedding_dtype.is_floating_point
        ):
            hint = f" (use torch.{embedding_dtype})" if isinstance(embedding_dtype, str) else ""
            raise TypeError(
                f"embedding_dtype: expected None or a floating-point torch.dtype such as torch.bfloat16, got "
                f"{type(embedding_dtype).__name__} {embedding_dtype!r}{hint}"
            )
        if device is not None:
            _check_device(device)
        if checkpoint_path is not None and not isinstance(checkpoint_path, (str, Path)):
            raise TypeError(f"checkpoint_path: expected a str or Path, got {type(checkpoint_path).__name__}")
        if sharding is not None and not isinstance(sharding, Sharding):
            raise TypeError(
                f"sharding: expected None or a gpex_gpytorch.kernels.Sharding (e.g. "
                f"gpex_gpytorch.distributed.TorchDistributed()), got {type(sharding).__name__}"
            )
        if checkpoint_every is not None and checkpoint_path is None:
            raise ValueError("checkpoint_path: required when checkpoint_every is set")
        self.ann = ann
        self.kernel_network = kernel_network
        self.embedding_dim = embedding_dim
        self.noise = noise
        self.learn_noise = learn_noise
        self.steps = steps
        self.batch_size = batch_size
        self.inducing_batch_size = inducing_batch_size
        self.refresh_batch_size = refresh_batch_size
        self.lr = lr
        self.mix = mix
        self.ann_noise = ann_noise
        self.beta = beta
        self.detach_variance = detach_variance
        self.recompute_every = recompute_every
        self.eval_every = eval_every
        self.eval_size = eval_size
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = checkpoint_path  # as given: scikit-learn's clone checks parameters are kept as-is
        self.embedding_dtype = embedding_dtype
        self.device = device
        self.seed = seed
        self.fill_batch_size = fill_batch_size
        self.progress = progress
        self.final_refresh = final_refresh
        check_output_selector("output", output)
        resolve_progress(progress)  # validates
        self.output = output
        self.sharding = sharding

    # ------------------------------------------------------------------ public
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every constructor argument, ``ann`` and ``kernel_network`` included (scikit-learn's ``get_params``;
        ``deep`` is accepted for compatibility: the networks are not estimators, so it changes nothing).

        ``sklearn.base.clone(distiller)`` builds an unfitted copy with deep-copied networks.
        """
        names = inspect.signature(Distiller.__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    def set_params(self, **params: Any) -> Distiller:
        """Change constructor arguments (scikit-learn's ``set_params``); unknown names raise before any change."""
        valid = set(self.get_params())
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ValueError(f"set_params: unknown parameters {unknown}; valid ones are {sorted(valid)}")
        merged = {**self.get_params(), **params}
        type(self)(**merged)  # validates the new combination with the constructor's checks
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def fit(
        self,
        train_dataset: Dataset | DataLoader | Tensor,
        inducing_dataset: Dataset | DataLoader | Tensor | None = None,
        *,
        resume: str | Path | None = None,
    ) -> Distiller:
        """Run Alg. 2 for ``steps`` steps (continuing from a checkpoint when ``resume`` is given).

        :param train_dataset: map-style dataset of inputs (or ``(input, ...)`` tuples); a ``DataLoader``
            (its dataset is used; an iterable one is read once) or a tensor of inputs is accepted too.
        :param inducing_dataset: the inducing instances; default ``train_dataset`` (no augmentation).
        :param resume: a checkpoint written by an earlier run with the same settings and data.
        """
        train_dataset = as_map_dataset(train_dataset, "train_dataset")
        if inducing_dataset is not None:
            inducing_dataset = as_map_dataset(inducing_dataset, "inducing_dataset")
        sharding = self._sharding()
        inducing_dataset = train_dataset if inducing_dataset is None else inducing_dataset
        num_train = dataset_length(train_dataset, "train_dataset")
        num_inducing = dataset_length(inducing_dataset, "inducing_dataset")
        device = self._device()
        if self.checkpoint_path is not None:
            sharding.check_checkpoint_path(self.checkpoint_path)  # found now, not after an interval's work
        checkpoint = None if resume is None else sharding.load_state(resume, num_inducing, map_location=device)
        with eval_mode(self.ann):
            num_heads = self._check_ann(train_dataset, device, inducing_dataset)
            input_shape = take_inputs(train_dataset, torch.arange(1)).shape[1:]
            state = self._start(input_shape, inducing_dataset, num_inducing, num_heads, device, sharding, checkpoint)
            data = LoopData(train_dataset, inducing_dataset, num_train, input_shape, device, self._ann_outputs)

            def save(state: TrainingState) -> None:
                assert self.checkpoint_path is not None
                payload = {"format": CHECKPOINT_FORMAT, "config": self._run_config(num_inducing, num_heads)}
                payload.update(state.state_dict())
                sharding.save_state(
                    self.checkpoint_path, payload, state.row_entries(), num_rows=num_inducing, step=state.step
                )

            run_training(state, self._loop_settings(), data, sharding, save)
        state.model.eval()
        self.final_refresh_ = None
        if self.final_refresh:
            kernel = state.model.covar_module
            batches = (
                take_inputs(inducing_dataset, rows).to(device)
                for rows in kernel.local_indices().split(self.fill_batch_size)
            )
            self.final_refresh_ = self._refresh_cache(state.model, batches)
        self.model_ = state.model
        self.history_ = state.history
        self.communication_ = sharding.communication()
        return self

    @torch.no_grad()
    def _refresh_cache(self, model: GPEXModel, batches: Iterable[Tensor]) -> dict[str, float]:
        """Recompute every cached row with the trained network (eval mode): the cache is then exact.

        :param batches: the inducing inputs the kernel's ``fill`` takes, in cache order.
        """
        kernel = model.covar_module
        # Staleness removed, on a sample of rows (a full copy of a large cache would double its memory).
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.randperm(kernel.embeddings.shape[1], generator=generator)[:4096].to(kernel.embeddings.device)
        before = kernel.embeddings[:, rows].to(torch.float64)
        start = time.perf_counter()
        # In place: a cache too large to hold twice must still refresh (a failure raises from fit anyway).
        kernel.fill(batches, progress=resolve_progress(self.progress), staged=False)
        seconds = time.perf_counter() - start
        after = kernel.embeddings[:, rows].to(torch.float64)
        norm = torch.linalg.vector_norm(after).clamp_min(1e-300)
        return {"seconds": seconds, "staleness": float(torch.linalg.vector_norm(before - after) / norm)}

    # ------------------------------------------------------------------ set-up
    def _device(self) -> torch.device:
        if self.device is not None:
            return _check_device(self.device)
        parameter = next(self.ann.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @torch.no_grad()
    def _ann_outputs(self, x: Tensor) -> Tensor:
        out = select_output(self.ann(x), self.output, "ann")
        if out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"ann: expected an output of shape (N, L) (one column per GP head), got {shape}")
        if out.shape[1] == 0:
            raise ValueError(
                f"ann: expected at least one output column (one GP per column), got shape {tuple(out.shape)}"
            )
        return out

    def _check_ann(self, dataset: Dataset, device: torch.device, inducing_dataset: Dataset | None = None) -> int:
        """Check the data against the ANN (dtype, finiteness, widths) on a sample; return the number of heads."""
        sample = take_inputs(dataset, torch.arange(min(2, dataset_length(dataset, "train_dataset"))))
        dtype = module_dtype(self.ann)
        check_input_data("train_dataset (inputs)", sample, dtype=dtype, integer_ok=True)
        if inducing_dataset is not None and inducing_dataset is not dataset:
            other = take_inputs(inducing_dataset, torch.arange(1))
            if other.shape[1:] != sample.shape[1:] or other.dtype != sample.dtype:
                raise ValueError(
                    f"inducing_dataset: expected inputs of shape {tuple(sample.shape[1:])} and dtype {sample.dtype} "
                    f"(as train_dataset's), got {tuple(other.shape[1:])} and {other.dtype}"
                )
            check_input_data("inducing_dataset (inputs)", other, dtype=dtype, integer_ok=True)
        try:
            return self._ann_outputs(sample.to(device)).shape[1]
        except RuntimeError as error:
            if sample.is_floating_point():
                raise
            # Integer inputs are allowed for networks that take token ids; this one does not.
            raise TypeError(
                f"train_dataset (inputs): the ann failed on inputs of dtype {sample.dtype}; expected dtype {dtype} "
                f"(the model's), convert with .to({dtype}) ({error})"
            ) from error

    def _kernel_network(self, input_shape: torch.Size, num_heads: int, device: torch.device) -> nn.Module:
        if self.kernel_network is not None:
            network = self.kernel_network
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                network = default_kernel_network(input_shape, num_heads, self.embedding_dim)
        network = network.to(device)
        with torch.no_grad():
            probe = network(torch.zeros(2, *input_shape, device=device))
        width = num_heads * self.embedding_dim
        if not isinstance(probe, Tensor) or probe[0].numel() != width:
            shape = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
            raise ValueError(
                f"kernel_network: expected an output of width num_heads x embedding_dim = {num_heads} x "
                f"{self.embedding_dim} = {width} per input, got shape {shape}"
            )
        return network

    def _sharding(self) -> Sharding:
        if self.sharding is not None:
            sharding = self.sharding
        elif dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError(
                f"sharding: torch.distributed is initialised with {dist.get_world_size()} ranks; pass "
                "sharding=gpex_gpytorch.distributed.TorchDistributed() to split the inducing cache over them (or use "
                "DistributedDistiller), or sharding=gpex_gpytorch.kernels.SingleProcess() to fit a whole copy on "
                "every rank"
            )
        else:
            sharding = SingleProcess()
        sharding.setup()
        sharding.check_batch_size(self.batch_size)
        return sharding

    def _loop_settings(self) -> LoopSettings:
        return LoopSettings(
            steps=self.steps,
            batch_size=self.batch_size,
            inducing_batch_size=self.inducing_batch_size,
            refresh_batch_size=self.refresh_batch_size or self.inducing_batch_size,
            mix=self.mix,
            beta=self.beta,
            ann_noise=self.ann_noise,
            detach_variance=self.detach_variance,
            recompute_every=self.recompute_every,
            eval_every=self.eval_every,
            eval_size=self.eval_size,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
            progress=self.progress,
        )

    def _inducing_values(self, dataset: Dataset, rows: Tensor, device: torch.device) -> Tensor:
        """The network's outputs on the inducing rows ``rows`` (those this process holds)."""
        chunks = []
        for batch_rows in progress_bar(
            rows.split(self.fill_batch_size),
            desc="ANN on the inducing set",
            progress=self.progress,
        ):
            chunks.append(self._ann_outputs(take_inputs(dataset, batch_rows).to(device)).float())
        values = torch.cat(chunks)
        bad = ~torch.isfinite(values).all(1)
        if bool(bad.any()):
            raise FloatingPointError(
                f"ann: non-finite outputs on inducing_dataset at indices {rows[bad.cpu()][:10].tolist()}"
            )
        return values

    def _start(
        self,
        input_shape: torch.Size,
        inducing_dataset: Dataset,
        num_inducing: int,
        num_heads: int,
        device: torch.device,
        sharding: Sharding,
        checkpoint: dict[str, Any] | None,
    ) -> TrainingState:
        network = self._kernel_network(input_shape, num_heads, device)
        kernel = CachedDeepKernel(
            network,
            num_inducing,
            num_heads,
            self.embedding_dim,
            embedding_dtype=self.embedding_dtype,
            device=device,
            sharding=sharding,
        )
        if checkpoint is None:
            rows = kernel.local_indices()
            values = self._inducing_values(inducing_dataset, rows, device)
            kernel.fill(  # a new cache has nothing to protect: no staging copy
                (take_inputs(inducing_dataset, r).to(device) for r in rows.split(self.fill_batch_size)),
                progress=resolve_progress(self.progress),
                staged=False,
            )
        else:
            self._check_checkpoint(checkpoint, num_inducing, num_heads)
            values = None  # loaded with the rest of the model's state
        model = GPEXModel(kernel, values, noise=self.noise, learn_noise=self.learn_noise).to(device)
        state = TrainingState.start(model, self.lr, self.seed)
        if checkpoint is not None:
            state.load_state_dict(checkpoint)
        return state

    # Settings that do not change the trajectory of a resumed run (how long, where, what is shown).
    _RESUMABLE_CHANGES = (
        "steps",
        "eval_every",
        "checkpoint_every",
        "checkpoint_path",
        "device",
        "progress",
        "final_refresh",
        "sharding",
    )

    def _config(self) -> dict[str, Any]:
        """Every setting that shapes the run, as plain values (a resumed run must use the same)."""
        skip = (*self._RESUMABLE_CHANGES, "ann", "kernel_network")  # the networks are checkpointed as weights
        config = {k: v for k, v in self.get_params().items() if k not in skip}
        # The initial sweep's batch size only matters before the first checkpoint.
        config.pop("fill_batch_size")
        config["embedding_dtype"] = str(self.embedding_dtype)
        # Plain values only (checkpoints load with weights_only=True): a callable selector by its name.
        output = self.output
        config["output"] = (
            output
            if output is None or isinstance(output, (str, int))
            else getattr(output, "__qualname__", type(output).__name__)
        )
        return config

    def _run_config(self, num_inducing: int, num_heads: int) -> dict[str, Any]:
        return {**self._config(), "num_inducing": num_inducing, "num_heads": num_heads}

    def _check_checkpoint(self, checkpoint: dict[str, Any], num_inducing: int, num_heads: int) -> None:
        """Reject a checkpoint of another format, one missing entries, or one written with other settings."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"resume: expected a checkpoint of format {CHECKPOINT_FORMAT}, got {checkpoint.get('format')}"
            )
        required = ("format", "config", *(k for k in STATE_KEYS if k not in OPTIONAL_STATE_KEYS))
        missing = [k for k in required if k not in checkpoint]
        if missing:
            raise ValueError(f"resume: the checkpoint lacks the entries {missing}; it was not written by a Distiller")
        step = checkpoint["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"resume: the checkpoint's step must be an integer >= 0, got {step!r}")
        if step > self.steps:
            raise ValueError(f"steps: the checkpoint is at step {step}, beyond steps={self.steps}")
        expected = self._run_config(num_inducing, num_heads)
        saved = checkpoint["config"]
        if not isinstance(saved, dict):
            raise ValueError(f"resume: the checkpoint's config must be a dict, got {type(saved).__name__}")
        unknown = object()
        mismatched = {k: (saved.get(k, unknown), v) for k, v in expected.items() if saved.get(k, unknown) != v}
        if mismatched:
            details = ", ".join(
                f"{k}: checkpoint {'(not recorded)' if a is unknown else repr(a)} vs now {b!r}"
                for k, (a, b) in mismatched.items()
            )
            raise ValueError(f"resume: the checkpoint was written with other settings ({details})")


def distill(
    ann: nn.Module,
    train_dataset: Dataset,
    inducing_dataset: Dataset | None = None,
    **kwargs: Any,
) -> GPEXModel:
    """One call: ``Distiller(ann, **kwargs).fit(train_dataset, inducing_dataset).model_``."""
    resume = kwargs.pop("resume", None)
    return Distiller(ann, **kwargs).fit(train_dataset, inducing_dataset, resume=resume).model_
