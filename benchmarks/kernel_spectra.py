"""How far training moved each constrained kernel: its singular values at init and at a run's last checkpoint.

    python -m benchmarks.kernel_spectra runs/cifar10_table/vit_tiny_adamw_seed0 \\
        runs/cifar10_table/vit_tiny_bort_adamw_seed0 [--out benchmarks/results/FILE.md]

For each trainer run folder (a `benchmarks.table` run, or any `examples.main` workdir with checkpoints) and each
kernel Bort constrains there (`nnx_views` of the run's model, its config's `bort_rules`): the smallest, median and
largest singular value of its matrix view (fan_in × out, stacked layers together) at init — the run's config and
seed rebuilt — and at its last checkpoint, and the relative distance ‖W − W₀‖_F / ‖W₀‖_F. Bort with α = 1 drives
every singular value of the constrained side to 1; a baseline whose spectra stay at init's trains near its random
initialization, so the two runs differ by more than the constraint's pull during training. Reads the checkpoints only.
"""

import argparse
import pathlib
import shlex
import sys

import jax
import numpy as np

from benchmarks import cifar10_explain
import bort_jax
from bort_jax._src import plan as plan_lib
from examples import optimizers
from examples import train


def singular_values(kernel, view) -> np.ndarray:
  """Singular values of a kernel's matrix view, stacked layers pooled."""
  return np.linalg.svd(np.asarray(bort_jax.to_matrix(kernel, view)), compute_uv=False).ravel()


def run_rows(workdir: pathlib.Path) -> list[dict]:
  """One row per constrained kernel of the run in `workdir`: spectra at init and at the last checkpoint."""
  config = cifar10_explain.read_config(workdir)
  init = cifar10_explain.initial_state(config)
  final = cifar10_explain.restore_latest(workdir, config, init)
  views = bort_jax.nnx_views(train.create_model(config, config.num_classes))
  kernels, _ = plan_lib.plan_kernels(init.params, rules=optimizers.bort_rules(config), views=views)
  init_leaves, final_leaves = jax.tree.leaves(init.params), jax.tree.leaves(final.params)
  rows = []
  for kernel in kernels:
    w0, w = np.asarray(init_leaves[kernel.index]), np.asarray(final_leaves[kernel.index])
    rows.append(dict(run=workdir.name, step=int(final.step), path=kernel.path,
                     init=singular_values(w0, kernel.view), final=singular_values(w, kernel.view),
                     moved=float(np.linalg.norm(w - w0) / np.linalg.norm(w0))))
  return rows


def _summary(values: np.ndarray) -> str:
  return f"{values.min():.2f} / {np.median(values):.2f} / {values.max():.2f}"


def table(rows: list[dict]) -> list[str]:
  lines = ["| run (step) | kernel | singular values at init: min / median / max | at the checkpoint | "
           "‖W − W₀‖ / ‖W₀‖ |", "|---|---|---|---|---|"]
  lines += [f"| {r['run']} ({r['step']}) | {r['path']} | {_summary(r['init'])} | {_summary(r['final'])} | "
            f"{r['moved']:.3f} |" for r in rows]
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="Trainer run folders (with config.json and checkpoints/).")
  parser.add_argument("--out", help="Also write the table to this Markdown file.")
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  lines = table([row for run in args.runs for row in run_rows(pathlib.Path(run))])
  print("\n".join(lines))
  if args.out:
    header = ["# Singular values of the constrained kernels, at init and at each run's last checkpoint", "",
              f"`python -m benchmarks.kernel_spectra {shlex.join(argv)}` (the step of each run's checkpoint is "
              "beside its name; `benchmarks/kernel_spectra.py` says what the columns are).", ""]
    pathlib.Path(args.out).write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
  main()
