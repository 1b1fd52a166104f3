"""The package's structure, read from its source with ``ast`` (nothing is imported).

Two rules:

* **No private names across subpackages.** A subpackage is the first component under
  ``gpex_gpytorch/`` (``distillation``, ``explain``...; a top-level file such as ``cli.py`` is its
  own). A module may import a private name (one leading underscore, not a dunder) or a private
  module (``_checks``) only from its own subpackage; across subpackages only public names are
  used, so a subpackage can rename its internals without breaking another.
* **Layers only import downwards.** ``operators`` uses none of the GP layers above it,
  ``kernels`` none of the distillation and explanation layers, ``distillation`` neither the
  explainers nor the distributed trainer built on it, and no library code uses the command-line
  layer.

The checker is itself tested on a small package written to ``tmp_path`` with one violation of
each kind, so that a checker that finds nothing cannot pass for a clean package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gpex_gpytorch"

#: subpackage -> the subpackages it must not import (directly or through the top-level package).
FORBIDDEN: dict[str, frozenset[str]] = {
    "operators": frozenset(
        {"kernels", "variational", "mlls", "models", "distillation", "explain", "distributed", "commands"}
    ),
    "utils": frozenset(
        {"operators", "kernels", "variational", "mlls", "models", "distillation", "explain", "distributed", "commands"}
    ),
    "functions": frozenset(
        {"operators", "kernels", "variational", "mlls", "models", "distillation", "explain", "distributed", "commands"}
    ),
    "kernels": frozenset({"variational", "mlls", "models", "distillation", "explain", "distributed", "commands"}),
    "variational": frozenset({"mlls", "models", "distillation", "explain", "distributed", "commands"}),
    "mlls": frozenset({"models", "distillation", "explain", "distributed", "commands"}),
    "models": frozenset({"explain", "distributed", "commands"}),
    "distillation": frozenset({"distributed", "explain", "commands"}),
    "explain": frozenset({"commands"}),
}


@dataclass(frozen=True)
class Violation:
    """One offending import: where it is and what it does wrong."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@cache
def _parse(path: Path, text: str) -> ast.Module:
    return ast.parse(text, filename=str(path))


def _tree(path: Path) -> ast.Module:
    """The parsed source (cached on the text, so files written by a test are read afresh)."""
    return _parse(path, path.read_text())


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(root: Path, path: Path) -> tuple[str, ...]:
    """``gpex_gpytorch/explain/pathways/metrics.py`` -> ``("gpex_gpytorch", "explain", "pathways", "metrics")``."""
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _subpackage(module: tuple[str, ...]) -> str | None:
    """The first component under the root (``None`` for the root package itself)."""
    return module[1] if len(module) > 1 else None


def _is_module(root: Path, module: tuple[str, ...]) -> bool:
    """Whether ``module`` (starting at the root package) is a module or package on disk."""
    base = root.joinpath(*module[1:])
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _top_level_imports(root: Path) -> frozenset[str]:
    """The subpackages that importing the root package imports (its ``__init__`` imports them)."""
    found: set[str] = set()
    tree = _tree(root / "__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
    return frozenset(found)


def _imports(root: Path, path: Path) -> list[tuple[int, tuple[str, ...], str | None]]:
    """``(line, module imported from, name imported or None)`` for every import of the root package."""
    own = _module_name(root, path)
    package = own if path.name == "__init__.py" else own[:-1]
    records: list[tuple[int, tuple[str, ...], str | None]] = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = tuple(alias.name.split("."))
                if target[0] == root.name:
                    records.append((node.lineno, target, None))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if len(base) == 0:
                    continue  # above the package: not ours
                target = base + (tuple(node.module.split(".")) if node.module else ())
            else:
                target = tuple((node.module or "").split("."))
            if target[0] != root.name:
                continue
            for alias in node.names:
                # ``from . import x`` / ``from ..explain import pathways``: x may be a module.
                if alias.name != "*" and _is_module(root, target + (alias.name,)):
                    records.append((node.lineno, target + (alias.name,), None))
                else:
                    records.append((node.lineno, target, alias.name))
    return records


def _bound_modules(root: Path, path: Path) -> dict[str, tuple[str, ...]]:
    """Local names bound to modules of the root package (``import a.b as m``, ``from a import b``)."""
    bound: dict[str, tuple[str, ...]] = {}
    tree = _tree(path)
    own = _module_name(root, path)
    package = own if path.name == "__init__.py" else own[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root.name and alias.asname:
                    bound[alias.asname] = tuple(alias.name.split("."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (tuple(node.module.split(".")) if node.module else ())
            else:
                target = tuple((node.module or "").split("."))
            if not target or target[0] != root.name:
                continue
            for alias in node.names:
                if _is_module(root, target + (alias.name,)):
                    bound[alias.asname or alias.name] = target + (alias.name,)
    return bound


def check_package(root: Path, forbidden: dict[str, frozenset[str]]) -> list[Violation]:
    """Every private-name and layering violation in the package at ``root``."""
    violations: list[Violation] = []
    through_root = _top_level_imports(root)
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        own_sub = _subpackage(_module_name(root, path))
        banned = forbidden.get(own_sub or "", frozenset())
        for line, target, name in _imports(root, path):
            target_sub = _subpackage(target)
            dotted = ".".join(target)
            if target_sub != own_sub:
                private_parts = [part for part in target[1:] if _is_private(part)]
                if private_parts:
                    violations.append(Violation(rel, line, f"imports from private module {dotted}"))
                elif name is not None and _is_private(name):
                    violations.append(Violation(rel, line, f"imports private name {name} from {dotted}"))
            reached = through_root if target_sub is None and name is not None else {target_sub}
            for layer in sorted(banned & {sub for sub in reached if sub}):
                how = "" if target_sub == layer else " (through the top-level package)"
                violations.append(Violation(rel, line, f"{own_sub}/ imports {layer}/{how}: {dotted}"))
        # module._private on a module of another subpackage is the same leak, spelled differently.
        bound = _bound_modules(root, path)
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and _is_private(node.attr)
                and _subpackage(bound[node.value.id]) != own_sub
            ):
                target = ".".join(bound[node.value.id])
                violations.append(Violation(rel, node.lineno, f"uses private name {node.attr} of {target}"))
    return violations


# ------------------------------------------------------------------------------ the checker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_each_kind_of_violation_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "from .low import Op\nfrom .mid import Mid\n",
            "low/__init__.py": "from .op import Op\n",
            "low/op.py": "class Op: ...\n_helper = 1\n",
            "low/_internal.py": "value = 1\n",
            "low/bad.py": "from ..mid import Mid\n",  # layering: low must not import mid
            "low/sneaky.py": "from .. import Op\n",  # layering through the top-level package (imports mid)
            "low/own.py": "from .op import _helper\nfrom ._internal import value\n",  # same subpackage: fine
            "mid/__init__.py": "from .mid import Mid\n",
            "mid/mid.py": "from ..low.op import Op, _helper\nclass Mid(Op): ...\n",  # private name across
            "mid/deep.py": "from ..low._internal import value\n",  # private module across
            "mid/attr.py": "from ..low import op\nx = op._helper\n",  # private attribute across
            "mid/fine.py": "from ..low.op import Op\nimport pkg.low.op as op\ny = op.Op\n",
            "top.py": "from .mid.mid import Mid\n",
        },
    )
    found = sorted(str(v) for v in check_package(root, {"low": frozenset({"mid"})}))
    assert found == [
        "pkg/low/bad.py:1: low/ imports mid/: pkg.mid",
        "pkg/low/sneaky.py:1: low/ imports mid/ (through the top-level package): pkg",
        "pkg/mid/attr.py:2: uses private name _helper of pkg.low.op",
        "pkg/mid/deep.py:1: imports from private module pkg.low._internal",
        "pkg/mid/mid.py:1: imports private name _helper from pkg.low.op",
    ]


def test_checker_reads_relative_imports_at_every_depth(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "",
            "a/__init__.py": "",
            "a/b/__init__.py": "",
            "a/b/c.py": "from ...d.e import _x\nfrom ..f import _y\n",  # pkg.d.e (other), pkg.a.f (own)
            "a/f.py": "_y = 1\n",
            "d/__init__.py": "",
            "d/e.py": "_x = 1\n",
        },
    )
    assert [str(v) for v in check_package(root, {})] == ["pkg/a/b/c.py:1: imports private name _x from pkg.d.e"]


# ------------------------------------------------------------------------------ this package
def test_no_private_names_cross_subpackages() -> None:
    violations = [v for v in check_package(ROOT, {}) if "private" in v.message]
    assert not violations, "private names used across subpackages:\n" + "\n".join(map(str, violations))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_only_import_downwards(layer: str) -> None:
    violations = [v for v in check_package(ROOT, {layer: FORBIDDEN[layer]}) if "private" not in v.message]
    assert not violations, f"{layer}/ imports a layer above it:\n" + "\n".join(map(str, violations))
