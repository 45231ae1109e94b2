"""Train SGD, Bort, DBort and B-cos MNIST models and write the explainability report.

  nice -n 10 python benchmarks/explain_report.py --out benchmarks/results

Models are bias-free MLPs (784-512-512-10; ReLU trained with optax SGD, ``bort_jax.bort_sgd`` (Bort) and
Bort + ``bort_jax.dbort_loss`` (DBort); the B-cos MLP of ``bort_jax.explain.bcos`` with Adam). To read the
2×2 / 3×3 grids of the pointing game, a model is applied to every 28×28 tile and its logits are averaged over
tiles (a convolution with a 28×28 kernel and stride 28, then global average pooling). Data:
``$BORT_DATA_DIR/mnist.npz`` (default ``../shared/data`` from the repository root). Everything else is
measured by ``bort_jax.explain.report``.
"""

import argparse
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bort_jax
from bort_jax.explain import bcos
from bort_jax.explain import report

KINDS = ("sgd", "bort", "dbort", "bcos")
TILE = 28
NOTES = (
    "Setup. sgd / bort / dbort: bias-free ReLU MLP 784-512-512-10 trained with optax.sgd (momentum 0.9), "
    "bort_jax.bort_sgd (l2-full, α = 1, γ on both hidden kernels, classifier kernel left free) and the same "
    "plus bort_jax.dbort_loss over the three pre-activations; bcos: bias-free B-cos MLP (B = 2) on [x, 1 − x] "
    "with Adam. Grids are read tile-wise (each 28×28 cell through the MLP, logits averaged over cells), so "
    "cells do not interact and the pointing game measures how class-specific an explanation is.",
    "",
    "Methods. Reconstruction x̂ = J(x)ᵀ f(x) / ∏α from the ReLU features of fc1 / fc2 "
    "(bort_jax.explain.reconstruct); PSNR with peak 1 on raw x̂. Backtracking: the top 10% of fc2 units, "
    "ranked by their contribution f ⊙ ∂logit/∂f to the target class, sent back through J(x)ᵀ. IG from the "
    "zero image (midpoint rule); for a bias-free ReLU net it equals input×gradient exactly (positive "
    "homogeneity), so the two rows coincide. BSM / BIG: nearest boundary point by untargeted PGD-L2 "
    "(10 steps, frozen at first success) over ε ∈ {0.5, 1, 2, 3, 4, 6}, the smallest successful ε kept. "
    "Pointing game: positive attribution in the target cell / total positive attribution, summed over "
    "channels (B-cos: over the two input encodings). Deletion / insertion: 56 pixels per step, zero baseline.",
)


class MLP(nnx.Module):
  """Bias-free ReLU MLP on flattened images; ``forward`` also returns every pre-activation (for DBort)."""

  def __init__(self, hidden_sizes: Sequence[int] = (512, 512), num_classes: int = 10, *, rngs: nnx.Rngs):
    sizes = (TILE * TILE, *hidden_sizes, num_classes)
    self.layers = nnx.List([nnx.Linear(i, o, use_bias=False, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])

  def forward(self, x: jax.Array, depth: int | None = None) -> tuple[jax.Array, list[jax.Array]]:
    """ReLU features of hidden layer ``depth`` (1-based), or the logits when None; plus pre-activations."""
    h, preacts = x.reshape(x.shape[0], -1), []
    for i, layer in enumerate(self.layers, start=1):
      preacts.append(layer(h))
      if i == len(self.layers):
        break
      h = jax.nn.relu(preacts[-1])
      if i == depth:
        return h, preacts
    return preacts[-1], preacts

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.forward(x)[0]


def tiled(fn: Callable) -> Callable:
  """``fn(params, tiles) -> (N·T, ...)`` on 28×28 tiles, lifted to images of g×g tiles: (N, T, ...)."""
  def wrapped(params, x):
    n, h, w, c = x.shape
    tiles = x.reshape(n, h // TILE, TILE, w // TILE, TILE, c).transpose(0, 1, 3, 2, 4, 5)
    out = fn(params, tiles.reshape(-1, TILE, TILE, c))
    return out.reshape(n, -1, *out.shape[1:])
  return wrapped


def load_mnist(data_dir: str) -> tuple[np.ndarray, ...]:
  """MNIST as float32 NHWC images in [0, 1] and int32 labels."""
  path = pathlib.Path(data_dir) / "mnist.npz"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found; set BORT_DATA_DIR or pass --data-dir")
  with np.load(path) as d:
    to_float = lambda a: (a.astype(np.float32) / 255.0)[..., None]
    return (to_float(d["x_train"]), d["y_train"].astype(np.int32), to_float(d["x_test"]),
            d["y_test"].astype(np.int32))


def make_model(kind: str, seed: int, hidden_sizes: Sequence[int]):
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if kind == "bcos":
    return bcos.BcosMLP(2 * TILE * TILE, hidden_sizes, logit_scale=10.0, rngs=nnx.Rngs(seed))
  return MLP(hidden_sizes, rngs=nnx.Rngs(seed))


def make_optimizer(kind: str, args) -> optax.GradientTransformation:
  if kind == "sgd":
    return optax.sgd(args.lr, momentum=0.9)
  if kind == "bcos":
    return optax.adam(args.bcos_lr)
  # The classifier kernel is left free (rule scale 0): only the feature layers need to be invertible, and a
  # unit-norm head would cap the logit scale.
  head = f"layers/{len(args.hidden)}/kernel"
  return bort_jax.bort_sgd(args.lr, args.gamma, momentum=0.9, alpha=1.0, rules=[(head, args.head_gamma_scale)])


def train(kind: str, seed: int, x_train, y_train, args):
  """Train one model; returns (model, seconds)."""
  model = make_model(kind, seed, args.hidden)
  graphdef, params = nnx.split(model)
  optimizer = make_optimizer(kind, args)
  opt_state = optimizer.init(params)
  encode = bcos.encode_input if kind == "bcos" else (lambda x: x)

  def loss_fn(p, x, y):
    net = nnx.merge(graphdef, p)
    if kind == "bcos":
      logits, extra = net(encode(x)), 0.0
    else:
      logits, preacts = net.forward(x)
      extra = bort_jax.dbort_loss(preacts, args.dbort_lam, args.dbort_beta) if kind == "dbort" else 0.0
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + extra

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(seed)
  start, batches = time.time(), len(x_train) // args.batch_size
  for epoch in range(args.epochs):
    order = rng.permutation(len(x_train))
    for b in range(batches):
      idx = order[b * args.batch_size:(b + 1) * args.batch_size]
      params, opt_state, loss = step(params, opt_state, x_train[idx], y_train[idx])
    print(f"  {kind} seed {seed} epoch {epoch + 1}: loss {float(loss):.4f} ({time.time() - start:.0f}s)",
          flush=True)
  return nnx.merge(graphdef, params), time.time() - start


def model_fns(kind: str, model) -> report.ModelFns:
  """Tile-wise pure functions of a trained model (built once per architecture: seeds share compilations)."""
  graphdef = nnx.graphdef(model)
  net = lambda p: nnx.merge(graphdef, p)
  if kind == "bcos":
    apply_fn, linear_fn, _ = bcos.bcos_apply_fns(model)
    tiled_linear = lambda p, e: tiled(linear_fn)(p, e).mean(1)
    explain = jax.jit(lambda p, x, t: bcos.bcos_contributions(tiled_linear, p, x, t))
    return report.ModelFns(lambda p, x: tiled(apply_fn)(p, x).mean(1), explain_fn=explain)
  depths = range(1, len(model.layers))
  features = lambda depth: tiled(lambda p, x: net(p).forward(x, depth)[0])
  return report.ModelFns(
      apply_fn=lambda p, x: tiled(lambda q, z: net(q)(z))(p, x).mean(1),
      features_fns={f"fc{d}": features(d) for d in depths},
      head_fn=lambda p, h: net(p).layers[-1](h).mean(1),
      kernels_fn=lambda p: {f"fc{d}": net(p).layers[d - 1].kernel[...] for d in depths})


def parse_args(argv=None):
  repo = pathlib.Path(__file__).resolve().parents[1]
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data-dir", default=os.environ.get("BORT_DATA_DIR", str(repo.parent / "shared/data")))
  parser.add_argument("--out", default=str(repo / "benchmarks/results"))
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
  parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--train-size", type=int, default=60000)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=0.05)
  parser.add_argument("--gamma", type=float, default=0.1, help="Bort correction strength")
  parser.add_argument("--head-gamma-scale", type=float, default=0.0, help="Bort strength on the classifier")
  parser.add_argument("--dbort-lam", type=float, default=0.1)
  parser.add_argument("--dbort-beta", type=float, default=0.1)
  parser.add_argument("--bcos-lr", type=float, default=3e-3)
  parser.add_argument("--num-grids", type=int, default=500)
  parser.add_argument("--num-eval", type=int, default=200, help="test images for deletion/insertion")
  parser.add_argument("--num-big", type=int, default=100, help="test images for BSM/BIG (PGD search)")
  parser.add_argument("--ig-steps", type=int, default=8)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  x_train, y_train, x_test, y_test = load_mnist(args.data_dir)
  x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
  fns_by_kind, results, first_seed = {}, [], {}
  start = time.time()
  for seed in args.seeds:
    for kind in args.kinds:
      model, seconds = train(kind, seed, x_train, y_train, args)
      family = "bcos" if kind == "bcos" else "relu"         # SGD, Bort and DBort share one architecture
      fns = fns_by_kind.setdefault(family, model_fns(kind, model))
      params = nnx.state(model)
      metrics = report.evaluate(fns, params, x_test, y_test, x_train[:2000], y_train[:2000],
                                num_grids=args.num_grids, num_eval=args.num_eval, num_big=args.num_big,
                                ig_steps=args.ig_steps)
      metrics["train_seconds"] = seconds
      print(f"  {kind} seed {seed}: accuracy {metrics['accuracy']:.4f} ({time.time() - start:.0f}s total)",
            flush=True)
      results.append({"model": kind, "seed": seed, "metrics": metrics})
      first_seed.setdefault(kind, (fns, params))
  order = np.argsort(y_test[:200], kind="stable")
  pick = [order[np.searchsorted(y_test[:200][order], c)] for c in range(0, 10, 2)]
  panels = report.figure_panels(first_seed, x_test[pick], y_test[pick], depth="fc2")
  report.write_figure(panels, out / "explain_mnist.png")
  config = vars(args) | {"total_seconds": round(time.time() - start), "backend": jax.default_backend()}
  config.pop("out"), config.pop("data_dir")
  (out / "explain_mnist.json").write_text(json.dumps({"config": config, "results": results}, indent=1))
  print(report.write_markdown(results, out / "explain_mnist.md", config, "explain_mnist.png", NOTES))


if __name__ == "__main__":
  main()
