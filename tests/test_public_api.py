"""The public namespace is what users call: a fixed list, each name documented."""

import pathlib
import types

import bort_jax

PUBLIC = {
    "BortCorrectionState", "GammaBound", "GapStats", "KernelView", "LayerIO", "MODES", "ViewGuessWarning",
    "add_bort_correction", "add_dbort_term", "bort_adamw", "bort_correction", "bort_lamb", "bort_penalty",
    "bort_sgd",
    "capture_linen_io", "conv_io", "dbort_loss", "default_view", "dense_io", "describe", "from_matrix",
    "gap_summary", "kernel_mask", "linen_views", "matrix_gap", "nnx_views", "orthogonality_gap", "orthogonalize",
    "polar_newton_schulz", "project_row_norms", "stable_gamma", "to_matrix", "torch_momentum",
}


def test_all_is_the_public_list_and_every_name_exists():
  assert set(bort_jax.__all__) == PUBLIC
  assert len(bort_jax.__all__) == len(PUBLIC)
  for name in PUBLIC:
    assert getattr(bort_jax, name).__doc__, name


def test_no_private_helpers_leak_into_the_namespace():
  exported = {name for name in dir(bort_jax) if not name.startswith("_")
              and not isinstance(getattr(bort_jax, name), types.ModuleType)}  # subpackages, e.g. explain
  assert exported - PUBLIC == set(), exported - PUBLIC


def test_readme_quickstart_runs_as_written(capsys):
  """The README's first Python block is what a newcomer pastes: it must run unchanged."""
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  quickstart = readme.split("```python\n", 1)[1].split("```", 1)[0]
  exec(compile(quickstart, "README.md quickstart", "exec"), {})
  assert "orthogonality gap over 1 layers" in capsys.readouterr().out
