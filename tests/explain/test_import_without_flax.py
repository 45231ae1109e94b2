"""`import bort_jax.explain` works without flax (an optional extra); the NNX pieces say which extra they need."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import sys
sys.modules["flax"] = None          # any `import flax...` now raises ModuleNotFoundError, as without the package
import jax.numpy as jnp
import bort_jax.explain as explain
assert not any(name == "flax" or name.startswith("flax.") for name, m in sys.modules.items() if m is not None)
assert "matplotlib" not in sys.modules  # the library measures; reports and figures live in examples/, benchmarks/
lazy = set(explain._FLAX_NAMES)
for name in explain.__all__:
  if name not in lazy:
    getattr(explain, name)
x = jnp.ones((2, 4))
assert explain.gradient(lambda p, z: z @ p, jnp.eye(4, 3), x, jnp.zeros(2, jnp.int32)).shape == (2, 4)
for name in sorted(lazy):
  try:
    getattr(explain, name)
  except ImportError as error:
    assert "bort_jax[flax]" in str(error) and name in str(error), str(error)
  else:
    raise AssertionError(f"{name} imported without flax")
print("ok", len(explain.__all__))
"""


def test_explain_imports_without_flax():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith("ok")


def test_all_names_resolve_with_flax():
  import bort_jax.explain as explain
  assert len(explain.__all__) == len(set(explain.__all__))
  for name in explain.__all__:
    assert getattr(explain, name) is not None, name
  assert "BcosCNN" in dir(explain)
  from bort_jax.explain import bcos
  assert explain.BcosCNN is bcos.BcosCNN and explain.bcos_bce_loss is bcos.bcos_bce_loss
