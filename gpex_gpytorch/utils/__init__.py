"""Small shared helpers: argument validation, memory estimates, sub-module lookup."""

from .memory import available_memory_bytes, check_allocation
from .modules import resolve_submodule, suggest_names
from .validation import check_finite, check_index_tensor, check_positive, check_tensor

__all__ = [
    "available_memory_bytes",
    "check_allocation",
    "check_finite",
    "check_index_tensor",
    "check_positive",
    "check_tensor",
    "resolve_submodule",
    "suggest_names",
]
