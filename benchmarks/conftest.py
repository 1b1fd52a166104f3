"""Collect ``bench_*.py`` files as test modules, so ``pytest benchmarks --benchmark-only`` finds them.

``pytest tests`` (and pyproject's ``testpaths``) never looks here, so benchmarks stay out of the
test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # Files named on the command line are collected by pytest itself; adding them here would
    # collect them twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
