"""`cifar10_explain.png`: what each stage of the CIFAR-10 table's models keeps of the image (issue 19, item 4).

    nice -n 10 python -m benchmarks.cifar10_explain [--runs runs/cifar10_table] \\
        [--out benchmarks/results/cifar10_explain.png] [--seed 0]

For ResNet-20 (SGD, Bort-SGD) and ViT-Tiny (AdamW, Bort-AdamW), each trained by `benchmarks/cifar_table.py` in
`<runs>/<model>_<optimizer>_seed<seed>/`: the final state, restored from the run's last checkpoint without writing
there, the first test images and their reconstruction x̂ = J(x)ᵀ f(x) from every stage of the model (the Bort
paper's qualitative result), drawn as c·x̂ with c the least-squares scale per image (the model's x̂ has no calibrated
scale) and clipped to [0, 1]. Titles give each stage's fitted-scale PSNR, the mean over the first
`stage_reconstruction.NUM_RECONSTRUCTED` test images (`stage_reconstruction.reconstruction_metrics`, so the last
stage's number is the table's PSNR of that run); `cifar10_explain.md` beside the figure has the numbers. A cell
without a finished run is skipped with the command that trains it (`benchmarks/results/cifar10_plan.md`).
"""

import argparse
import json
import os
import pathlib
import shlex
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import paths
from benchmarks import stage_reconstruction
from benchmarks import table
from benchmarks import table_report
import bort_jax
from bort_jax.explain import reconstruction
from examples import checkpointing
from examples import data as data_lib
from examples import optimizers
from examples import train

DEFAULT_RUNS = paths.REPO / "runs" / "cifar10_table"
CELLS = (("resnet20", "sgd"), ("resnet20", "bort_sgd"), ("vit_tiny", "adamw"), ("vit_tiny", "bort_adamw"))
SHOWN = 4  # test images drawn per run and stage, as a 2 × 2 mosaic
TABLE_COMMAND = ("nice -n 10 python -m benchmarks.cifar_table --out benchmarks/results/cifar10_table.md --merge "
                 "--budget-hours 16 --models {model} --optimizers {optimizers} --seeds {seeds}")


def finished(workdir: pathlib.Path) -> bool:
  """Whether the trainer finished the run in `workdir` (its results.json says "completed")."""
  results = workdir / "results.json"
  return results.exists() and json.loads(results.read_text())["status"] == "completed"


def train_command(model: str, seed: int, runs: pathlib.Path) -> str:
  """The plan's table command that trains `seed` of `model`'s cells (the table keeps the cells' other seeds)."""
  command = TABLE_COMMAND.format(model=model, optimizers=" ".join(o for m, o in CELLS if m == model), seeds=seed)
  return command if runs.resolve() == DEFAULT_RUNS.resolve() else f"{command} --workdir {shlex.quote(str(runs))}"


def initial_state(config: ml_collections.ConfigDict) -> train.TrainState:
  """The state a run of `config` starts from (model and optimizer at its seed), laid out as the trainer builds it
  (`train.train_and_evaluate`): the template checkpoints restore into."""
  model = train.create_model(config, config.num_classes)
  tx, _ = optimizers.create_optimizer(config, 1, views=bort_jax.nnx_views(model))  # the schedule's length is moot
  return train.create_train_state(model, tx)[0]


def read_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was trained with (its config.json)."""
  return ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))


def restore_latest(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                   template: train.TrainState) -> train.TrainState:
  """The state of the run's last checkpoint, laid out like `template` (its `initial_state`); reads only."""
  checkpointer = checkpointing.Checkpointer(str(workdir / "checkpoints"), every_steps=0, keep=config.keep_checkpoints)
  try:
    state = checkpointer.restore_latest(template)
  finally:
    checkpointer.close()
  if state is None:
    raise ValueError(f"{workdir} has no checkpoint in {workdir / 'checkpoints'}: train the run first.")
  return state


def restore_final_state(workdir: pathlib.Path) -> tuple[ml_collections.ConfigDict, train.TrainState]:
  """The config a run was trained with and the state of its last checkpoint; reads only."""
  config = read_config(workdir)
  return config, restore_latest(workdir, config, initial_state(config))


def explain_run(config: ml_collections.ConfigDict, state: train.TrainState, images: np.ndarray):
  """{stage: (c·x̂ of the first `SHOWN` images in [0, 1], mean fitted-scale PSNR)} in forward order."""
  built = stage_reconstruction.feature_reconstruction(config, state)
  psnr = stage_reconstruction.reconstruction_metrics(config, state, images, built)
  params, features_fns, scales_fn, std = built
  mean = jnp.asarray(train.input_normalization(config).mean, jnp.float32)

  @jax.jit
  def fitted_reconstructions(params, x):  # x: normalized images, as in reconstruction_metrics
    pixels = x * std
    shown = {}
    for stage, scale in scales_fn(params).items():
      x_hat = reconstruction.reconstruct(features_fns[stage], params, pixels, scale)
      shown[stage] = jnp.clip(reconstruction.fitted_scale(pixels, x_hat) * x_hat + mean, 0.0, 1.0)
    return shown

  x = train.normalize_images(jnp.asarray(images[:SHOWN]), train.input_normalization(config))
  shown = jax.device_get(fitted_reconstructions(params, x))
  return {stage: (shown[stage], psnr[stage]["psnr_fitted"]) for stage in psnr}


def mosaic(images: np.ndarray, columns: int = 2, gap: int = 2) -> np.ndarray:
  """(N, H, W, C) images tiled row by row, `columns` wide, on a white background with `gap` pixels between them."""
  n, h, w, c = images.shape
  canvas = np.ones((-(-n // columns) * (h + gap) - gap, columns * (w + gap) - gap, c), images.dtype)
  for i, image in enumerate(images):
    row, col = divmod(i, columns)
    canvas[row * (h + gap):row * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = image
  return canvas


def write_figure(path: pathlib.Path, originals: np.ndarray, explained: dict, title: str, caption: str):
  """Rows: runs (label -> {stage: (images, PSNR)}); columns: the originals, then each stage's c·x̂."""
  import matplotlib  # imported here: matplotlib is only in the examples/test extras
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cols = 1 + max(len(stages) for stages in explained.values())
  fig, axes = plt.subplots(len(explained), cols, figsize=(1.5 * cols + 1.0, 1.75 * len(explained) + 0.9),
                           squeeze=False, layout="constrained")
  for row, (label, stages) in zip(axes, explained.items()):
    panels = [("test images", originals)] + [(f"{stage}\n{psnr:.2f} dB", images)
                                             for stage, (images, psnr) in stages.items()]
    for ax in row:
      ax.set_axis_off()
    for ax, (name, images) in zip(row, panels):
      ax.set_axis_on(), ax.set_xticks([]), ax.set_yticks([])
      ax.imshow(mosaic(images))
      ax.set_title(name, fontsize=8)
    row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.supxlabel(caption, fontsize=7)
  fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)
  plt.close(fig)


def write_markdown(path: pathlib.Path, results: dict, accuracy: dict, notes: list[str]):
  """One table per model (its stages as columns): fitted-scale PSNR (dB) per run, with its test accuracy."""
  lines = [f"# CIFAR-10: reconstruction from every stage of the table's models ({path.with_suffix('.png').name})", ""]
  for model in dict.fromkeys(m for m, _ in results):
    stages = list(next(r for (m, _), r in results.items() if m == model))
    lines += [f"| model | optimizer | test accuracy (%) | {' | '.join(stages)} |", "|---" * (len(stages) + 3) + "|"]
    lines += [f"| {m} | {o} | {100 * accuracy[(m, o)]:.2f} | {' | '.join(f'{r[s][1]:.2f}' for s in stages)} |"
              for (m, o), r in results.items() if m == model]
    lines.append("")
  path.write_text("\n".join(lines + [f"- {note}" for note in notes]) + "\n")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default=str(DEFAULT_RUNS), help="The table's workdir (<model>_<optimizer>_seed<k>).")
  parser.add_argument("--out", default=str(paths.REPO / "benchmarks" / "results" / "cifar10_explain.png"))
  parser.add_argument("--seed", type=int, default=0, help="Which seed's runs to draw.")
  parser.add_argument("--data-dir", default=paths.default_data_dir())
  return parser.parse_args(argv)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  runs, out = pathlib.Path(args.runs), pathlib.Path(args.out)
  found, missing = {}, []
  for model, optimizer in CELLS:
    workdir = runs / f"{model}_{optimizer}_seed{args.seed}"
    if finished(workdir):
      found[(model, optimizer)] = workdir
    else:
      missing.append(f"{model} {optimizer}: no finished run in {workdir}; it is trained by: "
                     f"{train_command(model, args.seed, runs)}")
  if not found:
    raise SystemExit(f"no finished CIFAR-10 table run of seed {args.seed} in {runs}; train them first (see "
                     "benchmarks/results/cifar10_plan.md):\n" + "\n".join(missing))
  for line in missing:
    print(line, flush=True)
  results, accuracy, floors, images = {}, {}, [], None
  for (model, optimizer), workdir in found.items():
    config, state = restore_final_state(workdir)
    if images is None:  # every run is scored on the same CIFAR-10 test split
      images = data_lib.as_arrays(train.load_splits(config, args.data_dir)[1])[0]
    results[(model, optimizer)] = explain_run(config, state, images)
    floors.append((f"{model} {optimizer}", stage_reconstruction.zero_image_psnr(config, images)))
    accuracy[(model, optimizer)] = json.loads((workdir / "results.json").read_text())["test_accuracy"]
    print(f"{model} {optimizer}: fitted PSNR (dB) " + ", ".join(
        f"{stage} {psnr:.2f}" for stage, (_, psnr) in results[(model, optimizer)].items()), flush=True)
  count = min(stage_reconstruction.NUM_RECONSTRUCTED, len(images))
  floor = table_report.floor_text(floors)
  explained = {f"{m}\n{o}\nacc {100 * accuracy[(m, o)]:.1f}%": r for (m, o), r in results.items()}
  write_figure(out, images[:SHOWN] / 255.0, explained,
               f"CIFAR-10 test images reconstructed from each stage (seed {args.seed}; the first {SHOWN} test images)",
               f"c·x̂: x̂ = J(x)ᵀ f(x) from the stage, c the least-squares scale per image, clipped to [0, 1]. "
               f"dB: fitted-scale PSNR, mean over the first {count:,} test images; {floor}.\n"
               "features: the last stage (ResNet-20: stage 3's map; ViT-Tiny: the final LayerNorm's tokens).")
  shown_runs = os.path.relpath(runs, paths.REPO) if runs.absolute().is_relative_to(paths.REPO) else runs
  notes = [f"Fitted-scale PSNR (dB) of c·x̂, x̂ = J(x)ᵀ f(x) from each stage "
           "(`stage_reconstruction.reconstruction_metrics`), "
           f"mean over the first {count:,} test images; the floor: {floor} on them (c = 0 is always a choice). "
           "`features` is the last stage (ResNet-20: stage 3's map; ViT-Tiny: the final LayerNorm's tokens after the "
           "last block), whose PSNR is the table's PSNR column.",
           f"Runs: seed {args.seed} in `{shown_runs}`, restored from their last checkpoint "
           "(`benchmarks/cifar_table.py`)."
           + (f" Not drawn (no finished run): {', '.join(m.split(':')[0] for m in missing)}." if missing else ""),
           f"Command: `{' '.join(['python -m benchmarks.cifar10_explain', *map(shlex.quote, argv)])}`.",
           f"Data: {table.DATA_NOTES['cifar10']}."]
  write_markdown(out.with_suffix(".md"), results, accuracy, notes)
  print(f"wrote {out} and {out.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
  main()
