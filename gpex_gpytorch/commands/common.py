"""Options every user-facing sub-command shares: ``--quiet``, ``--threads``, ``--device``."""

from __future__ import annotations

import argparse
import os

import torch

from ..utils.progress import ProgressSetting
from .arguments import integer_at_least

__all__ = ["add_common_options", "apply_common_options", "default_threads"]


def default_threads() -> int | None:
    """One torch thread on machines with at most 4 cores (measured: 3-4x faster than torch's default
    on a loaded 2-core machine), torch's own choice above."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else None


def add_common_options(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """Add ``--quiet`` (alias ``--no-progress``), ``--threads`` and, optionally, ``--device``."""
    parser.add_argument(
        "--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars (they are off anyway "
        "when stderr is not a terminal)"
    )  # fmt: skip
    threads = default_threads()
    parser.add_argument(
        "--threads",
        type=integer_at_least(1),  # refused at parsing, before any work
        default=threads,
        help=f"torch CPU threads (default: {threads if threads else 'torch' + chr(39) + 's choice'}; 1 on <= 4 cores)",
    )
    if device:
        parser.add_argument("--device", default="cpu", help="torch device for the GPs and the network (default: cpu)")


def apply_common_options(args: argparse.Namespace) -> ProgressSetting:
    """Check and apply ``--threads`` and ``--device``; returns the progress setting for ``--quiet``.

    :raises ValueError: ``--threads`` below 1 or an unknown ``--device`` (naming the flag).
    """
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if getattr(args, "device", None) is not None:
        try:
            torch.empty(0, device=args.device)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"--device: {args.device!r} is not an available torch device ({error})") from error
    return False if args.quiet else "auto"
