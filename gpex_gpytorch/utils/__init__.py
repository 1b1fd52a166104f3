"""Small shared helpers: argument validation and memory estimates."""

from .memory import available_memory_bytes, check_allocation
from .validation import check_finite, check_index_tensor, check_positive, check_tensor

__all__ = [
    "available_memory_bytes",
    "check_allocation",
    "check_finite",
    "check_index_tensor",
    "check_positive",
    "check_tensor",
]
