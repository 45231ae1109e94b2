"""Every ImageNet config of the Bort paper's Fig. 1b builds at full shape and trains two steps.

For VGG-16, ResNet-50 (SGD, AdamW, LAMB), DeiT-S and Swin-S: the config's Bort recipe at 224 px, batch 2 of
synthetic uint8 images, built and stepped by `examples/train.py` (`create_model`, `create_train_state`,
`make_train_step`) with views from `bort_jax.nnx_views(model)`, as a training run does. Printed per config:
the `bort_jax.describe` summary (constrained kernels, their matrix views by shape, where each view came from,
any guessed view), the two losses, and the FLOPs of one train step as written (XLA's `cost_analysis()` of the
lowered step, before backend optimisation, so the same count on every backend and no compile of the baseline)
for the Bort recipe and its baseline recipe: their ratio is Bort's overhead per step at this batch; the difference does
not grow with the batch, so it is also given in images (the baseline step's FLOPs per image, which count its
optimizer update too): the overhead at a per-device batch b is that number over b. Checks shape and plumbing
only: no data, no accuracy.

Run from the repository root (CPU is enough; full shape takes minutes, mostly compilation):
  python -m benchmarks.build_imagenet_configs [--config swin_s ...] [--width-scale 0.0625] [--image-size 64]
      [--min-depth] [--json PATH] [--verbose]
`--width-scale` multiplies every layer width (channels, embedding dims), `--image-size` sets the input side
(Swin then takes the largest window ≤ 7 that tiles every stage), `--min-depth` keeps one block per stage;
tests/examples/test_build_check.py runs every config so reduced. At reduced sizes the overhead is not the
full model's: the correction's cost grows with width³, the convolutions' with width² × pixels.
"""

import argparse
import collections
import importlib
import json
import time
import warnings

import jax
import numpy as np

import bort_jax
from examples import optimizers
from examples import train

# name: (config module, Bort recipe, its baseline recipe)
CHECKS = {
    "vgg16": ("imagenet_vgg16", "bort_sgd", "sgd"),
    "resnet50_sgd": ("imagenet_resnet50", "bort_sgd", "sgd"),
    "resnet50_adamw": ("imagenet_resnet50", "bort_adamw", "adamw"),
    "resnet50_lamb": ("imagenet_resnet50", "bort_lamb", "lamb"),
    "deit_s": ("imagenet_deit_s", "bort_adamw", "adamw"),
    "swin_s": ("imagenet_swin_s", "bort_adamw", "adamw"),
}


def _scaled(width: float, multiple: int = 1) -> int:
  return max(multiple, int(round(width / multiple)) * multiple)


# Model kwargs at width scale s; attention widths stay multiples of the head counts.
WIDTHS = {
    "vgg16": lambda s: dict(widths=tuple(_scaled(w * s) for w in (64, 128, 256, 512, 512)),
                            fc_width=_scaled(4096 * s)),
    "resnet50": lambda s: dict(widths=tuple(_scaled(w * s) for w in (64, 128, 256, 512))),
    "deit_s": lambda s: dict(dim=_scaled(384 * s, 6)),
    "swin_s": lambda s: dict(embed_dim=_scaled(96 * s, 3)),
}


# Fewest blocks that keep each architecture's block kinds (Swin: a shifted-window block), for tests.
MIN_DEPTHS = {
    "vgg16": {},  # VGG-16's 13 convs are its definition
    "resnet50": dict(stage_sizes=(1, 1, 1, 1)),
    "deit_s": dict(depth=1),
    "swin_s": dict(depths=(2, 1, 1, 1)),
}
# Models whose parameters or windows depend on the input side.
SIDED = ("vgg16", "deit_s", "swin_s")


def swin_window(image_size: int, patch_size: int = 4, stages: int = 4, largest: int = 7) -> int:
  """The largest window ≤ ``largest`` that tiles every stage's side (or covers it whole)."""
  sides = [image_size // patch_size // 2 ** i for i in range(stages)]
  return next(w for w in range(largest, 0, -1) if all(s <= w or s % w == 0 for s in sides))


def make_config(module: str, recipe: str, width_scale: float, image_size: int, batch_size: int,
                min_depth: bool = False):
  """The config of ``module:recipe`` at batch ``batch_size``, no warmup (the steps move the weights)."""
  config = importlib.import_module(f"examples.configs.{module}").get_config(recipe)
  config.update(dict(batch_size=batch_size, warmup_epochs=0.0, image_size=image_size, progress_bar=False))
  if width_scale != 1.0:
    config.model_kwargs.update(WIDTHS[config.model](width_scale))
  if min_depth:
    config.model_kwargs.update(MIN_DEPTHS[config.model])
  if config.model in SIDED:
    config.model_kwargs.image_size = image_size
  if config.model.startswith("swin"):
    config.model_kwargs.window_size = swin_window(image_size)
  train.validate(config)
  return config


def view_summary(rows) -> tuple[dict, str]:
  """Counts and a text summary of `bort_jax.describe` rows: constrained kernels grouped by matrix view."""
  constrained = [r for r in rows if r[5].startswith("constrained")]
  guessed = [r for r in constrained if "view guessed" in r[5]]
  source = lambda r: "nnx_views" if r[6].startswith("views rule") else r[6]
  groups = collections.Counter((r[2], r[3], source(r)) for r in constrained)
  counts = dict(kernels=len(constrained), views=len(groups), guessed=len(guessed),
                sources=dict(collections.Counter(source(r) for r in constrained)))
  width = max(len(m) for m, _, _ in groups)
  lines = [f"  {n:4d} × {m.ljust(width)}  {side} [{src}]" for (m, side, src), n in
           sorted(groups.items(), key=lambda item: -item[1])]
  lines += [f"  guessed: {r[0]} {r[1]}: {r[5]}" for r in guessed]
  return counts, "\n".join(lines)


def _flops(lowered) -> float:
  """FLOPs of a lowered step from XLA's HLO cost analysis: no compile needed, the same count for both recipes."""
  cost = lowered.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def check(name: str, *, width_scale: float = 1.0, image_size: int = 224, batch_size: int = 2, steps: int = 2,
          min_depth: bool = False, verbose: bool = False) -> dict:
  """Builds config ``name`` (a key of CHECKS), trains ``steps`` steps; prints and returns what it measured."""
  module, recipe, baseline = CHECKS[name]
  configs = {r: make_config(module, r, width_scale, image_size, batch_size, min_depth) for r in (baseline, recipe)}
  config = configs[recipe]
  start = time.time()
  model = train.create_model(config, config.num_classes)
  views = bort_jax.nnx_views(model)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
           "label": rng.integers(0, config.num_classes, (batch_size,), dtype=np.int32)}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", bort_jax.ViewGuessWarning)
    flops = {}
    # The baseline first, and only counted: the Bort recipe's steps are the ones run (and compiled).
    for r in (baseline, recipe):
      tx, _ = optimizers.create_optimizer(configs[r], steps_per_epoch=steps, views=views)
      state, graphs = train.create_train_state(model, tx)
      lowered = train.make_train_step(graphs, tx, configs[r], steps_per_epoch=steps).lower(state, batch)
      flops[r] = _flops(lowered)
    step = lowered.compile()
    rows = bort_jax.describe(state.params, mode=config.bort_mode, rules=optimizers.bort_rules(config), views=views)
    losses = []
    for _ in range(steps):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"] / metrics["count"]))
  guess_warnings = [str(w.message) for w in caught if issubclass(w.category, bort_jax.ViewGuessWarning)]
  counts, summary = view_summary(rows)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  result = dict(name=name, config=f"{module}:{recipe}", baseline=baseline, params=num_params, losses=losses,
                flops=flops[recipe], baseline_flops=flops[baseline], overhead=flops[recipe] / flops[baseline] - 1,
                images=(flops[recipe] - flops[baseline]) / (flops[baseline] / batch_size),
                guess_warnings=len(guess_warnings), seconds=time.time() - start, **counts)
  print(f"== {name}: {module}:{recipe} vs :{baseline}, {image_size} px, width x{width_scale:g}, batch {batch_size}")
  print(f"{num_params / 1e6:.2f}M params; {counts['kernels']} kernels constrained through {counts['views']} "
        f"distinct views; view sources {counts['sources']}; guessed {counts['guessed']}, "
        f"ViewGuessWarnings {len(guess_warnings)}")
  print(summary)
  if verbose:
    print(rows)
  print(f"losses {', '.join(f'{v:.4f}' for v in losses)}; FLOPs/step {baseline} {flops[baseline]:.4g}, {recipe} "
        f"{flops[recipe]:.4g}: Bort overhead {100 * result['overhead']:+.2f}% = {result['images']:.3g} images' "
        f"forward + backward ({result['seconds']:.0f} s)",
        flush=True)
  return result


def table(results) -> str:
  lines = ["| config | params | constrained kernels | distinct views | guessed | losses | Bort FLOP overhead / step "
           "| Bort FLOPs in images |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r['config']} (vs {r['baseline']}) | {r['params'] / 1e6:.2f}M | {r['kernels']} | {r['views']} | "
                 f"{r['guessed']} | {', '.join(f'{v:.3f}' for v in r['losses'])} | {100 * r['overhead']:+.2f}% | "
                 f"{r['images']:.3g} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", nargs="+", choices=list(CHECKS), default=list(CHECKS))
  parser.add_argument("--width-scale", type=float, default=1.0)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch-size", type=int, default=2)
  parser.add_argument("--min-depth", action="store_true",
                      help="one block per stage (Swin: 2 in the first, to keep a shifted block), for tests")
  parser.add_argument("--json", help="also write the results here")
  parser.add_argument("--verbose", action="store_true", help="print the full describe() table of every config")
  args = parser.parse_args(argv)
  results = [check(name, width_scale=args.width_scale, image_size=args.image_size, batch_size=args.batch_size,
                   min_depth=args.min_depth, verbose=args.verbose) for name in args.config]
  print(table(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == "__main__":
  main()
