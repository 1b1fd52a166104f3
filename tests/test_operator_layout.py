"""The operator package's layout: linear_operator's layering (utils ← functions ← operators), no cycles.

``gpex_gpytorch/utils`` imports nothing else from the package, ``gpex_gpytorch/functions`` only
``utils``; the public names stay where they were.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gpex_gpytorch

PACKAGE = Path(gpex_gpytorch.__file__).parent
ALLOWED = {"utils": {"utils"}, "functions": {"functions", "utils"}}


def _package_imports(path: Path) -> set[str]:
    """The gpex_gpytorch subpackages that ``path`` imports (relative or absolute imports)."""
    subpackage = path.relative_to(PACKAGE).parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "gpex_gpytorch" and len(parts) > 1:
                    found.add(parts[1])
            elif node.level == 1:
                found.add(subpackage)
            else:
                parts = (node.module or "").split(".")
                found.add(parts[0] if node.module else "<package root>")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "gpex_gpytorch":
                    found.add(parts[1] if len(parts) > 1 else "<package root>")
    return found


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_lower_layers_do_not_import_higher_ones(subpackage: str) -> None:
    files = sorted((PACKAGE / subpackage).glob("*.py"))
    assert files
    for path in files:
        extra = _package_imports(path) - ALLOWED[subpackage]
        assert not extra, f"{path.relative_to(PACKAGE)} imports {sorted(extra)}"


def test_the_public_operator_names_are_unchanged() -> None:
    from gpex_gpytorch.operators import LowRankPlusDiagonal, LowRankPlusDiagonalLinearOperator
    from gpex_gpytorch.operators.low_rank_plus_diagonal import LowRankPlusDiagonal as from_module

    assert LowRankPlusDiagonal is LowRankPlusDiagonalLinearOperator is from_module is gpex_gpytorch.LowRankPlusDiagonal
    assert gpex_gpytorch.operators.__all__ == ["LowRankPlusDiagonal", "LowRankPlusDiagonalLinearOperator"]
    # the internal helpers are importable from their modules but no part of the public API
    assert "capacitance_cholesky" not in gpex_gpytorch.utils.__all__
