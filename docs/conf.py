"""Sphinx configuration of the bort_jax API reference (built in CI with warnings as errors)."""

import importlib.metadata
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "bort_jax"
author = "bort_jax developers"
copyright = "2026, bort_jax developers"  # noqa: A001 (Sphinx's name)
release = importlib.metadata.version("bort_jax")

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures show them; Args sections explain them
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
# Doctests in docstrings run in pytest (--doctest-modules); the pages' own examples run with `-b doctest`.
doctest_global_setup = "import jax, jax.numpy as jnp, optax, bort_jax as bj"
