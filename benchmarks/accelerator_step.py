"""What Bort costs in a full training step on an accelerator: ResNet-50 and ViT-B/16, batch 256, bf16 compute.

Rows, all timed in one process so that their ratios share the machine's state:
  train      jitted forward + backward + optimizer update of the repo's NNX models (`examples.models`),
             synthetic 224x224x3 images, bf16 compute, f32 params: optax.sgd (momentum 0.9) vs
             bort_jax.bort_sgd and optax.adamw vs bort_jax.bort_adamw, same hyper-parameters,
             gamma = 1e-3, alpha = 1, l2-full, the library's default precision.
  correction bort_jax.add_bort_correction(gamma).update alone on the real parameter tree, at each matmul
             precision the library accepts ("highest", "high", "default"); only its default when
             add_bort_correction has no `precision` argument yet.
  torch      a reference-style PyTorch loop on the same GPU: for each kernel W (out, fan_in),
             G += gamma * (W @ W.T @ W - alpha * W), one Python iteration per tensor, at torch's fp32
             ("highest") and TF32 ("high") matmul precision; skipped without torch or CUDA.
FLOP model: forward + backward FLOPs from XLA's cost analysis of the lowered gradient computation, against the
correction's 4·n²·m per kernel view (n, m) = (min, max)(fan_in, out): 2·n²·m for the Gram on the cheaper side,
as much again for the product. The torch loop's naive order costs 4·out²·fan_in.
Every row is compiled and run once untimed, then the median of --repeats steps is taken (block_until_ready,
torch.cuda.synchronize), the rows of a table sampled round-robin so that load drifts hit them alike.

Usage (from the repository root):
  python -m benchmarks.accelerator_step           # one GPU, < 8 min; writes benchmarks/results/accelerator_step.md
  python -m benchmarks.accelerator_step --tiny    # tiny shapes, CPU smoke run (CI); Markdown on stdout only
"""

import argparse
import importlib.util
import inspect
import os
import pathlib
import time

import flax
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import timing
from benchmarks import update_speed
import bort_jax
from examples import models as models_lib

DEFAULT_OUT = "benchmarks/results/accelerator_step.md"
GAMMA, ALPHA = 1e-3, 1.0
SGD = dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
ADAMW = dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05)
PRECISIONS = ("highest", "high", "default")
TORCH_PRECISIONS = ("highest", "high")  # torch.set_float32_matmul_precision: fp32, TF32
FULL = dict(batch=256, image=224, classes=1000, repeats=20,
            models={"resnet50": {}, "vit_b16": {}})
# Same architectures, narrowed and shortened so that the whole run compiles and executes on a CPU in seconds.
TINY = dict(batch=4, image=32, classes=10, repeats=2,
            models={"resnet50": dict(stage_sizes=(1, 1), widths=(8, 16)),
                    "vit_b16": dict(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2)})


def optimizers(views=None):
  """The four optimizers, baselines first; each Bort row differs from its baseline by the correction only."""
  sgd_args = dict(momentum=SGD["momentum"], weight_decay=SGD["weight_decay"])
  adam_args = {k: ADAMW[k] for k in ("b1", "b2", "eps", "weight_decay")}
  return {
      # bort_sgd's decay is coupled (added to the gradient before momentum), as in this chain.
      "optax.sgd": optax.chain(optax.add_decayed_weights(SGD["weight_decay"]),
                               optax.sgd(SGD["learning_rate"], momentum=SGD["momentum"])),
      "bort_sgd": bort_jax.bort_sgd(SGD["learning_rate"], GAMMA, alpha=ALPHA, views=views, **sgd_args),
      "optax.adamw": optax.adamw(ADAMW["learning_rate"], **adam_args),
      "bort_adamw": bort_jax.bort_adamw(ADAMW["learning_rate"], GAMMA, alpha=ALPHA, views=views, **adam_args),
  }


def supported_precisions():
  """PRECISIONS if add_bort_correction takes `precision`, else (None,): only the library's default."""
  if "precision" in inspect.signature(bort_jax.add_bort_correction).parameters:
    return PRECISIONS
  print("note: bort_jax.add_bort_correction has no `precision` argument: timing its default only", flush=True)
  return (None,)


def build_model(name, setup):
  """(graph, params, model_state, views) of model `name` in training mode, bf16 compute and f32 params; `views`
  are the exact `views=` rules read from its layer types."""
  model = models_lib.create_model(name, num_classes=setup["classes"], rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                                  **setup["models"][name])
  views = bort_jax.nnx_views(model)
  graph, params, model_state = nnx.split(model, nnx.Param, ...)
  return graph, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state), views


def synthetic_batch(setup):
  """Random bf16 NHWC images and integer labels: the data only has to have the right shapes."""
  image_key, label_key = jax.random.split(jax.random.key(1))
  shape = (setup["batch"], setup["image"], setup["image"], 3)
  return (jax.random.normal(image_key, shape, jnp.bfloat16),
          jax.random.randint(label_key, (setup["batch"],), 0, setup["classes"]))


def gradient_fn(graph):
  """(params, model_state, images, labels) -> (grads, new model_state: BatchNorm statistics, RNG counts)."""

  def loss_fn(params, model_state, images, labels):
    model = nnx.merge(graph, params, model_state)
    loss = optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()
    return loss, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

  return jax.grad(loss_fn, has_aux=True)


def train_step_fn(graph, tx):
  """One training step on the carry (params, model_state, opt_state)."""
  grad_fn = gradient_fn(graph)

  def step(carry, images, labels):
    params, model_state, opt_state = carry
    grads, model_state = grad_fn(params, model_state, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), model_state, opt_state

  return step


def compiled(fn, *args):
  """`fn` jitted with its first argument donated, compiled ahead of the timing; returns (executable, seconds)."""
  start = time.perf_counter()
  executable = jax.jit(fn, donate_argnums=0).lower(*args).compile()
  return executable, time.perf_counter() - start


def model_flops(graph, params, model_state, images, labels):
  """Forward + backward FLOPs per step from XLA's cost analysis of the lowered gradient computation, or None."""
  cost = jax.jit(gradient_fn(graph)).lower(params, model_state, images, labels).cost_analysis()
  if isinstance(cost, list):  # older jax: one dict per device
    cost = cost[0] if cost else None
  return (cost or {}).get("flops")


def fresh_copy(tree):
  """A copy to donate, so that every row starts from the same values."""
  return jax.tree.map(jnp.copy, tree)


def train_rows(graph, params, model_state, images, labels, fwd_bwd_flops, correction_flops, views=None):
  """Rows (dict: name, baseline, flops, compile_s, sample) of the four train steps."""
  rows = []
  for name, tx in optimizers(views).items():
    carry = fresh_copy((params, model_state, tx.init(params)))
    step, seconds = compiled(train_step_fn(graph, tx), carry, images, labels)
    print(f"  compiled train {name} in {seconds:.1f} s", flush=True)
    bort = name.startswith("bort")
    flops = None if fwd_bwd_flops is None else fwd_bwd_flops + (correction_flops if bort else 0)
    rows.append(dict(name=f"train {name}", baseline=f"train {name.replace('bort_', 'optax.')}" if bort else None,
                     flops=flops, compile_s=seconds, sample=timing.sampler(step, carry, images, labels)))
  return rows


def correction_rows(params, grads, correction_flops, views=None):
  """Rows of add_bort_correction(GAMMA).update alone, carrying the corrected gradient, per precision."""
  rows, baseline = [], None
  for precision in supported_precisions():
    tx = bort_jax.add_bort_correction(GAMMA, ALPHA, views=views,
                                      **({} if precision is None else {"precision": precision}))
    state = tx.init(params)
    step, seconds = compiled(lambda g, p, tx=tx, state=state: tx.update(g, state, p)[0], fresh_copy(grads), params)
    name = f"correction {precision or 'library default'}"
    print(f"  compiled {name} in {seconds:.1f} s", flush=True)
    rows.append(dict(name=name, baseline=baseline, flops=correction_flops, compile_s=seconds,
                     sample=timing.sampler(step, fresh_copy(grads), params)))
    baseline = baseline or name
  return rows


def torch_cuda_missing():
  """Why the torch loop cannot run here (a sentence), or None when torch sees a CUDA device."""
  if importlib.util.find_spec("torch") is None:
    return "torch is not installed"
  import torch  # optional: only for the reference-style rows

  return None if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device"


def torch_kernels(params, device, scale=1.0, views=None):
  """`scale` × every constrained kernel as a torch tensor in torch layout W = Mᵀ (out, fan_in), on `device`."""
  import torch

  leaves = jax.tree.leaves(params)
  result = []
  for index, (_, view) in update_speed.kernel_views(params, views).items():
    matrices = bort_jax.to_matrix(leaves[index], view)
    for m in np.asarray(matrices, np.float32).reshape((-1,) + matrices.shape[-2:]):
      result.append(torch.from_numpy(np.ascontiguousarray(scale * m.T)).to(device))
  return result


def torch_correction(grads, weights, precision, gamma=GAMMA, alpha=ALPHA):
  """Reference-style: one Python iteration per kernel, G += γ (W Wᵀ W − αW) in place, left-to-right product."""
  import torch

  torch.set_float32_matmul_precision(precision)  # set per call: the rows are sampled interleaved
  with torch.no_grad():
    for w, g in zip(weights, grads):
      g.add_(w @ w.t() @ w - alpha * w, alpha=gamma)
  return grads


def torch_rows(params, reference_flops, baseline, views=None):
  """Rows of the torch loop per TORCH_PRECISIONS on the GPU, or a note why there are none."""
  missing = torch_cuda_missing()
  if missing:
    return [], f"torch loop skipped: {missing}"
  import torch

  weights = torch_kernels(params, "cuda", views=views)
  sync = lambda _: torch.cuda.synchronize()
  rows = []
  for precision in TORCH_PRECISIONS:
    sample = timing.sampler(lambda g, w, p=precision: torch_correction(g, w, p),
                            torch_kernels(params, "cuda", 1e-3, views), weights, sync=sync)
    sample()  # first CUDA work (cuBLAS handles) here, inside the caller's error handling
    rows.append(dict(name=f"torch loop {precision}", baseline=baseline, flops=reference_flops, compile_s=None,
                     sample=sample))
  return rows, f"torch {torch.__version__}, CUDA {torch.version.cuda}, on {torch.cuda.get_device_name()}"


def timed(rows, repeats):
  """Replaces each row's sampler by its median wall seconds (one untimed run first, round-robin sampling)."""
  medians = timing.interleaved_medians([row.pop("sample") for row in rows], repeats, warmup=1)
  return [dict(row, seconds=wall) for row, (wall, _) in zip(rows, medians)]


def benchmark_model(name, setup, repeats):
  """(rows, facts) for model `name`: train steps, correction per precision, torch loop."""
  graph, params, model_state, views = build_model(name, setup)
  images, labels = synthetic_batch(setup)
  matrices = update_speed.matrix_views(params, views)
  fwd_bwd = model_flops(graph, params, model_state, images, labels)
  correction = update_speed.correction_flops(matrices, "l2-full")
  rows = timed(train_rows(graph, params, model_state, images, labels, fwd_bwd, correction, views), repeats)
  grads = jax.tree.map(lambda p: 1e-3 * p, params)
  alone = correction_rows(params, grads, correction, views)
  try:
    extra, torch_note = torch_rows(params, update_speed.reference_flops(matrices), alone[0]["name"], views)
  except (ImportError, RuntimeError, OSError) as error:  # a torch/CUDA clash must not cost a scarce GPU run
    extra, torch_note = [], f"torch loop failed ({type(error).__name__}: {error})"
  rows += timed(alone + extra, repeats)
  facts = dict(params=sum(x.size for x in jax.tree.leaves(params)), kernels=len(matrices), fwd_bwd=fwd_bwd,
               correction=correction, torch=torch_note)
  return rows, facts


def fmt_ratio(row, seconds):
  return f"{row['seconds'] / seconds[row['baseline']]:.3f} × {row['baseline']}" if row["baseline"] else "1"


def format_model(name, setup, rows, facts):
  """Markdown section of one model: its shapes, FLOP model, the table and the overhead lines."""
  seconds = {r["name"]: r["seconds"] for r in rows}
  fwd_bwd, correction = facts["fwd_bwd"], facts["correction"]
  share = f"{100 * correction / fwd_bwd:.3f} %" if fwd_bwd else "n/a"
  fwd_bwd_text = f"{fwd_bwd / 1e9:,.4g} GFLOP (XLA cost analysis)" if fwd_bwd else "n/a (no XLA cost analysis)"
  lines = [f"### {name}", "",
           f"batch {setup['batch']}, {setup['image']}x{setup['image']}x3 bf16 images, {setup['classes']} classes, "
           f"{facts['params'] / 1e6:.2f} M f32 params, {facts['kernels']} constrained kernels; "
           f"overrides {setup['models'][name] or 'none'}", "",
           f"FLOP model per step: forward + backward {fwd_bwd_text}; l2-full correction "
           f"{correction / 1e9:,.4g} GFLOP = {share} of it", "",
           "| row | ms | ratio | GFLOP | TFLOP/s | compile s |", "|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    flops = f"{r['flops'] / 1e9:,.3f}" if r["flops"] else ""
    rate = f"{r['flops'] / r['seconds'] / 1e12:.2f}" if r["flops"] else ""
    compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else ""
    lines.append(f"| {r['name']} | {1e3 * r['seconds']:.3f} | {fmt_ratio(r, seconds)} | {flops} | {rate} "
                 f"| {compile_s} |")
  lines.append("")
  for bort, base in (("bort_sgd", "optax.sgd"), ("bort_adamw", "optax.adamw")):
    overhead = seconds[f"train {bort}"] / seconds[f"train {base}"] - 1
    lines.append(f"- {bort} vs {base}: measured overhead {100 * overhead:+.2f} % of the step; FLOP model {share}")
  lines.append(f"- {facts['torch']}")
  return "\n".join(lines + [""])


def header(tiny, repeats):
  device = jax.devices()[0]
  return "\n".join([
      "## Bort in a full train step" + (" (--tiny smoke run)" if tiny else ""), "",
      f"device: {device.device_kind} ({device.platform}, {jax.device_count()} device(s), "
      f"{os.cpu_count()} host CPUs); jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}", "",
      f"bort: gamma {GAMMA}, alpha {ALPHA}, l2-full, train rows at the library's default precision; "
      f"SGD {SGD}; AdamW {ADAMW}", "",
      f"median of {repeats} steps after compile + 1 untimed run; ratio = this row's time / the named row's, "
      "same run", ""])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke run")
  parser.add_argument("--out", help=f"Markdown file (default {DEFAULT_OUT}; stdout only with --tiny)")
  parser.add_argument("--models", nargs="+", default=list(FULL["models"]), choices=list(FULL["models"]))
  parser.add_argument("--repeats", type=int, help="timed steps per row (default 20, 2 with --tiny)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  setup = TINY if args.tiny else FULL
  repeats = args.repeats or setup["repeats"]
  sections = [header(args.tiny, repeats)]
  for name in args.models:
    print(f"{name}:", flush=True)
    sections.append(format_model(name, setup, *benchmark_model(name, setup, repeats)))
  total = time.perf_counter() - start
  report = "\n".join(sections + [f"total wall time {total:.1f} s", ""])
  print("\n" + report, flush=True)
  out = args.out or (None if args.tiny else DEFAULT_OUT)
  if out:
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(report)
    print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()
