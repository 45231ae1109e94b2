"""Update speed of Bort-SGD against optax.sgd, a FLOP-equivalent GEMM and a reference-style torch loop.

All rows run in one process on the same machine, on the kernel shapes of ResNet-18, ResNet-50 and
ViT-B/16 (Flax layout, `benchmarks/shapes.py`). Each row is one optimizer step (update + apply) timed
with `block_until_ready` after warm-up; the median of `--repeats` samples is reported, the rows being
sampled round-robin so that load from other processes on a shared machine hits every row alike.

FLOP model of the correction, per constrained matrix view M of shape (n, m) = (fan_in, out):
  l2-full     Gram on the cheaper side, k = min(n, m): 2·n·m·k (Gram) + 2·n·m·k (product) = 4·n·m·k
  l1-fullrow  the sign does not commute with the product, so the out × out Gram is forced: 4·n·m²
  l1-full     the feasible (smaller) Gram, as l2-full: 4·n·m·k
  reference   W @ W.t() @ W (and sign(W @ W.t() - αI) @ W) with W = Mᵀ, left to right: 4·n·m² for all modes
The "FLOP-equivalent GEMM" is one jitted s × s matmul with 2·s³ = the correction's FLOPs: the time the
correction would take at the machine's large-matmul throughput. Elementwise work (the SGD part) is not
counted, so `(bort - sgd) / gemm` is the figure to read against the 1.3× target.

The torch row follows the reference BortS (Zhang et al., ICLR 2023) formulas, written from the paper's
equations: a Python loop over tensors, Δ = W Wᵀ W − αW or sign(W Wᵀ − αI) W in the naive product order,
α = "ada" read back with `.item()`, then grad += γΔ; grad += wd·p; momentum; p -= lr·buf.

`--single-thread` pins the process to one CPU before XLA starts and fails if any row's CPU/wall exceeds
`timing.MAX_CPU_PER_WALL` (see `benchmarks/timing.py` for why XLA_FLAGS cannot do this).

Usage (from the repository root):
  python -m benchmarks.update_speed --models resnet50 vit_b16 --repeats 5
  python -m benchmarks.update_speed --single-thread --models resnet50 --modes l2-full --repeats 3 --warmup 1
"""

import argparse
import dataclasses
import importlib.util
import math
import os
import platform
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import shapes as shapes_lib
from benchmarks import timing
import bort_jax
from bort_jax._src import plan as plan_lib

MODES = ("l2-full", "l1-fullrow", "l1-full")
HYPER = dict(learning_rate=0.1, gamma=1e-4, momentum=0.9, weight_decay=1e-4)


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """One constrained kernel as the core sees it: `batch` matrices of shape (fan_in, out)."""

  path: str
  batch: int
  fan_in: int
  out: int


def kernel_views(params, views=None):
  """`{leaf index: (path, KernelView)}` of the kernels Bort constrains, resolved as the transforms do."""
  return {item.index: (item.path, item.view) for item in plan_lib.plan_kernels(params, views=views)[0]}


def matrix_views(params, views=None):
  """The kernels `bort_jax.kernel_mask` selects, with the matrix views the transforms give them under `views`."""
  leaves = jax.tree.leaves(params)
  result = []
  for index, (path, view) in kernel_views(params, views).items():
    *batch, fan_in, out = view.matrix_shape(leaves[index].shape)
    result.append(MatrixView(path, math.prod(batch), fan_in, out))
  return result


def correction_flops(views, mode):
  """FLOPs of the correction of all `views` in `mode` as our core evaluates it (see module doc)."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  inner = (lambda v: v.out) if mode == "l1-fullrow" else (lambda v: min(v.fan_in, v.out))
  return sum(4 * v.batch * v.fan_in * v.out * inner(v) for v in views)


def reference_flops(views):
  """FLOPs of the naive-order reference, W @ W.t() @ W with W (out, fan_in): 4·n·m² per matrix."""
  return sum(4 * v.batch * v.fan_in * v.out * v.out for v in views)


def optimizer_step(tx):
  """Jitted `(params, opt_state), grads -> (params, opt_state)`, donating params and state."""

  def step(carry, grads):
    params, opt_state = carry
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step, donate_argnums=0)


def optimizer_sampler(tx, params, grads, steps=1):
  """Sampler of one jitted `tx` step (averaged over `steps`), on a donated copy of `params`."""
  params = jax.tree.map(jnp.copy, params)
  return timing.sampler(optimizer_step(tx), (params, tx.init(params)), grads, steps=steps)


def gemm_size(flops):
  """Side s of the square matmul with 2·s³ = `flops`."""
  return max(1, round((flops / 2) ** (1 / 3)))


def gemm_sampler(flops, dtype):
  """Sampler of one jitted s × s matmul carrying `flops` FLOPs, in `dtype` with f32 accumulation."""
  s = gemm_size(flops)
  a = (jax.random.normal(jax.random.key(1), (s, s)) / math.sqrt(s)).astype(dtype)
  step = jax.jit(lambda c, a: jnp.matmul(a, c, preferred_element_type=jnp.float32).astype(dtype),
                 donate_argnums=0)
  return timing.sampler(step, jnp.copy(a), a)


def bort_tx(mode, alpha, every_k=1, hyper=HYPER, views=None):
  """`bort_jax.bort_sgd` with the benchmark's hyper-parameters."""
  return bort_jax.bort_sgd(hyper["learning_rate"], hyper["gamma"], momentum=hyper["momentum"],
                           weight_decay=hyper["weight_decay"], alpha=alpha, mode=mode, every_k=every_k, views=views)


def sgd_tx():
  """optax.sgd with the same weight decay and momentum as the Bort rows: the no-correction floor."""
  return optax.chain(optax.add_decayed_weights(HYPER["weight_decay"]),
                     optax.sgd(HYPER["learning_rate"], momentum=HYPER["momentum"]))


def torch_available():
  return importlib.util.find_spec("torch") is not None


def torch_tensors(params, views=None):
  """The params as torch tensors: constrained kernels as (out, fan_in) matrices W = Mᵀ, the rest flat."""
  import torch  # optional dependency, only for the reference row

  kernels = kernel_views(params, views)
  tensors, is_kernel = [], []
  for index, leaf in enumerate(jax.tree.leaves(params)):
    x = np.asarray(leaf, np.float32)
    if index not in kernels:
      tensors.append(torch.from_numpy(x.reshape(-1).copy()))
      is_kernel.append(False)
      continue
    matrices = np.asarray(bort_jax.to_matrix(jnp.asarray(x), kernels[index][1]))
    for m in matrices.reshape((-1,) + matrices.shape[-2:]):
      tensors.append(torch.from_numpy(np.ascontiguousarray(m.T)))
      is_kernel.append(True)
  return tensors, is_kernel


def torch_reference_step(params, grads, buffers, is_kernel, mode, alpha, hyper=HYPER):
  """One reference-style BortS step, in place: a Python loop over tensors, naive product order.

  Momentum buffers start at zero, so the first step's buffer is the gradient, as in torch.optim.SGD.
  """
  import torch

  lr, gamma, momentum, wd = (hyper[k] for k in ("learning_rate", "gamma", "momentum", "weight_decay"))
  with torch.no_grad():
    for p, grad, buf, kernel in zip(params, grads, buffers, is_kernel):
      if kernel:
        w = p.view(p.shape[0], -1)
        a = (w.norm(dim=1).mean() ** 2).item() if alpha == "ada" else alpha
        if mode == "l2-full":
          delta = w @ w.t() @ w - a * w
        else:  # l1-fullrow, the reference's only l1 "full" form
          delta = torch.sign(w @ w.t() - a * torch.eye(w.shape[0])) @ w
        grad.add_(delta.view_as(p), alpha=gamma)
      grad.add_(p, alpha=wd)
      buf.mul_(momentum).add_(grad)
      p.add_(buf, alpha=-lr)
  return params


def torch_samplers(params, grads, modes, alpha, views=None):
  """Samplers of reference-style steps for each of `modes`, sharing one set of torch tensors."""
  import torch

  tensors, is_kernel = torch_tensors(params, views)
  torch_grads, _ = torch_tensors(grads, views)
  buffers = [torch.zeros_like(t) for t in tensors]
  no_sync = lambda carry: None  # eager CPU torch has finished when the call returns
  step = lambda carry, mode: torch_reference_step(carry, torch_grads, buffers, is_kernel, mode, alpha)
  return [timing.sampler(step, tensors, mode, sync=no_sync) for mode in modes]


def benchmark_tree(shape_tree, modes=MODES, alpha=1.0, every_k=(), repeats=5, warmup=2,
                   dtype=jnp.float32, with_torch=None, views=None):
  """Times every row on `shape_tree`, samples interleaved; returns dicts (name, detail, flops, seconds, cpu_seconds).

  Args:
    shape_tree: pytree of `jax.ShapeDtypeStruct` (see `benchmarks/shapes.py`).
    modes: Bort modes to time (subset of `MODES`).
    alpha: fixed amplitude, or "adaptive" (the torch row then uses the reference's `.item()` "ada").
    every_k: extra `every_k` values to time for l2-full (cost averaged over k consecutive steps).
    repeats, warmup: timed and untimed samples per row.
    dtype: parameter dtype (the core accumulates in f32 for bf16).
    with_torch: time the reference-style torch loop; default: when torch is importable.
    views: `views=` rules of `shape_tree` (`shapes.shape_views`), for the transforms and the FLOP model alike.
  """
  if with_torch is None:
    with_torch = torch_available()
  params = shapes_lib.init_params(shape_tree, jax.random.key(0), dtype)
  grads = jax.tree.map(lambda p: 1e-3 * p, params)
  matrices = matrix_views(params, views)
  rows = [dict(name="optax.sgd", detail="+ weight decay, momentum", flops=0,
               sample=optimizer_sampler(sgd_tx(), params, grads))]
  for mode in modes:
    flops = correction_flops(matrices, mode)
    rows.append(dict(name=f"bort_sgd {mode}", detail="", flops=flops,
                     sample=optimizer_sampler(bort_tx(mode, alpha, views=views), params, grads)))
    rows.append(dict(name=f"GEMM {mode}", detail=f"one {gemm_size(flops)}² matmul", flops=flops,
                     sample=gemm_sampler(flops, dtype)))
  for k in every_k:
    tx = bort_tx("l2-full", alpha, k, views=views)
    rows.append(dict(name=f"bort_sgd l2-full every_k={k}", detail=f"mean over {k} steps", flops=0,
                     sample=optimizer_sampler(tx, params, grads, steps=k)))
  torch_modes = [m for m in modes if m in ("l2-full", "l1-fullrow")] if with_torch else []
  if torch_modes:
    reference_alpha = "ada" if alpha in ("adaptive", "ada") else alpha
    for mode, sample in zip(torch_modes, torch_samplers(params, grads, torch_modes, reference_alpha, views)):
      rows.append(dict(name=f"torch reference {mode}", detail=f"alpha={reference_alpha}",
                       flops=reference_flops(matrices), sample=sample))
  medians = timing.interleaved_medians([row.pop("sample") for row in rows], repeats, warmup)
  return [dict(row, seconds=wall, cpu_seconds=cpu) for row, (wall, cpu) in zip(rows, medians)]


def ratio_lines(rows, key="seconds"):
  """The ratios the issue asks for, from `benchmark_tree` rows, on wall (`seconds`) or `cpu_seconds`."""
  seconds = {r["name"]: r[key] for r in rows}
  sgd = seconds["optax.sgd"]
  lines = []
  for mode in [r["name"].split()[-1] for r in rows if r["name"].startswith("bort_sgd ") and "every_k" not in r["name"]]:
    bort, gemm = seconds[f"bort_sgd {mode}"], seconds[f"GEMM {mode}"]
    line = (f"{mode}: bort/sgd {bort / sgd:.2f}x, bort/GEMM {bort / gemm:.2f}x, "
            f"(bort-sgd)/GEMM {(bort - sgd) / gemm:.2f}x")
    if f"torch reference {mode}" in seconds:
      line += f", torch reference/bort {seconds[f'torch reference {mode}'] / bort:.2f}x"
    lines.append(line)
  return lines


def format_table(title, rows):
  """Markdown table of `rows` plus the ratio lines (wall time, then CPU time).

  CPU/wall above 1 means more than one thread worked at once; below 1, the process waited (other load).
  """
  lines = [f"### {title}", "", "| row | detail | wall ms | CPU ms | CPU/wall | GFLOP | GFLOP/s (wall) |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    rate = f"{r['flops'] / r['seconds'] / 1e9:.1f}" if r["flops"] else ""
    lines.append(f"| {r['name']} | {r['detail']} | {1e3 * r['seconds']:.1f} | {1e3 * r['cpu_seconds']:.1f} "
                 f"| {r['cpu_seconds'] / r['seconds']:.2f} | {r['flops'] / 1e9:.2f} | {rate} |")
  lines.append("")
  lines += [f"- wall: {line}" for line in ratio_lines(rows)]
  lines += [f"- CPU:  {line}" for line in ratio_lines(rows, "cpu_seconds")]
  return "\n".join(lines + [""])


def machine_description():
  """CPU model and core count (`lscpu`), Python, jax/jaxlib/optax and torch versions."""
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    model = platform.processor() or "unknown"
  import jaxlib

  versions = f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, optax {optax.__version__}"
  if torch_available():
    import torch
    versions += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
  return (f"CPU: {model}, {len(jax.devices())} jax device(s) {jax.devices()[0].platform}, {os.cpu_count()} cores, "
          f"this process on CPU(s) {sorted(os.sched_getaffinity(0))}; Python {platform.python_version()}; {versions}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(shapes_lib.SHAPE_SETS), choices=list(shapes_lib.SHAPE_SETS))
  parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
  parser.add_argument("--alpha", default="1.0", help='a positive float or "adaptive"')
  parser.add_argument("--every-k", nargs="*", type=int, default=[], help="extra every_k values for l2-full")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--no-torch", action="store_true", help="skip the reference-style torch loop")
  parser.add_argument("--single-thread", action="store_true",
                      help="pin the process to one CPU (checked: CPU/wall of every row <= "
                      f"{timing.MAX_CPU_PER_WALL}): CPU-time ratios then resist load from other processes")
  args = parser.parse_args(argv)
  if args.single_thread:  # before machine_description's jax.devices() starts the XLA backend
    timing.pin_to_one_cpu()
    if torch_available():
      import torch
      torch.set_num_threads(1)
  alpha = args.alpha if args.alpha in ("adaptive", "ada") else float(args.alpha)
  print(machine_description())
  print("load average (1, 5, 15 min) at the start: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))
  print(f"hyper-parameters: {HYPER}, alpha={alpha}, dtype={args.dtype}, median of {args.repeats} "
        f"after {args.warmup} warm-up, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n")
  for name in args.models:
    rows = benchmark_tree(shapes_lib.shape_set(name), args.modes, alpha, args.every_k, args.repeats, args.warmup,
                          jnp.dtype(args.dtype), with_torch=False if args.no_torch else None,
                          views=shapes_lib.shape_views(name))
    print(format_table(name, rows), flush=True)
    if args.single_thread:
      timing.check_single_threaded(rows)
  print("load average (1, 5, 15 min) at the end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
  main()
