"""Checkpoints of a sharded run: one file per rank, a replicated part, and a manifest; re-shard on load."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..kernels import CachedDeepKernel
from ..kernels.shard_layout import ShardLayout
from ..utils.checkpoint_files import load_checkpoint, save_checkpoint, write_json_atomically
from .communication import collective_errors

__all__ = [
    "ShardedCheckpoint",
    "load_sharded_checkpoint",
    "row_entries",
    "save_sharded_checkpoint",
    "write_sharded_state",
]

MANIFEST = "manifest.json"
FORMAT = "gpex-sharded-1"
# The kernel buffers split by rows, and the dimension of their rows.
_SHARDED_BUFFERS = {"embeddings": 1, "inducing_values": 0}


@dataclass(frozen=True)
class ShardedCheckpoint:
    """A sharded checkpoint loaded for one rank of some (possibly different) layout.

    :ivar model_state: the model's ``state_dict`` with the sharded buffers cut to the rows of the
        requested rank (all rows for a layout of one rank: loadable into a single-process model).
    :ivar extra: the replicated, non-model state saved alongside (optimizer, generators, ...).
    :ivar step: the step it was written at.
    :ivar manifest: the manifest (world size, shard ranges, files).
    """

    model_state: dict[str, Tensor]
    extra: dict[str, Any]
    step: int
    manifest: dict[str, Any]


def row_entries(model: nn.Module, kernel: CachedDeepKernel) -> dict[str, int]:
    """The keys of ``model.state_dict()`` that hold ``kernel``'s inducing rows, with the dimension of their rows."""
    for name, module in model.named_modules():
        if module is kernel:
            prefix = f"{name}." if name else ""
            return {prefix + buffer: dim for buffer, dim in _SHARDED_BUFFERS.items()}
    raise ValueError("kernel: expected a sub-module of model")


def save_sharded_checkpoint(
    directory: str | Path,
    model: nn.Module,
    kernel: CachedDeepKernel,
    extra: dict[str, Any],
    *,
    step: int,
    keep: int = 1,
) -> Path:
    """Save a checkpoint of a sharded model (collective: every rank of the kernel's group calls it).

    Layout on disk (``directory`` on a file system every rank can reach)::

        manifest.json                       # written last, atomically: points at a complete step
        step-00000100/replicated.pt         # rank 0: the model's replicated state + ``extra``
        step-00000100/shard-00000-of-00002.pt   # rank r: its rows of U and V
        step-00000100/shard-00001-of-00002.pt

    A crash mid-save leaves the manifest pointing at the previous complete step.

    :param directory: the checkpoint folder.
    :param model: the model owning ``kernel`` (its ``state_dict`` is saved).
    :param kernel: the kernel sharded by :class:`~gpex_gpytorch.distributed.TorchDistributed` (gives the
        rank, the layout and the process group).
    :param extra: replicated state to save with it (identical on every rank; rank 0's is written).
    :param step: the training step (names the sub-folder).
    :param keep: how many complete steps to keep on disk.
    :returns: the sub-folder written.
    """
    if not isinstance(kernel, CachedDeepKernel) or not hasattr(kernel.sharding, "process_group"):
        raise TypeError(
            f"kernel: expected a CachedDeepKernel sharded by TorchDistributed (a ShardedCachedDeepKernel), got "
            f"{type(kernel).__name__}"
        )
    state = {**extra, "model": model.state_dict()}
    group = kernel.sharding.process_group
    return write_sharded_state(directory, state, row_entries(model, kernel), kernel.layout, group, step=step, keep=keep)


def write_sharded_state(
    directory: str | Path,
    state: dict[str, Any],
    rows: dict[str, int],
    layout: ShardLayout,
    group: dist.ProcessGroup,
    *,
    step: int,
    keep: int = 1,
) -> Path:
    """Write a training state whose ``state["model"]`` entries ``rows`` are split by rows over the ranks.

    The generic writer behind :func:`save_sharded_checkpoint` and ``TorchDistributed.save_state``
    (collective; the layout on disk is described there).

    :param rows: keys of ``state["model"]`` holding this rank's inducing rows, with the dimension of their rows.
    :param layout: the split of the inducing rows over the ranks of ``group``.
    :param group: the process group the ranks write from.
    """
    directory = Path(directory)
    folder = directory / f"step-{step:08d}"
    rank = dist.get_rank(group)
    model_state = state["model"]
    name = f"shard-{rank:05d}-of-{layout.world_size:05d}.pt"
    save_checkpoint(folder / name, {"format": FORMAT, "rank": rank, **{k: model_state[k] for k in rows}})
    if rank == 0:
        replicated = {k: v for k, v in model_state.items() if k not in rows}
        extra = {k: v for k, v in state.items() if k != "model"}
        save_checkpoint(folder / "replicated.pt", {"format": FORMAT, "model": replicated, "extra": extra})
    with collective_errors("the checkpoint barrier (every shard written)", group):
        dist.barrier(group=group)  # every shard is on disk before the manifest names it
    if rank == 0:
        manifest = {
            "format": FORMAT,
            "step": step,
            "folder": folder.name,
            "num_inducing": layout.num_rows,
            "world_size": layout.world_size,
            "sharded_keys": rows,
            "shards": [
                {
                    "rank": r,
                    "start": layout.start(r),
                    "stop": layout.stop(r),
                    "file": f"shard-{r:05d}-of-{layout.world_size:05d}.pt",
                }
                for r in range(layout.world_size)
            ],
        }
        write_json_atomically(directory / MANIFEST, manifest)
        steps = sorted(p for p in directory.glob("step-*") if p.is_dir())
        for old in steps[: max(0, len(steps) - keep)]:
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    with collective_errors("the checkpoint barrier (manifest written)", group):
        dist.barrier(group=group)  # nobody reads or rewrites the folder before the manifest is in place
    return folder


def load_sharded_checkpoint(
    directory: str | Path,
    layout: ShardLayout | None = None,
    rank: int = 0,
    *,
    map_location: str | torch.device | None = "cpu",
) -> ShardedCheckpoint:
    """Load the rows of ``rank`` under ``layout`` from a sharded checkpoint written on any number of ranks.

    Only files are read (no collective): the rows ``[layout.start(rank), layout.stop(rank))`` are
    cut from the saved shards that overlap them and concatenated. ``layout=None`` (or one rank)
    gives the whole inducing set, e.g. to explain on one machine what was trained on many.

    :raises FileNotFoundError: no manifest in ``directory``.
    :raises ValueError: a manifest of another format, or a layout over another number of rows.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"checkpoint: no {MANIFEST} in {directory}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint: {manifest_path} is truncated or corrupted ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"checkpoint: expected a manifest of format {FORMAT}, got {found!r}")
    num_rows = int(manifest["num_inducing"])
    layout = ShardLayout(num_rows, 1) if layout is None else layout
    if layout.num_rows != num_rows:
        raise ValueError(f"layout: the checkpoint has {num_rows} inducing rows, the layout {layout.num_rows}")
    folder = directory / manifest["folder"]
    replicated = load_checkpoint(folder / "replicated.pt", map_location=map_location)
    start, stop = layout.bounds(rank)
    pieces: dict[str, list[Tensor]] = {key: [] for key in manifest["sharded_keys"]}
    for shard in manifest["shards"]:
        lo, hi = max(start, shard["start"]), min(stop, shard["stop"])
        if lo >= hi:
            continue
        saved = load_checkpoint(folder / shard["file"], map_location=map_location)
        for key, dim in manifest["sharded_keys"].items():
            pieces[key].append(saved[key].narrow(dim, lo - shard["start"], hi - lo))
    model_state = dict(replicated["model"])
    for key, dim in manifest["sharded_keys"].items():
        model_state[key] = torch.cat(pieces[key], dim=dim)
    return ShardedCheckpoint(model_state, dict(replicated["extra"]), int(manifest["step"]), manifest)
