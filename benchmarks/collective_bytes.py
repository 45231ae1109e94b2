"""Bytes moved by collectives, and FLOPs per device, in one Bort update on 8 fake CPU devices.

For ResNet-50 and ViT-B/16 parameter shapes (`benchmarks/shapes.py`, f32) on Explicit meshes, each kernel is
sharded: FSDP on its largest fan-in axis divisible by 8 ("x" of 8), tensor parallel on its first output axis
divisible by 8 (conv `out`; attention query/key/value `heads` else `head_dim`; attention out `embed`), and both
on ("x", "y") of 4 × 2: the largest fan-in axis divisible by 4 on "x", the first output axis divisible by 2 on
"y". (ViT's patch_embed (16, 16, 3, 768) is thus FSDP-sharded on kh.) Kernels without such an axis, biases and
norm parameters stay replicated. For optax.sgd and bort_sgd (l2-full, l1-fullrow) the compiled HLO of
`jit(lambda p, g: tx.update(g, tx.init(p), p))` is parsed and the per-device result bytes of every collective
summed by kind, next to the bytes of the kernels and of the Grams as formed (l2-full: the side
`kernel_matrix.contracting_side` picks; l1-fullrow: out × out). FLOPs per device are the compiled per-device
(SPMD-partitioned) module's `cost_analysis()["flops"]`, also as a fraction of the same update compiled for one
device. Nothing is executed: only compiled.

Run from the repository root (re-executes itself with the fake-device XLA_FLAGS when they are missing):
  python -m benchmarks.collective_bytes [--out benchmarks/results/collective_bytes.md] [--json PATH] [--tiny]
`--tiny` uses a two-layer MLP and a small conv instead (seconds; used by tests/test_collective_bytes.py).
"""

import argparse
import json
import math
import os
import re
import sys

DEVICES = 8
XLA_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# `%name = SHAPE op(` or `op-start(`; SHAPE may be a tuple. `-done` is skipped: its start was counted.
_INSTRUCTION = re.compile(r"=\s*(?P<shape>.+?)\s(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([<=\d,]*)\]")
_BITS = {"pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "bf16": 16, "f16": 16, "s16": 16,
         "u16": 16, "f32": 32, "s32": 32, "u32": 32, "f64": 64, "s64": 64, "u64": 64, "c64": 64, "c128": 128}


def _dtype_bits(dtype):
  if dtype in _BITS:
    return _BITS[dtype]
  small_float = re.fullmatch(r"f(\d+)e\d+m\d+\w*", dtype)  # f8e4m3fn, f8e5m2, f4e2m1fn, ...
  if small_float:
    return int(small_float.group(1))
  raise ValueError(f"unknown HLO element type {dtype!r}")


def array_bytes(shape):
  """Bytes of an HLO array shape such as ``f32[32,32]{1,0}`` (a tuple: the sum of its elements)."""
  total_bits = 0
  for dtype, dims in _ARRAY.findall(shape):
    total_bits += _dtype_bits(dtype) * math.prod(int(d.lstrip("<=")) for d in dims.split(",") if d)
  return (total_bits + 7) // 8


def _top_level(tuple_shape):
  """Top-level elements of ``(a, (b, c), d)``; commas inside dimensions ``[8,32]`` do not split."""
  parts, depth, start = [], 0, 1
  for i, char in enumerate(tuple_shape):
    depth += (char in "([") - (char in ")]")
    if (char == "," and depth == 1) or (char == ")" and depth == 0):
      parts.append(tuple_shape[start:i].strip())
      start = i + 1
  return parts


def _result_shape(shape, op, is_start):
  """The results in an instruction's shape: an async all-gather / collective-permute start is
  ``(operands, results[, contexts])``; an all-reduce start, like every plain op, is its results."""
  if is_start and op != "all-reduce" and shape.startswith("("):
    return _top_level(shape)[1]
  return shape


def collective_shapes(hlo_text):
  """``{op: [result array shapes]}`` of the collectives in an HLO module (tuple results split into arrays)."""
  found = {op: [] for op in COLLECTIVES}
  for match in _INSTRUCTION.finditer(hlo_text):
    shape = re.sub(r"\{[^}]*\}", "", match["shape"])  # layouts may hold parentheses: T(8,128)
    results = _result_shape(shape, match["op"], bool(match["start"]))
    found[match["op"]].extend(f"{dtype}[{dims}]" for dtype, dims in _ARRAY.findall(results))
  return found


def collective_bytes(hlo_text):
  """``{op: bytes}``: per-device result bytes of each kind of collective in an HLO module."""
  return {op: sum(map(array_bytes, shapes)) for op, shapes in collective_shapes(hlo_text).items()}


def _ensure_fake_devices():
  """Re-execute with 8 fake CPU devices: XLA reads XLA_FLAGS once, when the backend starts."""
  flags = os.environ.get("XLA_FLAGS", "")
  if XLA_FLAG not in flags or os.environ.get("JAX_PLATFORMS") != "cpu":
    env = dict(os.environ, XLA_FLAGS=f"{flags} {XLA_FLAG}".strip(), JAX_PLATFORMS="cpu")
    os.execve(sys.executable, sys.orig_argv, env)


if __name__ == "__main__":
  _ensure_fake_devices()

import jax  # noqa: E402  (after the re-execution above)
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
import optax  # noqa: E402

from benchmarks import shapes as shapes_lib  # noqa: E402
import bort_jax as bj  # noqa: E402
from bort_jax._src import correction  # noqa: E402
from bort_jax._src import kernel_matrix as km  # noqa: E402
from bort_jax._src import plan as plan_lib  # noqa: E402
from bort_jax._src import views as views_lib  # noqa: E402

# name: optimizer given the tree's `views=` rules
OPTIMIZERS = {
    "optax.sgd": lambda views: optax.sgd(0.1),
    "bort_sgd l2-full": lambda views: bj.bort_sgd(0.1, 1e-3, views=views),  # α = 1: no adaptive-α reductions
    "bort_sgd l1-fullrow": lambda views: bj.bort_sgd(0.1, 1e-3, mode="l1-fullrow", views=views),
}
MODES = {"bort_sgd l2-full": "l2-full", "bort_sgd l1-fullrow": "l1-fullrow"}


def tiny_shapes():
  """No tall kernel, so FSDP l2-full needs no gather; the square fc2 contracts over its sharded output
  axis under tensor parallelism (an all-reduce), the others are gathered."""
  leaf = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return {"fc1": {"kernel": leaf(64, 32), "bias": leaf(32)}, "fc2": {"kernel": leaf(32, 32), "bias": leaf(32)},
          "conv": {"kernel": leaf(3, 3, 16, 32), "bias": leaf(32)}}


TINY_VIEWS = [("conv/kernel", shapes_lib.CONV_VIEW)]


def _fsdp_axis(shape, view, size=DEVICES):
  """Largest fan-in axis divisible by ``size``, or None."""
  axes = [a for a in view.in_axes if shape[a] % size == 0]
  return max(axes, key=lambda a: shape[a], default=None)


def _tensor_parallel_axis(shape, view, size=DEVICES):
  """First output axis divisible by ``size`` (heads before head_dim), or None."""
  return next((a for a in view.out_axes if shape[a] % size == 0), None)


# name: (mesh shape, the axis picker of each mesh axis "x", "y")
STRATEGIES = {
    "FSDP": ((DEVICES,), (_fsdp_axis,)),
    "tensor parallel": ((DEVICES,), (_tensor_parallel_axis,)),
    "FSDP × tensor parallel": ((4, 2), (_fsdp_axis, _tensor_parallel_axis)),
}


def make_mesh(strategy):
  shape = STRATEGIES[strategy][0]
  return jax.make_mesh(shape, ("x", "y")[:len(shape)], axis_types=(AxisType.Explicit,) * len(shape))


def partition_specs(params, strategy, kernels):
  """Spec tree sharding each kernel as ``strategy`` picks, and the paths of kernels left replicated.
  ``kernels``: ``plan_lib.plan_kernels(params, views=...)[0]``."""
  mesh_shape, pickers = STRATEGIES[strategy]
  leaves, treedef = jax.tree_util.tree_flatten(params)
  specs, replicated = [P()] * len(leaves), []
  for item in kernels:
    shape = leaves[item.index].shape
    picked = {pick(shape, item.view, size): name for pick, size, name in zip(pickers, mesh_shape, "xy")}
    picked.pop(None, None)
    if not picked:
      replicated.append(item.path)
      continue
    specs[item.index] = P(*(picked.get(a) for a in range(len(shape))))
  return jax.tree_util.tree_unflatten(treedef, specs), replicated


def gram_side(mode, k):
  """The side whose Gram the correction forms, as in ``correction.correction_of``."""
  return km.contracting_side(k) if mode == "l2-full" else correction.side_for(mode, k.is_tall)


def _shards(k, axes, mesh):
  """Into how many pieces ``k``'s sharding cuts ``axes``."""
  return math.prod(mesh.shape[k.spec[a]] for a in axes if k.spec[a] is not None)


def formed_bytes(params, kernels, mode, mesh):
  """Gram bytes, and the per-device collectives they predict: a Gram contracting over sharded axes is
  all-reduced (each device its rows: the Gram over the shards of its units); a kernel whose Gram units are
  sharded is all-gathered over them once (the kernel over the shards of its other axes). ``params`` sharded,
  ``kernels`` as in ``partition_specs``."""
  leaves = jax.tree_util.tree_leaves(params)
  totals = dict(gram=0, predicted_all_reduce=0, predicted_all_gather=0)
  for item in kernels:
    k = views_lib.to_kernel_matrix(leaves[item.index], item.view)
    side = gram_side(mode, k)
    batch = math.prod(k.x.shape[a] for a in k.batch_axes)
    units = math.prod(k.x.shape[a] for a in k.unit_axes(side))
    gram, kernel = 4 * batch * units * units, leaves[item.index].nbytes  # Grams are float32
    totals["gram"] += gram
    if k.is_sharded(k.contracted_axes(side)):
      totals["predicted_all_reduce"] += gram // _shards(k, k.batch_axes + k.unit_axes(side), mesh)
    if k.is_sharded(k.unit_axes(side)):
      totals["predicted_all_gather"] += kernel // _shards(k, k.batch_axes + k.contracted_axes(side), mesh)
  return totals


def _compiled(tx, params):
  return jax.jit(lambda p, g: tx.update(g, tx.init(p), p)).lower(params, params).compile()


def single_device_flops(params, views):
  """FLOPs of each optimizer's update compiled for one device."""
  return {name: _compiled(make(views), params).cost_analysis()["flops"] for name, make in OPTIMIZERS.items()}


def measure(params, strategy, single_flops, views):
  """One row per optimizer: collective bytes by kind and FLOPs per device, plus formed bytes for the Bort rows."""
  mesh = make_mesh(strategy)
  kernels = plan_lib.plan_kernels(params, views=views)[0]
  specs, replicated = partition_specs(params, strategy, kernels)
  leaves = jax.tree_util.tree_leaves(params)
  kernel = sum(leaves[item.index].nbytes for item in kernels)
  rows = {}
  with jax.set_mesh(mesh):
    sharded = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    for name, make in OPTIMIZERS.items():
      compiled = _compiled(make(views), sharded)
      flops = compiled.cost_analysis()["flops"]
      rows[name] = dict(collective_bytes(compiled.as_text()), kernel=kernel, flops=flops,
                        flops_share=flops / single_flops[name])
      rows[name].update(formed_bytes(sharded, kernels, MODES[name], mesh) if name in MODES else {})
  return {"mesh": dict(mesh.shape), "replicated_kernels": replicated, "rows": rows}


def _mb(n):
  return f"{n / 1e6:.4g}"


def _other(row):
  return sum(row[op] for op in COLLECTIVES if op not in ("all-reduce", "all-gather"))


def _moved(row):
  return sum(row[op] for op in COLLECTIVES)


def table(result):
  lines = ["| optimizer | all-reduce MB | all-gather MB | other MB | Gram MB | kernel MB | GFLOP/device "
           "| × 1 device |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, row in result["rows"].items():
    gram = _mb(row["gram"]) if "gram" in row else "–"
    lines.append(f"| {name} | {_mb(row['all-reduce'])} | {_mb(row['all-gather'])} | {_mb(_other(row))} | "
                 f"{gram} | {_mb(row['kernel'])} | {row['flops'] / 1e9:.4g} | {row['flops_share']:.3f} |")
  return "\n".join(lines)


def _check(measured, predicted):
  return "as predicted" if measured == predicted else f"predicted {_mb(predicted)} MB"


def summary(result):
  """What the table shows, in words computed from its numbers."""
  rows = result["rows"]
  devices = math.prod(result["mesh"].values())
  sgd_mb = _mb(_moved(rows["optax.sgd"]))
  sentences = [f"optax.sgd moves {sgd_mb} MB, so everything the Bort rows move is added by Bort."]
  for name in MODES:
    row = rows[name]
    sentences.append(
        f"{name} moves {_mb(_moved(row))} MB = {_moved(row) / row['gram']:.3g}× its Gram bytes and "
        f"{_moved(row) / row['kernel']:.3g}× the kernel bytes: all-reduce {_mb(row['all-reduce'])} MB (the "
        f"Grams that contract over the sharded axis, {_check(row['all-reduce'], row['predicted_all_reduce'])}), "
        f"all-gather {_mb(row['all-gather'])} MB (the kernels whose Gram units are sharded, "
        f"{_check(row['all-gather'], row['predicted_all_gather'])}); each device does "
        f"{row['flops_share']:.3f} of the single-device FLOPs (1/{devices} = {1 / devices:.3f}).")
  l2, l1 = (_moved(rows[name]) for name in MODES)
  if l1:
    sentences.append(f"l2-full moves {l2 / l1:.2f}× the bytes of l1-fullrow.")
  return " ".join(sentences)


def report(results, command):
  parts = [f"# Collective bytes per Bort update ({DEVICES} fake CPU devices)", "",
           f"`{command}`, jax {jax.__version__}, optax {optax.__version__}. Bytes are the per-device result "
           "buffers of each collective in the compiled HLO of one `tx.update` (tuple results summed; MB = 1e6 "
           "bytes); Gram MB: float32 Grams as formed (l2-full: the side `kernel_matrix.contracting_side` "
           "picks; l1-fullrow: out × out); kernel MB: the constrained kernels. GFLOP/device: "
           "`cost_analysis()[\"flops\"]` of the compiled per-device module; × 1 device: that over the same update "
           "compiled for one device. Biases and norm parameters are replicated. A ring all-reduce over n devices "
           "sends about 2·(n − 1)/n of its result per device, an all-gather (n − 1)/n."]
  for model, by_strategy in results.items():
    for strategy, result in by_strategy.items():
      replicated = result["replicated_kernels"]
      note = (f"{len(replicated)} kernel(s) without an axis divisible by the mesh stay replicated: "
              + ", ".join(f"`{p}`" for p in replicated) + "." if replicated else "Every kernel is sharded.")
      mesh = " × ".join(f"{name} of {size}" for name, size in result["mesh"].items())
      parts += ["", f"## {model}, {strategy}", "", f"Mesh {mesh}. {note}", "", table(result), "", summary(result)]
  return "\n".join(parts) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="write the Markdown report here (else print it)")
  parser.add_argument("--json", help="also write the raw numbers here")
  parser.add_argument("--tiny", action="store_true", help="a two-layer MLP and a small conv instead")
  args = parser.parse_args()
  assert jax.device_count() == DEVICES, jax.devices()
  # model: (shape tree, its views= rules)
  models = {"tiny": (tiny_shapes(), TINY_VIEWS)} if args.tiny else {
      name: (shapes_lib.shape_set(name), shapes_lib.shape_views(name)) for name in ("resnet50", "vit_b16")}
  results = {}
  for model, (shapes, views) in models.items():
    params = shapes_lib.init_params(shapes, jax.random.PRNGKey(0))
    single_flops = single_device_flops(params, views)
    results[model] = {strategy: measure(params, strategy, single_flops, views) for strategy in STRATEGIES}
    print(f"measured {model}", file=sys.stderr, flush=True)
  text = report(results, "python -m benchmarks.collective_bytes " + " ".join(sys.argv[1:]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  else:
    print(text)


if __name__ == "__main__":
  main()
