"""Small shared helpers: argument validation, memory estimates, sub-module lookup, precision checks."""

from .memory import available_memory_bytes, check_allocation
from .modules import resolve_submodule, suggest_names
from .numerics import (
    NumericalPrecisionWarning,
    check_precision,
    condition_bound,
    relative_error_bound,
)
from .validation import (
    NonFiniteError,
    check_finite,
    check_finite_rows,
    check_index_tensor,
    check_input_data,
    check_positive,
    check_positive_int,
    check_tensor,
    module_dtype,
    nonfinite_rows,
)

__all__ = [
    "NonFiniteError",
    "NumericalPrecisionWarning",
    "available_memory_bytes",
    "check_allocation",
    "check_finite",
    "check_finite_rows",
    "check_index_tensor",
    "check_input_data",
    "check_positive",
    "check_positive_int",
    "check_precision",
    "check_tensor",
    "condition_bound",
    "module_dtype",
    "nonfinite_rows",
    "relative_error_bound",
    "resolve_submodule",
    "suggest_names",
]
