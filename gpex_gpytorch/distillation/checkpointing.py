"""Atomic, verified checkpoint files (kept here for compatibility; see :mod:`gpex_gpytorch.utils.checkpoint_files`)."""

from ..utils.checkpoint_files import check_writable, load_checkpoint, save_checkpoint

__all__ = ["check_writable", "load_checkpoint", "save_checkpoint"]
