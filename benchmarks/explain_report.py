"""Train SGD, Bort, DBort and B-cos models on MNIST or CIFAR-10 and write the explainability report.

  nice -n 10 python -m benchmarks.explain_report --arch cnn                     # explain_mnist_cnn.{md,json,png}
  nice -n 10 python -m benchmarks.explain_report --arch mlp                     # explain_mnist_mlp.{md,json,png}
  nice -n 10 python -m benchmarks.explain_report --dataset cifar10 --arch cnn   # explain_cifar10_cnn.{md,json,png}

Every model is trained by the example trainer, ``examples.train.train_and_evaluate`` (its loop, Orbax
checkpoints, exact resume, metrics) on pixels in [0, 1] (``config.normalize = False``), at a constant learning rate,
without augmentation or weight decay: the ReLU nets with "sgd" (momentum 0.9), "bort_sgd" (Bort) and "bort_sgd" +
``config.dbort_lambda`` (DBort); the B-cos nets (MaxOut 2, logit bias, symmetric padding) with "adamw" (no decay:
Adam) on the authors' binary cross-entropy (``config.loss = "bcos_bce"``). The architectures (registered models;
how they read the grids of the pointing game) are in ``benchmarks/explain_models.py``. Data:
``$BORT_DATA_DIR/{mnist,cifar10}.npz`` (default ``../shared/data`` from the repository root; its CIFAR-10 copy is
JPEG-compressed). Everything else is measured by ``examples.explain_protocol``; the claims checked at the end are
in ``benchmarks/explain_acceptance.py``.

Resumable: each (kind, seed) is a trainer workdir ``--cache-dir/<dataset>_<arch>/<kind>_seed<k>/`` (default
``runs/explain_report``): an interrupted run continues from its last checkpoint, a finished one is read back
without training, and its evaluation is cached beside it (``explain.json``). A rerun with the same options rebuilds
the report from them; a workdir trained with other settings is trained again from the start (``--fresh``:
everything).
"""

import argparse
import json
import pathlib
import shutil
import time

from flax import nnx
import jax
import numpy as np

from benchmarks import explain_acceptance
from benchmarks import explain_models as models
from benchmarks import explain_tables
from benchmarks import paths
from examples import explain_protocol
from examples import metrics_io
from examples import train
from examples.configs import default

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


def run_config(kind: str, seed: int, args):
  """The trainer config of one (kind, seed) of the report."""
  config = default.get_config()
  config.model = models.model_name(args.arch, kind)
  config.model_kwargs = models.model_kwargs(args.arch, kind, args.widths, args.strides, args.image_shape)
  config.use_bias = False
  config.dataset, config.num_classes, config.train_limit = args.dataset, 10, args.train_size
  config.normalize = False
  config.optimizer = {"sgd": "sgd", "bcos": "adamw"}.get(kind, "bort_sgd")
  config.learning_rate = args.bcos_lr if kind == "bcos" else args.lr
  config.lr_schedule, config.weight_decay, config.momentum = "constant", 0.0, 0.9
  config.gamma = args.gamma
  config.adaptive_alpha = args.alpha == "adaptive"
  config.alpha = 1.0 if config.adaptive_alpha else args.alpha
  # The classifier kernel is left free (rule scale 0): only the feature layers need to be invertible, and a
  # unit-norm head would cap the logit scale.
  config.bort_rules = ((models.head_kernel_path(args.arch, args.widths), args.head_gamma_scale),)
  config.dbort_lambda = args.dbort_lam if kind == "dbort" else 0.0
  config.dbort_beta = args.dbort_beta
  config.loss = "bcos_bce" if kind == "bcos" else "cross_entropy"
  config.batch_size, config.num_epochs, config.seed = args.batch_size, args.epochs, seed
  config.checkpoint_every_steps, config.keep_checkpoints = 0, 1     # a checkpoint at each epoch end, as before
  config.progress_bar = False
  return config


# Config fields that do not change what a run trains: a workdir saved with other values is still resumed.
_NOT_TRAINING = ("data_dir", "stop_after_steps", "checkpoint_every_steps", "keep_checkpoints", "progress_bar",
                 "eval_batch_size", "multi_host", "explain_baseline")


def _differing(stored: dict, wanted: dict, ignore=()) -> list[str]:
  """Keys whose values differ between a stored JSON dict and ``wanted`` (compared as JSON: tuples as lists)."""
  wanted = json.loads(json.dumps(wanted))
  return sorted(k for k in set(stored) | set(wanted) if k not in ignore and stored.get(k) != wanted.get(k))


def _changed_fields(config, workdir: pathlib.Path) -> list[str]:
  """Fields in which ``config`` differs from the one ``workdir`` was trained with (none: no run there yet)."""
  saved = workdir / "config.json"
  return _differing(json.loads(saved.read_text()), config.to_dict(), _NOT_TRAINING) if saved.exists() else []


def train_run(config, workdir: pathlib.Path, data_dir: str, fresh: bool = False):
  """Trains ``config`` in ``workdir`` with the example trainer, or reads a finished run back; returns (state,
  trainer results, seconds its epochs took).

  A workdir trained with other settings (or any, with ``fresh``) is cleared first, so that the trainer does not
  resume a checkpoint of another protocol.
  """
  changed = _changed_fields(config, workdir)
  if changed or (fresh and workdir.exists()):
    print(f"  {workdir.name}: {'trained with other options (' + ', '.join(changed) + ')' if changed else '--fresh'}"
          f"; training from the start", flush=True)
    shutil.rmtree(workdir)
  done = workdir / "results.json"
  if done.exists() and json.loads(done.read_text())["status"] == "completed":
    print(f"  {workdir.name}: trained (cached in {workdir})", flush=True)
  elif (workdir / "checkpoints").exists():
    print(f"  {workdir.name}: continuing from its last checkpoint", flush=True)
  state, results = train.train_and_evaluate(config, str(workdir), resume=True, data_dir=data_dir)
  if results["status"] != "completed":
    raise RuntimeError(f"{workdir}: training {results['status']}: {results.get('diverged', {}).get('message', '')}")
  seconds = metrics_io.MetricsLog(str(workdir / "metrics.jsonl")).training_seconds()
  return state, results, seconds


def protocol(config: dict) -> dict:
  return {k: v for k, v in config.items() if k not in _NOT_PROTOCOL}


def cached_result(workdir: pathlib.Path, wanted: dict) -> dict | None:
  """The evaluation saved in ``workdir/explain.json`` under the protocol ``wanted``, else None."""
  path = workdir / "explain.json"
  if not path.exists():
    return None
  stored = json.loads(path.read_text())
  changed = _differing(stored["protocol"], wanted)
  if changed:
    print(f"  {workdir.name}: evaluated with other options ({', '.join(changed)}); evaluating again", flush=True)
    return None
  return stored["result"]


def save_result(workdir: pathlib.Path, wanted: dict, result: dict) -> None:
  """``result`` (NaN kept: the tables read it) beside the trained run, replaced atomically."""
  path = workdir / "explain.json"
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
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data-dir", default=paths.default_data_dir())
  parser.add_argument("--out", default=str(paths.REPO / "benchmarks/results"))
  parser.add_argument("--cache-dir", default=str(paths.REPO / "runs/explain_report"),
                      help="the trainer's workdir of every run (resume); <cache-dir>/<dataset>_<arch>/<kind>_seed<k>/")
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
      train_config, workdir = run_config(kind, seed, args), run_dir / f"{kind}_seed{seed}"
      state, _, seconds = train_run(train_config, workdir, args.data_dir, args.fresh)
      model = models.explained_net(train_config, state.params)
      fns = fns_by_family.setdefault(family, models.model_fns(args.arch, kind, model, args.image_shape))
      metrics = cached_result(workdir, wanted)
      if metrics is not None:
        print(f"  {kind} seed {seed}: cached ({run_dir.name}/{workdir.name}/explain.json)", flush=True)
      else:
        eval_start = time.time()
        metrics = explain_protocol.evaluate(fns, nnx.state(model), x_test, y_test, x_train[:2000], y_train[:2000],
                                            num_grids=args.num_grids, num_eval=args.num_eval, num_big=args.num_big,
                                            ig_steps=args.ig_steps, channel_mean=channel_mean, smooth=args.smooth,
                                            epsilons=tuple(args.boundary_epsilons), cw_epsilon=args.cw_epsilon)
        metrics["train_seconds"] = seconds
        metrics["eval_seconds"] = time.time() - eval_start
        save_result(workdir, wanted, metrics)
        print(f"  {kind} seed {seed}: accuracy {metrics['accuracy']:.4f}, evaluated in "
              f"{metrics['eval_seconds']:.0f}s ({time.time() - start:.0f}s total)", flush=True)
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
