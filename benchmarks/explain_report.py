"""Train SGD, Bort, DBort and B-cos models on MNIST or CIFAR-10 and write the explainability report.

  nice -n 10 python -m benchmarks.explain_report --arch cnn                     # explain_mnist_cnn.{md,json,png}
  nice -n 10 python -m benchmarks.explain_report --arch mlp                     # explain_mnist_mlp.{md,json,png}
  nice -n 10 python -m benchmarks.explain_report --dataset cifar10 --arch cnn   # explain_cifar10_cnn.{md,json,png}

The ReLU nets are trained with optax SGD (momentum 0.9), ``bort_jax.bort_sgd`` (Bort) and Bort +
``bort_jax.dbort_loss`` (DBort); the B-cos nets of ``bort_jax.explain.bcos`` (MaxOut 2, logit bias, symmetric
padding) with Adam on the authors' binary cross-entropy. The architectures (and how they read the grids of the
pointing game) are in ``benchmarks/explain_models.py``. Data: ``$BORT_DATA_DIR/{mnist,cifar10}.npz`` (default
``../shared/data`` from the repository root; its CIFAR-10 copy is JPEG-compressed). Everything else is measured
by ``examples.explain_protocol``; the claims checked at the end are in ``benchmarks/explain_acceptance.py``.

Resumable: every (dataset, arch, model, seed) result is saved as it finishes, with its parameters, under
``--cache-dir`` (default ``runs/explain_report/<dataset>_<arch>/``); a rerun with the same options skips those
and rebuilds the report (``--fresh`` recomputes everything).
"""

import argparse
import json
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bort_jax
from benchmarks import explain_acceptance
from benchmarks import explain_models as models
from examples import explain_protocol
from benchmarks import explain_tables

DATASETS = ("mnist", "cifar10")
TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
# Per-dataset defaults of the options left None on the command line.
DEFAULTS = {"mnist": {"epochs": 2}, "cifar10": {"epochs": 10}}
TEST_ORDER_SEED = 0
JPEG_NOTE = ("CIFAR-10 from the shared copy, whose images are JPEG-compressed: not the original pixels, so the "
             "numbers are not comparable to published CIFAR-10 results")
# Options about where and how a run goes, left out of the report's configuration.
_NOT_REPORTED = ("out", "data_dir", "cache_dir", "fresh", "note")
# Options that do not change a result: a cached result is reused when every other option matches.
_NOT_PROTOCOL = ("seeds", "kinds") + _NOT_REPORTED

SETUP = {
    "mlp": "Setup. sgd / bort / dbort: bias-free ReLU MLP {pixels}-{widths}-10; bcos: bias-free B-cos MLP (B = 2, "
           "MaxOut 2) on [x, 1 − x]. Grids are read tile-wise (each {tile} cell through the MLP, logits averaged "
           "over cells), so cells do not interact and the pointing game measures how class-specific an explanation "
           "is.",
    "cnn": "Setup. sgd / bort / dbort: bias-free fully convolutional ReLU net, 3×3 convolutions with {widths} "
           "channels (strides {strides}, \"SAME\" padding), a 1×1 convolution to the 10 classes and global average "
           "pooling; bcos: the same topology with B-cos convolutions (B = 2, MaxOut 2, padding 1 on both sides) on "
           "[x, 1 − x]. Trained on {tile} images, applied to whole 2×2 / 3×3 grids (receptive fields cross cell "
           "borders). The raw reconstruction scale 1/∏α ignores that 3×3 patches overlap (up to 9 per pixel), so "
           "for this net read the fitted PSNR.",
}
TRAINING = ("Training ({epochs} epoch(s), batch {batch_size}, no augmentation): SGD (momentum 0.9, lr {lr}), "
            "bort_jax.bort_sgd (l2-full, α = {alpha}, γ = {gamma} on every feature kernel; classifier kernel left "
            "free) and the same plus bort_jax.dbort_loss (λ = {dbort_lam}, β = {dbort_beta}) over every "
            "pre-activation; B-cos with Adam (lr {bcos_lr}) on the authors' loss: binary cross-entropy of the "
            "logits (logit bias log(1/9), no temperature) against one-hot labels.")
NOTES = (
    "Methods. Reconstruction x̂ = J(x)ᵀ f(x) / ∏α from the ReLU features of each depth "
    "(bort_jax.explain.reconstruct); PSNR with peak 1 on raw x̂. Backtracking: the top 10% of the last feature "
    "layer's units, ranked by their contribution f ⊙ ∂logit/∂f to the explained class, sent back through J(x)ᵀ. "
    "IG from the zero image (midpoint rule); for a bias-free ReLU net it equals input×gradient exactly (positive "
    "homogeneity), so the two rows coincide. BSM / BIG (Wang et al. 2022), pointing game (Böhle et al. 2022) and "
    "deletion / insertion (Petsiuk et al. 2018) follow the authors' protocols, stated in each table's caption.",
)


def load_dataset(name: str, data_dir: str) -> tuple[np.ndarray, ...]:
  """``name`` as float32 NHWC images in [0, 1] and int32 labels: (x_train, y_train, x_test, y_test).

  A test split stored sorted by class (the shared CIFAR-10 copy) is put in a fixed random order (seed
  ``TEST_ORDER_SEED``), so that the first N test images, which the report explains, mix the classes.
  """
  path = pathlib.Path(data_dir) / f"{name}.npz"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found; set BORT_DATA_DIR or pass --data-dir")
  with np.load(path) as d:
    def to_float(a):
      a = a.astype(np.float32) / 255.0
      return a[..., None] if a.ndim == 3 else a
    x_train, y_train = to_float(d["x_train"]), d["y_train"].astype(np.int32).reshape(-1)
    x_test, y_test = to_float(d["x_test"]), d["y_test"].astype(np.int32).reshape(-1)
  if sorted_by_class(y_test):
    order = np.random.default_rng(TEST_ORDER_SEED).permutation(len(y_test))
    x_test, y_test = x_test[order], y_test[order]
  return x_train, y_train, x_test, y_test


def sorted_by_class(labels: np.ndarray) -> bool:
  return bool(np.all(np.diff(labels) >= 0))


def load_mnist(data_dir: str) -> tuple[np.ndarray, ...]:
  return load_dataset("mnist", data_dir)


def make_optimizer(kind: str, args, model: nnx.Module | None = None) -> optax.GradientTransformation:
  if kind == "sgd":
    return optax.sgd(args.lr, momentum=0.9)
  if kind == "bcos":
    return optax.adam(args.bcos_lr)
  # The classifier kernel is left free (rule scale 0): only the feature layers need to be invertible, and a
  # unit-norm head would cap the logit scale.
  head = models.head_kernel_path(args.arch, args.widths)
  return bort_jax.bort_sgd(args.lr, args.gamma, momentum=0.9, alpha=args.alpha,
                           rules=[(head, args.head_gamma_scale)],
                           views=None if model is None else bort_jax.nnx_views(model))


def build_model(kind: str, seed: int, args) -> nnx.Module:
  return models.make_model(args.arch, kind, seed, args.widths, image_shape=args.image_shape, strides=args.strides)


def train(kind: str, seed: int, x_train, y_train, args, checkpoint: pathlib.Path | None = None,
          wanted: dict | None = None):
  """Train one model; returns (model, seconds).

  With ``checkpoint``, parameters and optimizer state are saved there after every epoch (with ``wanted``, the
  protocol) and a later call with the same protocol continues after the last saved epoch, with the same
  shuffles. The caller removes the file once the trained model's result is saved, so a kill during evaluation
  does not cost the training.
  """
  model = build_model(kind, seed, args)
  graphdef, params = nnx.split(model)
  optimizer = make_optimizer(kind, args, model)
  opt_state = optimizer.init(params)
  stamp = json.dumps(wanted, sort_keys=True)
  first_epoch, elapsed = 0, 0.0
  if checkpoint is not None and checkpoint.exists():
    resumed = load_checkpoint(checkpoint, (params, opt_state), stamp)
    if resumed is None:
      print(f"  {checkpoint.name}: saved with other options; training from the start", flush=True)
    else:
      (params, opt_state), first_epoch, elapsed = resumed
      print(f"  {kind} seed {seed}: continuing after epoch {first_epoch} ({checkpoint.name})", flush=True)

  def loss_fn(p, x, y):
    net = nnx.merge(graphdef, p)
    if kind == "bcos":
      return models.bcos_loss(net, x, y)
    logits, preacts = net.forward(x)
    extra = bort_jax.dbort_loss(preacts, args.dbort_lam, args.dbort_beta) if kind == "dbort" else 0.0
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + extra

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(seed)
  start, batches = time.time() - elapsed, len(x_train) // args.batch_size
  for epoch in range(args.epochs):
    order = rng.permutation(len(x_train))                   # drawn for skipped epochs too: same shuffles
    if epoch < first_epoch:
      continue
    for b in range(batches):
      idx = order[b * args.batch_size:(b + 1) * args.batch_size]
      params, opt_state, loss = step(params, opt_state, x_train[idx], y_train[idx])
    print(f"  {kind} seed {seed} epoch {epoch + 1}: loss {float(loss):.4f} ({time.time() - start:.0f}s)",
          flush=True)
    if checkpoint is not None:
      _write_leaves(checkpoint, jax.tree_util.tree_leaves((params, opt_state)), protocol=stamp, epoch=epoch + 1,
                    seconds=time.time() - start)
  return nnx.merge(graphdef, params), time.time() - start


# ---------------------------------------------------------------------------------------------------------------
# Per-run cache (resume)
# ---------------------------------------------------------------------------------------------------------------

def _leaves(model: nnx.Module) -> tuple[list[str], list[np.ndarray], Any]:
  pure = nnx.to_pure_dict(nnx.state(model))
  flat, treedef = jax.tree_util.tree_flatten_with_path(pure)
  return [jax.tree_util.keystr(path) for path, _ in flat], [np.asarray(v) for _, v in flat], treedef


def _write_leaves(path: pathlib.Path, leaves, **meta) -> None:
  """``leaves`` as ``leaf_0 … leaf_{n−1}`` plus ``meta`` in one .npz, replaced atomically (a kill keeps the
  old file)."""
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, **meta, leaves=len(leaves), **{f"leaf_{i}": np.asarray(v) for i, v in enumerate(leaves)})
  tmp.replace(path)


def save_params(model: nnx.Module, path: pathlib.Path) -> None:
  names, values, _ = _leaves(model)
  _write_leaves(path, values, names=np.asarray(names))


def load_params(model: nnx.Module, path: pathlib.Path) -> nnx.Module:
  """``model`` (freshly built, same architecture) with the parameters saved at ``path``."""
  names, values, treedef = _leaves(model)
  with np.load(path) as d:
    if list(d["names"]) != names:
      raise ValueError(f"{path} holds another architecture: {list(d['names'])} vs {names}")
    loaded = [d[f"leaf_{i}"] for i in range(len(names))]
  if any(a.shape != b.shape for a, b in zip(loaded, values)):
    raise ValueError(f"{path} holds parameters of other shapes than the model's")
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, loaded))
  nnx.update(model, state)
  return model


def load_checkpoint(path: pathlib.Path, like, stamp: str):
  """(tree shaped as ``like``, epochs done, seconds spent) from a training checkpoint saved under the protocol
  ``stamp``; None when it was saved under another protocol or for another tree."""
  leaves, treedef = jax.tree_util.tree_flatten(like)
  with np.load(path) as d:
    if str(d["protocol"]) != stamp or int(d["leaves"]) != len(leaves):
      return None
    tree = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(d[f"leaf_{i}"]) for i in range(len(leaves))])
    return tree, int(d["epoch"]), float(d["seconds"])


def protocol(config: dict) -> dict:
  return {k: v for k, v in config.items() if k not in _NOT_PROTOCOL}


def cached_result(run_dir: pathlib.Path, kind: str, seed: int, wanted: dict) -> dict | None:
  path = run_dir / f"{kind}_seed{seed}.json"
  if not path.exists():
    return None
  stored = json.loads(path.read_text())
  wanted = json.loads(json.dumps(wanted))                 # tuples as lists, as stored
  if stored.get("protocol") != wanted:
    changed = sorted(k for k in set(wanted) | set(stored.get("protocol", {}))
                     if wanted.get(k) != stored.get("protocol", {}).get(k))
    print(f"  {path.name}: cached with other options ({', '.join(changed)}); recomputing", flush=True)
    return None
  return stored["result"]


def save_result(run_dir: pathlib.Path, kind: str, seed: int, wanted: dict, result: dict) -> None:
  path = run_dir / f"{kind}_seed{seed}.json"
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps({"protocol": wanted, "result": result}, indent=1))
  tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

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
  parser.add_argument("--cache-dir", default=str(repo / "runs/explain_report"),
                      help="per-run results and parameters (resume); <cache-dir>/<dataset>_<arch>/")
  parser.add_argument("--fresh", action="store_true", help="ignore cached runs (they are overwritten)")
  parser.add_argument("--note", action="append", default=[],
                      help="a remark on how this run went, printed in bold under the title (repeatable)")
  parser.add_argument("--dataset", default="mnist", choices=DATASETS)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--arch", default="cnn", choices=models.ARCHS)
  parser.add_argument("--kinds", nargs="+", default=list(models.KINDS), choices=models.KINDS)
  parser.add_argument("--widths", type=int, nargs="+",
                      help="hidden sizes (mlp, default 512 512) or channels (cnn; MNIST 32 32 32 32, CIFAR-10 "
                           "32 32 64 64)")
  parser.add_argument("--strides", type=int, nargs="+",
                      help="strides of the cnn's 3×3 convolutions (default 2 2 1 1)")
  parser.add_argument("--epochs", type=int, help="MNIST 2, CIFAR-10 10")
  parser.add_argument("--train-size", type=int, default=0, help="first N training images (0: all)")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=0.05)
  parser.add_argument("--gamma", type=float, default=0.1, help="Bort correction strength")
  parser.add_argument("--alpha", type=_alpha,
                      help="Bort amplitude: a float > 0 or 'adaptive' (default: 'adaptive' for cnn, 1.0 for mlp)")
  parser.add_argument("--head-gamma-scale", type=float, default=0.0, help="Bort strength on the classifier")
  parser.add_argument("--dbort-lam", type=float, default=0.1)
  parser.add_argument("--dbort-beta", type=float, default=0.1)
  parser.add_argument("--bcos-lr", type=float, default=3e-3)
  parser.add_argument("--num-grids", type=int, default=100, help="grids per size (400 cells on 2×2, 900 on 3×3)")
  parser.add_argument("--smooth", type=int, default=1, help="pointing-game box filter (authors: 1 on CIFAR-10)")
  parser.add_argument("--num-eval", type=int, default=200, help="test images for deletion/insertion")
  parser.add_argument("--num-big", type=int, default=100, help="test images for BSM/BIG (boundary search)")
  parser.add_argument("--ig-steps", type=int, default=8)
  parser.add_argument("--boundary-epsilons", type=float, nargs="+", default=list(explain_protocol.PIXEL_EPSILONS),
                      help="PGD-L2 radii of the boundary search (images in [0, 1])")
  parser.add_argument("--cw-epsilon", type=float, help="CW-L2 radius (default: the largest PGD radius)")
  args = parser.parse_args(argv)
  for key, value in DEFAULTS[args.dataset].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  cnn_widths, cnn_strides = models.DATASET_CNN[args.dataset]
  args.widths = args.widths or ([512, 512] if args.arch == "mlp" else list(cnn_widths))
  args.strides = args.strides or list(cnn_strides)
  if args.arch == "cnn" and len(args.strides) != len(args.widths):
    parser.error(f"--strides needs one stride per width, got {args.strides} for {args.widths}")
  if args.alpha is None:
    args.alpha = "adaptive" if args.arch == "cnn" else 1.0
  if args.cw_epsilon is None:
    args.cw_epsilon = max(args.boundary_epsilons)
  return args


def main(argv=None):
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  run_dir = pathlib.Path(args.cache_dir) / f"{args.dataset}_{args.arch}"
  run_dir.mkdir(parents=True, exist_ok=True)
  x_train, y_train, x_test, y_test = load_dataset(args.dataset, args.data_dir)
  if args.train_size:
    x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
  args.image_shape = x_train.shape[1:]
  with np.load(pathlib.Path(args.data_dir) / f"{args.dataset}.npz") as d:
    stored_sorted = sorted_by_class(d["y_test"].reshape(-1))
  args.test_order = f"shuffled (seed {TEST_ORDER_SEED}; stored sorted by class)" if stored_sorted else "as stored"
  channel_mean = x_train.mean((0, 1, 2))
  config = {k: v for k, v in vars(args).items() if k != "image_shape"}
  if args.arch == "mlp":
    config.pop("strides")
  wanted = protocol(config)
  fns_by_family, results, first_seed = {}, [], {}
  start = time.time()
  for seed in args.seeds:
    for kind in args.kinds:
      family = "bcos" if kind == "bcos" else "relu"         # SGD, Bort and DBort share one architecture
      params_path = run_dir / f"{kind}_seed{seed}.npz"
      metrics = None if args.fresh else cached_result(run_dir, kind, seed, wanted)
      if metrics is not None and seed == args.seeds[0] and not params_path.exists():
        metrics = None                                      # the figure needs the first seed's parameters
      if metrics is not None:
        model = build_model(kind, seed, args)
        if seed == args.seeds[0]:
          model = load_params(model, params_path)
        print(f"  {kind} seed {seed}: cached ({run_dir.name}/{kind}_seed{seed}.json)", flush=True)
      else:
        checkpoint = run_dir / f"{kind}_seed{seed}.epoch.npz"
        model, seconds = train(kind, seed, x_train, y_train, args, checkpoint, wanted)
        save_params(model, params_path)
        fns = fns_by_family.setdefault(family, models.model_fns(args.arch, kind, model, args.image_shape))
        eval_start = time.time()
        metrics = explain_protocol.evaluate(fns, nnx.state(model), x_test, y_test, x_train[:2000], y_train[:2000],
                                  num_grids=args.num_grids, num_eval=args.num_eval, num_big=args.num_big,
                                  ig_steps=args.ig_steps, channel_mean=channel_mean, smooth=args.smooth,
                                  epsilons=tuple(args.boundary_epsilons), cw_epsilon=args.cw_epsilon)
        metrics["train_seconds"] = seconds
        metrics["eval_seconds"] = time.time() - eval_start
        save_result(run_dir, kind, seed, wanted, metrics)
        checkpoint.unlink(missing_ok=True)
        print(f"  {kind} seed {seed}: accuracy {metrics['accuracy']:.4f}, evaluated in "
              f"{metrics['eval_seconds']:.0f}s ({time.time() - start:.0f}s total)", flush=True)
      fns = fns_by_family.setdefault(family, models.model_fns(args.arch, kind, model, args.image_shape))
      results.append({"model": kind, "seed": seed, "metrics": metrics})
      if seed == args.seeds[0]:
        first_seed[kind] = (fns, nnx.state(model))
  write_report(args, config, results, first_seed, fns_by_family, x_test, y_test, out, time.time() - start)


def write_report(args, config, results, first_seed, fns_by_family, x_test, y_test, out, seconds):
  pick = [int(np.flatnonzero(y_test == c)[0]) for c in range(0, 10, 2)]   # the first test image of 5 classes
  name = f"explain_{args.dataset}_{args.arch}"
  depths = list(fns_by_family["relu"].features_fns) if "relu" in fns_by_family else []
  panels = explain_protocol.figure_panels(first_seed, x_test[pick], y_test[pick], depths=depths[:1] + depths[-1:])
  explain_protocol.write_figure(panels, out / f"{name}.png")
  config = config | {"seconds_this_run": round(seconds), "backend": jax.default_backend()}
  for key in _NOT_REPORTED:
    config.pop(key)
  (out / f"{name}.json").write_text(json.dumps({"config": config, "results": results}, indent=1))
  pixels = "×".join(map(str, args.image_shape[:2]))
  fields = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "alpha", "gamma", "dbort_lam",
                                          "dbort_beta", "bcos_lr")}
  setup = SETUP[args.arch].format(widths="-".join(map(str, args.widths)), strides=", ".join(map(str, args.strides)),
                                  pixels=int(np.prod(args.image_shape)), tile=pixels)
  notes = (setup, "", TRAINING.format(**fields), "") + NOTES
  data_note = "JPEG-compressed CIFAR-10 copy" if args.dataset == "cifar10" else ""
  if data_note:
    notes = (f"**Data: {JPEG_NOTE}.**", "") + notes
  notes = tuple(line for remark in args.note for line in (f"**Note: {remark}**", "")) + notes
  summary = explain_tables.summarize_seeds(results)
  text = explain_tables.write_markdown(
      results, out / f"{name}.md", config, f"{name}.png", notes,
      title=f"Explainability on {TITLES[args.dataset]} ({args.arch.upper()}): SGD vs Bort vs DBort vs B-cos",
      captions={"models": explain_tables.default_captions(config)["models"] + "; training as stated above"},
      data_note=data_note, sections=explain_acceptance.claims_section(summary))
  print(text)


if __name__ == "__main__":
  main()
