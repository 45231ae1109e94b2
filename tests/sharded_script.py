"""Run by tests/test_sharding_explicit.py in a subprocess with 8 fake CPU devices (XLA_FLAGS set there).

Every transform, projection and diagnostic, on kernels sharded on the output axis (tensor parallel), on
fan-in (FSDP), on both (2-D mesh), on attention heads and on the stacked-layer axis, under Explicit and Auto
meshes, must equal the single-device result and (Explicit) keep each kernel's sharding. Prints one line per
check and ``ALL_SHARDED_CHECKS_PASSED`` at the end; before them, the collectives of the l2-full update and, for
kernels whose Gram units are sharded, what one correction gathers and computes (one process: jax starts once).
"""

import re

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import bort_jax as bj
from bort_jax._src import correction
from bort_jax._src import kernel_matrix as km

STACK_RULE = [("stack/kernel", 1)]  # one leading stacked-layer axis

# name: (shape, spec on the 1-D mesh ("x",) of 4 devices)
ONE_D = {
    "dense_tp": ((64, 32), P(None, "x")),
    "dense_fsdp": ((64, 32), P("x", None)),
    "tall_tp": ((16, 64), P(None, "x")),
    "conv_fsdp": ((3, 3, 16, 32), P(None, None, "x", None)),
    "conv_tp": ((3, 3, 16, 32), P(None, None, None, "x")),
    "attn/query": ((32, 4, 8), P(None, "x", None)),
    "attn/out": ((4, 8, 32), P("x", None, None)),
    "stack": ((4, 16, 32), P("x", None, None)),
}
# on the 2-D mesh ("x", "y") of 4 × 2 devices
TWO_D = {
    "dense_2d": ((64, 32), P("x", "y")),
    "conv_2d": ((3, 3, 16, 32), P(None, None, "x", "y")),
    "stack": ((4, 16, 32), P("x", None, "y")),
}


def make_tree(layout, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(layout))
  tree, specs = {}, {}
  for key, (name, (shape, spec)) in zip(keys, layout.items()):
    fan_in = int(np.prod(shape[:-1]))
    node, spec_node = tree, specs
    for part in name.split("/")[:-1]:
      node, spec_node = node.setdefault(part, {}), spec_node.setdefault(part, {})
    leaf = name.split("/")[-1]
    node[leaf] = {"kernel": jax.random.normal(key, shape) * (1.3 / np.sqrt(fan_in)), "bias": jnp.zeros(shape[-1])}
    spec_node[leaf] = {"kernel": spec, "bias": P()}
  return tree, specs


def transforms():
  yield "gap", None
  # α = 1 is far from the initial unit norms (≈ 1.69): the norm-only modes' ‖u‖² − α is then well
  # conditioned, so the comparison measures the sharded computation, not float32 cancellation.
  for mode in bj.MODES:
    yield f"bort_sgd[{mode}]", bj.bort_sgd(0.1, 0.5, momentum=0.9, alpha=1.0, mode=mode, views=STACK_RULE)
  yield "bort_sgd[adaptive]", bj.bort_sgd(0.1, 0.5, alpha="adaptive", views=STACK_RULE)
  yield "bort_sgd[ada]", bj.bort_sgd(0.1, 0.5, alpha="ada", views=STACK_RULE)
  yield "bort_adamw[l2-full]", bj.bort_adamw(1e-2, 0.5, weight_decay=1e-2, views=STACK_RULE)
  yield "bort_adamw[l1-full]", bj.bort_adamw(1e-2, 0.5, mode="l1-full", views=STACK_RULE)
  for name, projection in (("orthogonalize[newton_schulz]", bj.orthogonalize(1.0, steps=8, views=STACK_RULE)),
                           ("orthogonalize[svd]", bj.orthogonalize(1.0, method="svd", views=STACK_RULE)),
                           ("project_row_norms", bj.project_row_norms(0.5, views=STACK_RULE))):
    yield name, Projection(projection.init, projection.update)


class Projection(optax.GradientTransformation):
  """A projection: compared by the params it lands on, not by its update (a difference)."""

  compare = "params"


def run(tx, params, grads):
  if tx is None:
    return bj.orthogonality_gap(params, views=STACK_RULE)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)  # two steps: momentum / Adam state is exercised
  params = optax.apply_updates(params, updates)
  updates = tx.update(grads, state, params)[0]
  # A projection's update is landed − params (a difference): compare where it lands.
  return optax.apply_updates(params, updates) if "params" in getattr(tx, "compare", "") else updates


def relative_error(a, b):
  """‖a − b‖ / ‖b‖ (Frobenius), 0 when both are 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_mesh(mesh_shape, axis_names, layout, axis_type, singles):
  """Max relative error of every transform on `layout` sharded over the mesh against the single-device result,
  which `singles` caches per (layout, transform): the Explicit and Auto meshes compare with the same one."""
  mesh = jax.make_mesh(mesh_shape, axis_names, axis_types=(axis_type,) * len(axis_names))
  params, specs = make_tree(layout)
  grads = jax.tree.map(lambda x: 0.01 * jnp.cos(x), params)
  worst = 0.0
  for name, tx in transforms():
    key = (tuple(layout), name)
    if key not in singles:
      singles[key] = jax.jit(lambda p, g: run(tx, p, g))(params, grads)
    single = singles[key]
    with jax.set_mesh(mesh):
      put = lambda tree: jax.device_put(tree, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
      sharded_params, sharded_grads = put(params), put(grads)
      sharded = jax.jit(lambda p, g: run(tx, p, g))(sharded_params, sharded_grads)
    errors = jax.tree.map(relative_error, sharded, single)
    error = max(jax.tree.leaves(errors))
    # Adaptive α is (mean norm)² from a cross-device sum; Δ = W(WᵀW − αI) amplifies its last-bit rounding
    # by ‖WᵀW‖/‖WᵀW − αI‖, so it gets twice the float32 budget of the others.
    tolerance = 2e-6 if name.endswith("[adaptive]") else 1e-6
    worst = max(worst, error if tolerance == 1e-6 else 0.0)
    assert error <= tolerance, (name, axis_type, errors)
    if axis_type == AxisType.Explicit and tx is not None:
      for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(sharded_params)):
        assert same_spec(got, want), (name, got.sharding.spec, want.sharding.spec)
    print(f"{axis_type.name:8s} mesh {mesh_shape} {name:30s} max relative error {error:.2e}")
  return worst


def same_spec(a, b):
  """Equal partition specs, ignoring trailing unsharded axes (``P(None)`` is ``P()``)."""
  strip = lambda x: tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
  return strip(a) == strip(b)


def collectives(hlo_text):
  """``{op: [result shapes]}`` of the collectives of a compiled HLO module (tuple results included)."""
  found = {}
  pattern = r"= (\(.*?\)|\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
  for shape, op in re.findall(pattern, hlo_text):
    found.setdefault(op, []).extend(re.findall(r"[a-z]+\d*\[[\d,]*\]", shape))
  return found


# Kernels whose l2-full Gram can contract over the sharded axes without exceeding the kernel's size.
NO_GATHER = [name for name in ONE_D if name not in ("dense_tp", "conv_tp")]


def l2_full_collectives(names):
  """Collectives of one jitted bort_sgd l2-full update of the ONE_D kernels ``names`` (Explicit mesh)."""
  mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Explicit,))
  params, specs = make_tree({name: ONE_D[name] for name in names})
  tx = bj.bort_sgd(0.1, 0.5, momentum=0.9, alpha="adaptive", views=[("stack/kernel", 1)] if "stack" in names else None)
  with jax.set_mesh(mesh):
    p = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    hlo = jax.jit(lambda p, g: tx.update(g, tx.init(p), p)).lower(p, p).compile().as_text()
  return collectives(hlo)


# Kernels whose constrained Gram has sharded units: (shape, num_batch, mesh shape, spec). On ("x", "y") of 4 × 2
# they are also sharded on the contracted side, so the Gram is both gathered for and all-reduced.
GATHERED = {
    "dense_2d": ((256, 128), 0, (4, 2), P("x", "y")),
    "conv_2d": ((3, 3, 16, 32), 0, (4, 2), P(None, None, "x", "y")),
    "tall_2d": ((32, 128), 0, (4, 2), P("x", "y")),  # col side: the fan-in units are gathered
    "stack_2d": ((4, 64, 32), 1, (4, 2), P("x", None, "y")),
    "conv_tp": ((3, 3, 16, 32), 0, (8,), P(None, None, None, "x")),
}


def gather_once(axis_type):
  """Per kernel and full mode: the all-gathers of one jitted correction, its per-device FLOPs (the compiled
  SPMD module's cost analysis) over the single-device FLOPs, its relative error and whether it keeps the spec."""
  for name, (shape, num_batch, mesh_shape, spec) in GATHERED.items():
    mesh = jax.make_mesh(mesh_shape, ("x", "y")[:len(mesh_shape)], axis_types=(axis_type,) * len(mesh_shape))
    fan_in = int(np.prod(shape[num_batch:-1]))
    w = jax.random.normal(jax.random.PRNGKey(0), shape) * (1.3 / np.sqrt(fan_in))
    for mode in ("l2-full", "l1-fullrow"):
      f = jax.jit(lambda x: correction.correction_of(km.KernelMatrix(x, num_batch, x.ndim - num_batch - 1), 1.0, mode))
      single = f.lower(w).compile()
      with jax.set_mesh(mesh):
        sharded_w = jax.device_put(w, NamedSharding(mesh, spec))
        compiled = f.lower(sharded_w).compile()
        delta = compiled(sharded_w)
      ratio = compiled.cost_analysis()["flops"] / single.cost_analysis()["flops"]
      gathers = collectives(compiled.as_text()).get("all-gather", [])
      result = dict(gathers=gathers, flops_ratio=ratio, error=relative_error(delta, single(w)),
                    keeps_spec=same_spec(delta, sharded_w), devices=int(np.prod(mesh_shape)))
      print("GATHER_ONCE", axis_type.name, name, mode, result)


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    gather_once(axis_type)
  print("NO_GATHER_COLLECTIVES", l2_full_collectives(NO_GATHER))
  print("CONV_TP_COLLECTIVES", l2_full_collectives(["conv_tp"]))
  worst, singles = 0.0, {}
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    worst = max(worst, check_mesh((4,), ("x",), ONE_D, axis_type, singles))
    worst = max(worst, check_mesh((4, 2), ("x", "y"), TWO_D, axis_type, singles))
  print(f"WORST_RELATIVE_ERROR {worst:.3e}")
  print("ALL_SHARDED_CHECKS_PASSED")
