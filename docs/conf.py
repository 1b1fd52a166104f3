"""Sphinx configuration for the gpex_gpytorch documentation (``make docs``; warnings are errors there)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Import the package from this checkout even without an editable install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Doctests and autodoc imports run torch: one thread keeps them fast and reproducible on shared CI boxes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gpex_gpytorch  # noqa: E402

project = "gpex_gpytorch"
author = "gpex_gpytorch contributors"
copyright = "gpex_gpytorch contributors"
release = gpex_gpytorch.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    # MathJax served from _static with the pages: the docs render their maths without a CDN.
    "sphinx-mathjax-offline",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "figures/**/*.md", "Thumbs.db", ".DS_Store"]

# Markdown: $…$ maths, ::: fences, and anchors for "page.md#section" links.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# API reference: members in source order, signatures with their type hints in the description.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# ``__call__`` too where a class documents it (GPEXModel: the ``fresh_indices`` / ``fresh_inputs`` call).
autodoc_default_options = {"members": True, "show-inheritance": True, "special-members": "__call__"}
# An override without its own docstring (e.g. ``forward``) would otherwise show torch.nn.Module's or
# GPyTorch's generic text; leaving it out documents only what this package says about itself.
autodoc_inherit_docstrings = False

# Doctests: every group starts from these imports and a fixed seed.
doctest_global_setup = """
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
"""
doctest_test_doctest_blocks = ""  # only the explicit {doctest}/{testcode} blocks of the usage pages run

html_theme = "sphinx_rtd_theme"
html_title = f"gpex_gpytorch {release}"
html_static_path: list[str] = []
