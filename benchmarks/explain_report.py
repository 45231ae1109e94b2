"""Train SGD, Bort, DBort and B-cos MNIST models and write the explainability report.

  nice -n 10 python -m benchmarks.explain_report --arch cnn    # explain_mnist_cnn.{md,json,png}
  nice -n 10 python -m benchmarks.explain_report --arch mlp    # explain_mnist_mlp.{md,json,png}

The ReLU nets are trained with optax SGD (momentum 0.9), ``bort_jax.bort_sgd`` (Bort) and Bort +
``bort_jax.dbort_loss`` (DBort); the B-cos nets of ``bort_jax.explain.bcos`` with Adam. The architectures (and
how they read the grids of the pointing game) are in ``benchmarks/explain_models.py``. Data:
``$BORT_DATA_DIR/mnist.npz`` (default ``../shared/data`` from the repository root). Everything else is
measured by ``bort_jax.explain.report``.
"""

import argparse
import json
import os
import pathlib
import time

import jax
import numpy as np
import optax
from flax import nnx

import bort_jax
from benchmarks import explain_models as models
from bort_jax.explain import bcos
from bort_jax.explain import report

SETUP = {
    "mlp": "Setup. sgd / bort / dbort: bias-free ReLU MLP 784-{widths}-10; bcos: bias-free B-cos MLP (B = 2) on "
           "[x, 1 − x]. Grids are read tile-wise (each 28×28 cell through the MLP, logits averaged over cells), "
           "so cells do not interact and the pointing game measures how class-specific an explanation is.",
    "cnn": "Setup. sgd / bort / dbort: bias-free fully convolutional ReLU net, 3×3 convolutions with {widths} "
           "channels (strides 2, 2, 1, 1), a 1×1 convolution to the 10 classes and global average pooling; bcos: "
           "the same topology with B-cos convolutions (B = 2) on [x, 1 − x]. Trained on 28×28 digits, applied "
           "to whole 56×56 / 84×84 grids (receptive fields cross cell borders). The raw reconstruction scale 1/∏α "
           "ignores that 3×3 patches overlap (up to 9 per pixel), so for this net read the fitted PSNR.",
}
NOTES = (
    "Training: SGD (momentum 0.9), bort_jax.bort_sgd (l2-full, α and γ as configured, on every feature kernel; classifier "
    "kernel left free) and the same plus bort_jax.dbort_loss over every pre-activation; B-cos with Adam.",
    "",
    "Methods. Reconstruction x̂ = J(x)ᵀ f(x) / ∏α from the ReLU features of each depth "
    "(bort_jax.explain.reconstruct); PSNR with peak 1 on raw x̂. Backtracking: the top 10% of the last feature "
    "layer's units, ranked by their contribution f ⊙ ∂logit/∂f to the target class, sent back through J(x)ᵀ. IG "
    "from the zero image (midpoint rule); for a bias-free ReLU net it equals input×gradient exactly (positive "
    "homogeneity), so the two rows coincide. BSM / BIG: nearest boundary point by untargeted PGD-L2 "
    "(10 steps, frozen at first success) over ε ∈ {0.5, 1, 2, 3, 4, 6}, the smallest successful ε kept. "
    "Pointing game: positive attribution in the target cell / total positive attribution, summed over "
    "channels (B-cos: over the two input encodings). Deletion / insertion: 56 pixels per step, zero baseline.",
)


def load_mnist(data_dir: str) -> tuple[np.ndarray, ...]:
  """MNIST as float32 NHWC images in [0, 1] and int32 labels."""
  path = pathlib.Path(data_dir) / "mnist.npz"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found; set BORT_DATA_DIR or pass --data-dir")
  with np.load(path) as d:
    to_float = lambda a: (a.astype(np.float32) / 255.0)[..., None]
    return (to_float(d["x_train"]), d["y_train"].astype(np.int32), to_float(d["x_test"]),
            d["y_test"].astype(np.int32))


def make_optimizer(kind: str, args) -> optax.GradientTransformation:
  if kind == "sgd":
    return optax.sgd(args.lr, momentum=0.9)
  if kind == "bcos":
    return optax.adam(args.bcos_lr)
  # The classifier kernel is left free (rule scale 0): only the feature layers need to be invertible, and a
  # unit-norm head would cap the logit scale.
  head = models.head_kernel_path(args.arch, args.widths)
  return bort_jax.bort_sgd(args.lr, args.gamma, momentum=0.9, alpha=args.alpha,
                           rules=[(head, args.head_gamma_scale)])


def train(kind: str, seed: int, x_train, y_train, args):
  """Train one model; returns (model, seconds)."""
  model = models.make_model(args.arch, kind, seed, args.widths)
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


def _alpha(text: str) -> float | str:
  """--alpha: 'adaptive' or a float > 0 (checked while parsing, before any data is loaded)."""
  if text == "adaptive":
    return text
  try:
    value = float(text)
  except ValueError:
    value = 0.0
  if not value > 0:
    raise argparse.ArgumentTypeError(f"{text!r} is not accepted; accepted values: a float > 0 or 'adaptive'")
  return value


def parse_args(argv=None):
  repo = pathlib.Path(__file__).resolve().parents[1]
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data-dir", default=os.environ.get("BORT_DATA_DIR", str(repo.parent / "shared/data")))
  parser.add_argument("--out", default=str(repo / "benchmarks/results"))
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--arch", default="cnn", choices=models.ARCHS)
  parser.add_argument("--kinds", nargs="+", default=list(models.KINDS), choices=models.KINDS)
  parser.add_argument("--widths", type=int, nargs="+",
                      help="hidden sizes (mlp, default 512 512) or channels (cnn, default 32 32 32 32)")
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--train-size", type=int, default=60000)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=0.05)
  parser.add_argument("--gamma", type=float, default=0.1, help="Bort correction strength")
  parser.add_argument("--alpha", type=_alpha, default=1.0, help="Bort amplitude: a float > 0 or 'adaptive'")
  parser.add_argument("--head-gamma-scale", type=float, default=0.0, help="Bort strength on the classifier")
  parser.add_argument("--dbort-lam", type=float, default=0.1)
  parser.add_argument("--dbort-beta", type=float, default=0.1)
  parser.add_argument("--bcos-lr", type=float, default=3e-3)
  parser.add_argument("--num-grids", type=int, default=500)
  parser.add_argument("--num-eval", type=int, default=200, help="test images for deletion/insertion")
  parser.add_argument("--num-big", type=int, default=100, help="test images for BSM/BIG (PGD search)")
  parser.add_argument("--ig-steps", type=int, default=8)
  args = parser.parse_args(argv)
  args.widths = args.widths or ([512, 512] if args.arch == "mlp" else list(models.CNN_CHANNELS))
  return args


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
      fns = fns_by_kind.setdefault(family, models.model_fns(args.arch, kind, model))
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
  name = f"explain_mnist_{args.arch}"
  last_depth = list(fns_by_kind["relu"].features_fns)[-1] if "relu" in fns_by_kind else None
  panels = report.figure_panels(first_seed, x_test[pick], y_test[pick], depth=last_depth)
  report.write_figure(panels, out / f"{name}.png")
  config = vars(args) | {"total_seconds": round(time.time() - start), "backend": jax.default_backend()}
  config.pop("out"), config.pop("data_dir")
  (out / f"{name}.json").write_text(json.dumps({"config": config, "results": results}, indent=1))
  notes = (SETUP[args.arch].format(widths="-".join(map(str, args.widths))), "") + NOTES
  print(report.write_markdown(results, out / f"{name}.md", config, f"{name}.png", notes))


if __name__ == "__main__":
  main()
