"""Accuracy tables: each (model, optimizer recipe) of a dataset trained with several seeds by the example trainer.

    nice -n 10 python -m benchmarks.table --dataset mnist --out benchmarks/results/mnist_table.md
    nice -n 10 python -m benchmarks.table --dataset fashion_mnist --out benchmarks/results/fashion_mnist_table.md
    nice -n 10 python -m benchmarks.table --dataset cifar10 --out benchmarks/results/cifar10_table.md \\
        --models resnet20 --optimizers sgd bort_sgd --seeds 0 1 2 --merge --budget-hours 16 \\
        --planned resnet20/sgd resnet20/bort_sgd vit_tiny/adamw vit_tiny/bort_adamw

(`python -m benchmarks.mnist_table` and `python -m benchmarks.cifar_table` are the same script.) Per run: final
test accuracy, orthogonality gap (RMS of the off-diagonal of the Gram of each constrained kernel, normalised
by its mean diagonal, averaged over layers; `bort_jax.orthogonality_gap`), reconstruction PSNR of 1,000 test
images from the last feature stage (fitted scale, `benchmarks.stage_reconstruction.reconstruction_metrics`), training
seconds (the trainer's per-epoch times, `MetricsLog.training_seconds`: an epoch cut and resumed counts its timed
steps scaled to the whole epoch; the time between processes does not count) and the time of one jitted train
step of the recipe, measured after training in the same process; Bort recipes also time their baseline's step
on the same batch, interleaved, which gives Bort's per-step overhead under the same load.

Runs are resumable: each trains in `--workdir/<model>_<optimizer>_seed<seed>` (default `runs/<out stem>/`)
with the trainer's checkpoints, a killed run continues from its last checkpoint, and a finished run's record
(`record.json` there) is read instead of retraining; seeds of a cell that a command does not list keep their
records (from `--merge` / `--merge-from`, merged seed by seed) if trained with the same epochs and settings. The
table (and its .json) is rewritten after every finished run; cells with fewer seeds than asked are marked "in
progress", and so is the table until every row of `--planned` (kept in the .json) has `--planned-seeds` seeds.
Data: `--data-dir` or $BORT_DATA_DIR (`<dataset>.npz`), default `../shared/data` beside the repository.
"""

import argparse
import ast
import json
import pathlib
import shlex
import sys
import time

import jax
import ml_collections
import numpy as np

from benchmarks import paths
from benchmarks import stage_reconstruction
from benchmarks import table_report
import bort_jax
from examples import data as data_lib
from examples import metrics_io
from examples import optimizers
from examples import train
from examples.configs import cifar10_resnet20
from examples.configs import cifar10_vit_tiny
from examples.configs import fashion_mnist_lenet
from examples.configs import fashion_mnist_mlp
from examples.configs import mnist_lenet
from examples.configs import mnist_mlp

# Each dataset's models and the config modules holding their recipes (mnist_small reads the MNIST ones).
CONFIGS = {
    "mnist": {"mlp": mnist_mlp, "lenet5": mnist_lenet},
    "mnist_small": {"mlp": mnist_mlp, "lenet5": mnist_lenet},
    "fashion_mnist": {"mlp": fashion_mnist_mlp, "lenet5": fashion_mnist_lenet},
    "cifar10": {"resnet20": cifar10_resnet20, "vit_tiny": cifar10_vit_tiny},
}
MODELS = tuple(dict.fromkeys(m for models in CONFIGS.values() for m in models))
OPTIMIZERS = ("sgd", "bort_sgd", "adamw", "bort_adamw")  # the recipes every table config has; also dbort_sgd
RECIPES = (*OPTIMIZERS, "dbort_sgd")
DATA_NOTES = {"cifar10": "the shared `cifar10.npz` is a JPEG-compressed copy of CIFAR-10: numbers for checking "
                         "the pipeline, not for publication"}
TIMED_STEPS = 10


def make_config(dataset: str, model: str, optimizer: str, epochs: int, args) -> ml_collections.ConfigDict:
  config = CONFIGS[dataset][model].get_config(optimizer)
  config.update(dict(dataset=dataset, model=model, num_epochs=epochs, batch_size=args.batch_size,
                     eval_batch_size=1000, progress_bar=False, train_limit=args.train_limit,
                     num_classes=10,  # all --dataset choices have 10
                     warmup_epochs=min(config.warmup_epochs or 0.5, epochs / 4)))
  for override in args.set:
    scope, field, value = _override(override)
    if scope in (None, model, optimizer):
      config[field] = _parse_value(value, config[field])
  train.validate(config)
  return config


def _override(text: str) -> tuple[str | None, str, str]:
  """(scope or None, field, value) of a --set FIELD=VALUE / SCOPE.FIELD=VALUE."""
  if "=" not in text:
    raise ValueError(f"--set {text!r} is not accepted; accepted values: FIELD=VALUE, OPTIMIZER.FIELD=VALUE or "
                     "MODEL.FIELD=VALUE.")
  key, value = text.split("=", 1)
  scope, field = key.split(".", 1) if "." in key else (None, key)
  return scope, field, value


def _parse_value(text: str, current):
  """A --set value as a Python literal (numbers, bools, tuples), else the string; ints widen to float."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  return float(value) if isinstance(current, float) and isinstance(value, int) else value


def step_seconds(configs: list[ml_collections.ConfigDict], batch: dict, steps: int) -> list[float]:
  """Median seconds of one jitted train step of each config on `batch`, the configs' steps interleaved so
  that they share the machine's load; compilation and a first step are excluded."""
  runners = []
  for config in configs:
    model = train.create_model(config, 10)
    tx, _ = optimizers.create_optimizer(config, 100, views=bort_jax.nnx_views(model))
    state, graphs = train.create_train_state(model, tx)
    step = train.make_train_step(graphs, tx, config, 100)
    state = jax.block_until_ready(step(state, batch)[0])
    runners.append([step, state, []])
  for _ in range(steps):
    for runner in runners:
      start = time.perf_counter()
      runner[1] = jax.block_until_ready(runner[0](runner[1], batch)[0])
      runner[2].append(time.perf_counter() - start)
  return [float(np.median(times)) for _, _, times in runners]


def run_seed(dataset: str, model: str, optimizer: str, epochs: int, seed: int, args) -> dict:
  """Trains (or resumes, or reads) one seed in its persistent workdir and returns its record."""
  config = make_config(dataset, model, optimizer, epochs, args)
  config.seed = seed
  workdir = pathlib.Path(args.workdir) / f"{model}_{optimizer}_seed{seed}"
  saved = workdir / "config.json"
  # explain_baseline only tells examples.main what else to train and draw; runs saved before it existed lack it.
  trained = lambda fields: {k: v for k, v in fields.items() if k != "explain_baseline"}
  if saved.exists() and trained(json.loads(saved.read_text())) != trained(json.loads(json.dumps(config.to_dict()))):
    raise SystemExit(f"{workdir} holds a run of another config (epochs, recipe or --set changed); move it away "
                     "or pass another --workdir.")
  if (workdir / "record.json").exists():
    return json.loads((workdir / "record.json").read_text())
  state, results = train.train_and_evaluate(config, str(workdir), resume=True, data_dir=str(args.data_dir))
  if results["status"] == "diverged":  # no accuracy to tabulate: say so and stop rather than record a fake number
    raise SystemExit(f"{workdir.name}: {results['diverged']['message']}")
  train_records, test_records = train.load_splits(config, str(args.data_dir))
  train_images, train_labels = data_lib.as_arrays(train_records)
  test_images, _ = data_lib.as_arrays(test_records)
  psnr = stage_reconstruction.reconstruction_metrics(config, state, test_images)
  batch = {"image": train_images[:config.batch_size], "label": train_labels[:config.batch_size]}
  baseline = table_report.baseline_recipe(optimizer)
  timed = [config] + ([make_config(dataset, model, baseline, epochs, args)] if baseline else [])
  times = step_seconds(timed, batch, args.timed_steps)
  record = {"seed": seed, "test_accuracy": results["test_accuracy"], "gap": results["mean_offdiag_gap"],
            "psnr": list(psnr.values())[-1]["psnr_fitted"],  # the last feature stage
            "psnr_floor": stage_reconstruction.zero_image_psnr(config, test_images),
            "seconds": metrics_io.MetricsLog(str(workdir / "metrics.jsonl")).training_seconds(),
            "epochs": epochs, "settings": _settings(config), "step_seconds": times[0]}
  if baseline:
    record["baseline_step_seconds"] = times[1]
  metrics_io.write_json(str(workdir / "record.json"), record)
  return record


def psnr_floors(args, results: dict, cache: dict) -> list[tuple[str, float]]:
  """(row label, PSNR of x̂ = 0 on its PSNR images) for every record with a PSNR (`table_report.floor_text`).

  A record keeps the floor of its own inputs (`run_seed`); one from before that takes its row's config under this
  command's --set. `cache` keeps the test split for the command's later writes: loading it is the cost.
  """
  floors = []
  for (model, optimizer), runs in results.items():
    for run in (r for r in runs if "psnr" in r):
      if "psnr_floor" not in run and (model, optimizer) not in cache:
        if "images" not in cache:
          cache["images"] = data_lib.load_arrays(args.dataset, "test", args.data_dir)[0]
        config = make_config(args.dataset, model, optimizer, args.epochs_of[model], args)
        cache[(model, optimizer)] = stage_reconstruction.zero_image_psnr(config, cache["images"])
      floors.append((f"{model} {optimizer}", run.get("psnr_floor", cache.get((model, optimizer)))))
  return floors


def _settings(config) -> str:
  fields = ["learning_rate", "weight_decay"]
  fields += ["momentum"] if "sgd" in config.optimizer else ["b1", "b2", "eps"]
  bort = optimizers.OPTIMIZERS[config.optimizer].bort
  fields += ["gamma", "alpha", "bort_mode"] if bort else []
  fields += ["bort_rules"] if bort and config.bort_rules else []
  fields += ["dbort_lambda", "dbort_beta"] if config.dbort_lambda > 0 else []
  shown = {f: config[f] for f in fields}
  if "alpha" in shown and config.adaptive_alpha:
    shown["alpha"] = "adaptive"
  return ", ".join(f"{f}={v}" for f, v in shown.items())


def _load_previous(path: str, epochs: dict) -> tuple[dict, list[str], dict | None]:
  """Cells, commands and plan of an earlier invocation (for --merge); runs lacking "epochs" take `epochs`. None
  before the first invocation wrote the file, so that one command line serves every run of a table."""
  saved_path = pathlib.Path(path).with_suffix(".json")
  if not saved_path.exists():
    print(f"--merge: {saved_path} does not exist yet; starting the table.")
    return {}, [], None
  saved = json.loads(saved_path.read_text())
  if "runs" not in saved:  # first format: the runs mapping alone
    saved = {"commands": [], "runs": saved}
  results = {}
  for key, runs in saved["runs"].items():
    model, optimizer = _cell(key)
    results[(model, optimizer)] = [dict(r, epochs=r.get("epochs", epochs.get(model))) for r in runs]
  planned = saved.get("planned")
  return results, saved["commands"], planned and dict(planned, cells=[_cell(c) for c in planned["cells"]])


def _cell(text: str) -> tuple[str, str]:
  return tuple(text.split("/"))


def current_commands(commands: list[str], parser: argparse.ArgumentParser, results: dict) -> list[str]:
  """The ``commands`` that made a record still in ``results``. Each recorded (cell, seed) is credited to the command
  covering the most recorded ones (on a tie, the one asking for more, then the later), so the order in which
  parallel tables were merged does not matter; merge-only commands are dropped, commands this version cannot parse
  kept; the last always stays."""
  recorded = {(m, o, r["seed"]) for (m, o), runs in results.items() for r in runs}
  asked = []
  for command in commands:
    try:
      args = resolve(parser.parse_args(shlex.split(command)))
      asked.append({(m, o, s) for m in args.models for o in args.optimizers for s in args.seeds})
    except (ValueError, SystemExit):   # written by an older version of this script: its cells are unknown, kept
      asked.append(None)
  covered = [cells and cells & recorded for cells in asked]
  kept, credited = set(), set()
  for i in sorted(range(len(commands)), key=lambda i: (-len(covered[i] or ()), -len(asked[i] or ()), -i)):
    if covered[i] is None or i == len(commands) - 1 or covered[i] - credited:
      kept.add(i)
      credited |= covered[i] or set()
  return [command for i, command in enumerate(commands) if i in kept]


def merge_runs(results: dict, other: dict, source: str):
  """Adds the records of `other` (the cells of the table `source`) to `results`, seed by seed. A seed recorded
  differently in both (another recipe, epoch count or result) is a ValueError naming it."""
  identity = lambda r: {k: r[k] for k in ("epochs", "settings", "test_accuracy")}
  for cell, runs in other.items():
    by_seed = {r["seed"]: r for r in results.get(cell, [])}
    for run in runs:
      kept = by_seed.setdefault(run["seed"], run)
      if identity(kept) != identity(run):
        raise ValueError(f"--merge-from {source}: {'/'.join(cell)} seed {run['seed']} is recorded differently in "
                         f"two merged tables ({identity(kept)} and {identity(run)}); merge only one of them.")
    results[cell] = sorted(by_seed.values(), key=lambda r: r["seed"])


def _parser(dataset: str = "mnist") -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default=dataset, choices=tuple(CONFIGS))
  parser.add_argument("--out", required=True, help="Markdown file to write (a .json of runs beside it).")
  parser.add_argument("--data-dir", default=paths.default_data_dir())
  parser.add_argument("--workdir", help="Folder of the per-run trainer folders (default runs/<out stem>).")
  parser.add_argument("--seeds", type=int, nargs="+",
                      help="Default 0 1 2; with `--models` and no value (merge only): the plan's, else those run.")
  parser.add_argument("--epochs", type=int, help="Epochs of every model (default: each config's num_epochs).")
  parser.add_argument("--mlp-epochs", type=int, help="Epochs of the MLP (default: --epochs).")
  parser.add_argument("--lenet-epochs", type=int, help="Epochs of LeNet-5 (default: --epochs).")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--train-limit", type=int, default=0, help="Keep the first N training images.")
  parser.add_argument("--models", nargs="*", choices=MODELS, help="Default: the dataset's models.")
  parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=RECIPES)
  parser.add_argument("--timed-steps", type=int, default=TIMED_STEPS, help="Train steps timed per recipe.")
  parser.add_argument("--budget-hours", type=float, help="The CPU-hour budget to state beside the numbers.")
  parser.add_argument("--merge", action="store_true",
                      help="Keep the cells of an earlier run in --out (its .json) that this run does not redo.")
  parser.add_argument("--merge-from", nargs="+", default=[], metavar="JSON",
                      help="Also keep the cells (and commands) of these .json files of other runs, e.g. runs "
                           "of other cells made in parallel; `--models` with no value only merges.")
  parser.add_argument("--planned", nargs="+", metavar="MODEL/OPTIMIZER",
                      help="The rows this table is to have (kept in its .json for later --merge / --merge-from): it "
                           "is marked \"in progress\" and lists those not yet run until each has --planned-seeds "
                           "seeds.")
  parser.add_argument("--planned-seeds", type=int,
                      help="Seeds each --planned row is to have (default 2; alone: changes the kept plan's).")
  parser.add_argument("--set", nargs="*", default=[],
                      help="Config overrides FIELD=VALUE, OPTIMIZER.FIELD=VALUE or MODEL.FIELD=VALUE with Python "
                           "literal values, e.g. bort_sgd.gamma=0.1 \"mlp.bort_rules=(('layers/2/kernel', 0.0),)\".")
  return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
  """Fills the defaults that depend on --dataset: models, per-model epochs and the workdir."""
  if args.models is None:
    args.models = list(CONFIGS[args.dataset])
  unknown = [m for m in args.models if m not in CONFIGS[args.dataset]]
  if unknown:
    raise ValueError(f"--models {unknown} are not accepted for --dataset {args.dataset}; accepted values: "
                     f"{', '.join(CONFIGS[args.dataset])}.")
  cells = [_cell(c) for c in args.planned or ()]
  wrong = [c for c, cell in zip(args.planned or (), cells)
           if len(cell) != 2 or cell[0] not in CONFIGS[args.dataset] or cell[1] not in RECIPES]
  if wrong or (args.planned_seeds is not None and args.planned_seeds < 1):
    raise ValueError(f"--planned {wrong} / --planned-seeds {args.planned_seeds} are not accepted; accepted values: "
                     f"MODEL/OPTIMIZER with MODEL in {', '.join(CONFIGS[args.dataset])} and OPTIMIZER in "
                     f"{', '.join(RECIPES)}, and at least 1 seed.")
  args.planned = {"cells": cells, "seeds": args.planned_seeds or 2}
  for override in args.set:
    scope = _override(override)[0]
    if scope is None:
      continue
    if scope not in (*CONFIGS[args.dataset], *RECIPES):
      raise ValueError(f"--set {override!r}: scope {scope!r} is not accepted; accepted values: "
                       f"{', '.join((*CONFIGS[args.dataset], *RECIPES))}.")
    if args.models and not any(scope in (m, o) for m in args.models for o in args.optimizers):
      raise ValueError(f"--set {override!r} applies to no cell this command runs (--models {' '.join(args.models)}"
                       f" --optimizers {' '.join(args.optimizers)}).")
  if args.seeds is None and args.models:  # a merge-only command (--models with no value) takes them in main
    args.seeds = [0, 1, 2]
  flags = {"mlp": args.mlp_epochs, "lenet5": args.lenet_epochs}
  args.epochs_of = {m: flags.get(m) or args.epochs or module.get_config().num_epochs
                    for m, module in CONFIGS[args.dataset].items()}
  args.workdir = args.workdir or str(paths.REPO / "runs" / pathlib.Path(args.out).stem)
  return args


def main(dataset: str = "mnist"):
  parser = _parser(dataset)
  args = resolve(parser.parse_args())
  command = shlex.join(sys.argv[1:])
  started = time.time()
  results, commands, saved_plan = _load_previous(args.out, args.epochs_of) if args.merge else ({}, [], None)
  plans = [saved_plan]
  for path in args.merge_from:
    other_results, other_commands, other_plan = _load_previous(path, args.epochs_of)
    merge_runs(results, other_results, path)
    commands += [c for c in other_commands if c not in commands]
    plans.append(other_plan)
  plans = [plan for plan in plans if plan]
  if plans and not args.planned["cells"]:  # the merged tables' plans hold until a command gives another
    args.planned = {"cells": list(dict.fromkeys(c for plan in plans for c in plan["cells"])),
                    "seeds": args.planned_seeds or max(plan["seeds"] for plan in plans)}
  if args.planned_seeds and not args.planned["cells"]:
    raise ValueError(f"--planned-seeds {args.planned_seeds} has no rows to apply to: give --planned, or --merge / "
                     "--merge-from a table that has a plan.")
  commands.append(command)
  floors = {}

  def write():
    seeds = sorted(set(args.seeds) | {r["seed"] for runs in results.values() for r in runs})
    table_report.write_table(args.out, args.dataset, results, current_commands(commands, parser, results), args,
                             seeds, started, CONFIGS[args.dataset], DATA_NOTES.get(args.dataset),
                             psnr_floors(args, results, floors))

  if not args.models:
    if args.seeds is None:  # a merge names no seeds: the plan's count, else the seeds the merged runs have
      run = sorted({r["seed"] for runs in results.values() for r in runs})
      args.seeds = list(range(args.planned["seeds"])) if args.planned["cells"] else run
    write()
  cells = [(m, o) for m in args.models for o in args.optimizers]
  for model, optimizer in cells:  # the seeds run are read back from their records or trained; others are kept
    epochs = args.epochs_of[model]
    recipe = (epochs, _settings(make_config(args.dataset, model, optimizer, epochs, args)))
    kept, dropped = [], []
    for r in results.get((model, optimizer), []):
      if r["seed"] not in args.seeds:
        (kept if (r["epochs"], r["settings"]) == recipe else dropped).append(r)
    results[(model, optimizer)] = kept
    if dropped:
      print(f"{model} {optimizer}: seeds {[r['seed'] for r in dropped]} dropped from the table: recorded with other "
            f"epochs or settings than this command's ({recipe[0]} epochs, {recipe[1]}).", flush=True)
  for model, optimizer in cells:
    for seed in args.seeds:
      record = run_seed(args.dataset, model, optimizer, args.epochs_of[model], seed, args)
      results[(model, optimizer)] = sorted(results[(model, optimizer)] + [record], key=lambda r: r["seed"])
      print(f"{args.dataset} {model} {optimizer} seed {seed}: acc {record['test_accuracy']:.4f} gap "
            f"{record['gap']:.4f} PSNR {record['psnr']:.2f} dB ({record['seconds']:.0f}s)", flush=True)
      write()


if __name__ == "__main__":
  main()
