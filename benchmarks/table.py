"""MNIST / Fashion-MNIST table: MLP and LeNet-5, SGD vs Bort-SGD and AdamW vs Bort-AdamW, several seeds.

    nice -n 10 python -m benchmarks.mnist_table --dataset mnist --out benchmarks/results/mnist_table.md
    nice -n 10 python -m benchmarks.mnist_table --dataset fashion_mnist \\
        --out benchmarks/results/fashion_mnist_table.md

Each cell is mean ± std over seeds of the final test accuracy and of the final orthogonality gap (RMS of
the off-diagonal of the Gram of each constrained kernel, normalised by its mean diagonal, averaged over
layers; `bort_jax.orthogonality_gap`). Every run is the example trainer, `examples.train.train_and_evaluate`,
in a temporary workdir; epochs default to the configs' `num_epochs`. Data: `--data-dir` or $BORT_DATA_DIR
(`<dataset>.npz`), default `../shared/data` beside the repository. The table is rewritten after every
finished (model, optimizer) cell, so a cut-short run still reports.
"""

import argparse
import ast
import json
import os
import pathlib
import shlex
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

from examples import optimizers
from examples import train
from examples.configs import fashion_mnist_lenet
from examples.configs import fashion_mnist_mlp
from examples.configs import mnist_lenet
from examples.configs import mnist_mlp

# Each (dataset, model)'s recipes, chosen by benchmarks/gamma_sweep.py (mnist_small reads the MNIST ones).
CONFIGS = {"mlp": mnist_mlp, "lenet5": mnist_lenet}
FASHION_CONFIGS = {"mlp": fashion_mnist_mlp, "lenet5": fashion_mnist_lenet}
OPTIMIZERS = tuple(optimizers.OPTIMIZERS)
MODELS = tuple(CONFIGS)


def config_module(dataset: str, model: str):
  return (FASHION_CONFIGS if dataset == "fashion_mnist" else CONFIGS)[model]


def make_config(dataset: str, model: str, optimizer: str, epochs: int, args) -> ml_collections.ConfigDict:
  config = config_module(dataset, model).get_config(optimizer)
  config.update(dict(dataset=dataset, model=model, num_epochs=epochs, batch_size=args.batch_size,
                     eval_batch_size=1000, warmup_epochs=min(0.5, epochs / 4), progress_bar=False,
                     train_limit=args.train_limit, num_classes=10))  # all --dataset choices have 10
  for override in args.set:
    key, value = override.split("=", 1)
    scope, field = key.split(".", 1) if "." in key else (None, key)
    if scope in (None, model, optimizer):
      config[field] = _parse_value(value, config[field])
  train.validate(config)
  return config


def _parse_value(text: str, current):
  """A --set value as a Python literal (numbers, bools, tuples), else the string; ints widen to float."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  return float(value) if isinstance(current, float) and isinstance(value, int) else value


def run_cell(dataset: str, model: str, optimizer: str, epochs: int, seeds, args):
  """Trains one (model, optimizer) for every seed; returns per-seed accuracy, gap and seconds."""
  config = make_config(dataset, model, optimizer, epochs, args)
  runs = []
  for seed in seeds:
    start = time.time()
    config.seed = seed
    with tempfile.TemporaryDirectory(prefix="mnist_table_") as workdir:  # only the numbers are kept
      _, results = train.train_and_evaluate(config, workdir, data_dir=str(args.data_dir))
    runs.append({"seed": seed, "test_accuracy": results["test_accuracy"], "gap": results["mean_offdiag_gap"],
                 "seconds": time.time() - start, "epochs": epochs, "settings": _settings(config)})
    print(f"{dataset} {model} {optimizer} seed {seed}: acc {results['test_accuracy']:.4f} "
          f"gap {runs[-1]['gap']:.4f} ({runs[-1]['seconds']:.0f}s)", flush=True)
  return runs


def _settings(config) -> str:
  fields = ["learning_rate", "weight_decay"]
  fields += ["momentum"] if "sgd" in config.optimizer else ["b1", "b2", "eps"]
  bort = optimizers.OPTIMIZERS[config.optimizer].bort
  fields += ["gamma", "alpha", "bort_mode"] if bort else []
  fields += ["bort_rules"] if bort and config.bort_rules else []
  shown = {f: config[f] for f in fields}
  if "alpha" in shown and config.adaptive_alpha:
    shown["alpha"] = "adaptive"
  return ", ".join(f"{f}={v}" for f, v in shown.items())


def _mean_std(values, scale=1.0, digits=2):
  """mean ± std (ddof 1) with ``digits`` decimals; in scientific notation where the mean would print as 0."""
  values = scale * np.asarray(values)
  mean, std = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
  form = ".1e" if 0 < abs(mean) < 0.5 * 10.0 ** -digits else f".{digits}f"
  return f"{mean:{form}} ± {std:{form}}"


def write_table(path: str, dataset: str, results: dict, commands: list[str], args, seeds,
                started: float):
  lines = [f"# {dataset}: test accuracy and orthogonality gap, mean ± std over seeds {list(seeds)}", "",
           "| model | optimizer | epochs | test accuracy (%) | orthogonality gap | per-seed accuracy (%) "
           "| settings |", "|---|---|---|---|---|---|---|"]
  for (model, optimizer), runs in results.items():
    accs = [r["test_accuracy"] for r in runs]
    lines.append(f"| {model} | {optimizer} | {runs[0]['epochs']} | {_mean_std(accs, 100)} | "
                 f"{_mean_std([r['gap'] for r in runs], digits=4)} | "
                 f"{', '.join(f'{100 * a:.2f}' for a in accs)} | {runs[0]['settings']} |")
  recipe_files = [f"`examples/configs/{config_module(dataset, m).__name__.rsplit('.', 1)[-1]}.py`" for m in MODELS]
  lines += ["", "## Exactly what was run", "",
            *(f"- Command: `python -m benchmarks.mnist_table {c}`" for c in commands),
            f"- Data: `{dataset}.npz`, full train split{f' (first {args.train_limit})' if args.train_limit else ''}"
            f", full test split; no augmentation; batch size {args.batch_size}; "
            "cosine learning-rate decay to 0 after a linear warmup of min(0.5, epochs/4) epochs.",
            "- Models: `mlp` (784-256-256-10, ReLU) and `lenet5`, with biases, float32; epochs as in the "
            "table.",
            f"- Optimizers: the recipes of {' and '.join(recipe_files)} (settings column, after "
            f"overrides {args.set or 'none'}); SGD has coupled weight decay (PyTorch), AdamW decoupled; "
            "Bort corrects every conv/dense kernel (not biases)."]
  lines += ["- Orthogonality gap: `bort_jax.orthogonality_gap(params)` `offdiag` statistic (RMS of the "
            "off-diagonal of G/mean diag G, G the Gram of the constrained side of each kernel), averaged "
            "over the constrained layers, after the last epoch.",
            f"- Machine: 2 shared CPU cores (load from other jobs), jax {jax.__version__}; "
            + (f"wall time {(time.time() - started) / 60:.1f} min for the cells of the last command; "
               if args.models else "the last command only merged cells (no training); ")
            + "seconds per run in the .json beside this file (cells of one command ran in parallel with "
            "other jobs, so they are not comparable across rows)."]
  pathlib.Path(path).write_text("\n".join(lines) + "\n")
  with open(pathlib.Path(path).with_suffix(".json"), "w") as f:
    json.dump({"commands": commands,
               "runs": {f"{m}/{o}": runs for (m, o), runs in results.items()}}, f, indent=1)


def _load_previous(path: str, epochs: dict) -> tuple[dict, list[str]]:
  """Cells and commands of an earlier invocation (for --merge); runs lacking "epochs" take `epochs`."""
  saved = json.loads(pathlib.Path(path).with_suffix(".json").read_text())
  if "runs" not in saved:  # first format: the runs mapping alone
    saved = {"commands": [], "runs": saved}
  results = {}
  for key, runs in saved["runs"].items():
    model, optimizer = key.split("/")
    results[(model, optimizer)] = [dict(r, epochs=r.get("epochs", epochs[model])) for r in runs]
  return results, saved["commands"]


def current_commands(commands: list[str], parser: argparse.ArgumentParser) -> list[str]:
  """``commands`` without those whose every (model, optimizer) cell a later command ran again, and without
  merge-only ones (their merged commands are listed); the last command always stays."""
  cells = []
  for command in commands:
    try:
      args = parser.parse_args(shlex.split(command))
      cells.append({(m, o) for m in args.models for o in args.optimizers})
    except (ValueError, SystemExit):   # written by an older version of this script: its cells are unknown, kept
      cells.append({("?", command)})
  kept = []
  for i, command in enumerate(commands):
    redone = set().union(*cells[i + 1:])
    if i == len(commands) - 1 or (cells[i] and not cells[i] <= redone):
      kept.append(command)
  return kept


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist", "mnist_small"))
  parser.add_argument("--out", required=True, help="Markdown file to write (a .json of runs beside it).")
  parser.add_argument("--data-dir", default=os.environ.get(
      "BORT_DATA_DIR", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"))
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  for model, flag in (("mlp", "--mlp-epochs"), ("lenet5", "--lenet-epochs")):
    default = CONFIGS[model].get_config().num_epochs
    parser.add_argument(flag, type=int, default=default, help=f"Default: the config's num_epochs, {default}.")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--train-limit", type=int, default=0, help="Keep the first N training images.")
  parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
  parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
  parser.add_argument("--merge", action="store_true",
                      help="Keep the cells of an earlier run in --out (its .json) that this run does not redo.")
  parser.add_argument("--merge-from", nargs="+", default=[], metavar="JSON",
                      help="Also keep the cells (and commands) of these .json files of other runs, e.g. runs "
                           "of other cells made in parallel; `--models` with no value only merges.")
  parser.add_argument("--set", nargs="*", default=[],
                      help="Config overrides FIELD=VALUE, OPTIMIZER.FIELD=VALUE or MODEL.FIELD=VALUE with Python "
                           "literal values, e.g. bort_sgd.gamma=0.1 \"mlp.bort_rules=(('layers/2/kernel', 0.0),)\".")
  return parser


def main():
  parser = _parser()
  args = parser.parse_args()
  command = shlex.join(sys.argv[1:])
  started = time.time()
  epochs = {"mlp": args.mlp_epochs, "lenet5": args.lenet_epochs}
  results, commands = _load_previous(args.out, epochs) if args.merge else ({}, [])
  for path in args.merge_from:
    other_results, other_commands = _load_previous(path, epochs)
    results.update(other_results)
    commands += [c for c in other_commands if c not in commands]
  commands = current_commands(commands + [command], parser)
  if not args.models:
    write_table(args.out, args.dataset, results, commands, args, args.seeds, started)
  for model in args.models:
    for optimizer in args.optimizers:
      results[(model, optimizer)] = run_cell(args.dataset, model, optimizer, epochs[model], args.seeds, args)
      write_table(args.out, args.dataset, results, commands, args, args.seeds, started)


if __name__ == "__main__":
  main()
