"""LeNet-5 on MNIST (60k/10k): SGD vs Bort-SGD, AdamW vs Bort-AdamW, and DBort.

    python -m examples.main --config examples/configs/mnist_lenet.py:bort_adamw --workdir runs/lenet \\
        --data-dir DIR   # DIR/mnist.npz, or $BORT_DATA_DIR

The argument after ":" picks a recipe (default "bort_sgd"). Learning rates, weight decays, gamma, alpha
and mode are what `benchmarks/gamma_sweep.py` selected (3-epoch budget, chosen on a held-out validation
split, then 3 seeds on the test split). Their test accuracy, PSNR and gap against the baselines are in
`benchmarks/results/gamma_sweep_mnist_lenet.md` ("Selected settings") and docs/gamma.md; they
are not copied here, so that a rerun has one place to update.

- sgd / adamw: the tuned baselines (lr x wd grid).
- bort_sgd / bort_adamw: the largest validation reconstruction PSNR (fitted scale, last feature layer) whose
  validation accuracy stays within one binomial standard error of the baseline's: l1-full, alpha = 1, for
  both. The settings with the best validation accuracy instead (l2-full, adaptive alpha; the "Bort, best val.
  accuracy" rows of that file) are `--config.bort_mode=l2-full --config.adaptive_alpha=True --config.gamma=...`.
- dbort_sgd: bort_sgd plus -lambda * mean(y^2)^beta per layer (lambda = 1e-3, beta = 0.1; not swept).

These configs train 10 epochs, the sweep 3: the correction acts on every step, so a longer run ends closer
to orthogonal at the same gamma. AdamW's correction is not Adam-scaled (BortA), hence its larger gamma.
"""

from examples.configs import default


def make_recipes(sgd: dict, adamw: dict, bort_sgd: dict, bort_adamw: dict) -> dict[str, dict]:
  """The five recipes from the tuned baselines' fields and each family's Bort fields (gamma, mode, alpha)."""
  return {
      "sgd": dict(optimizer="sgd", **sgd),
      "bort_sgd": dict(optimizer="bort_sgd", **sgd, **bort_sgd),
      "dbort_sgd": dict(optimizer="bort_sgd", dbort_lambda=1e-3, dbort_beta=0.1, **sgd, **bort_sgd),
      "adamw": dict(optimizer="adamw", **adamw),
      "bort_adamw": dict(optimizer="bort_adamw", **adamw, **bort_adamw),
  }


def bort_fields(gamma: float, mode: str, alpha: str) -> dict:
  """A recipe's Bort fields; ``alpha`` "adaptive" or a number ("1"), as the γ sweep's records write it."""
  if alpha == "adaptive":
    return dict(gamma=gamma, bort_mode=mode, alpha=1.0, adaptive_alpha=True)
  try:
    value = float(alpha)
  except ValueError:
    raise ValueError(f"alpha {alpha!r} is not accepted; accepted values: 'adaptive' or a number") from None
  return dict(gamma=gamma, bort_mode=mode, alpha=value, adaptive_alpha=False)


RECIPES = make_recipes(sgd=dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4),
                       adamw=dict(learning_rate=3e-3, weight_decay=1e-4),
                       bort_sgd=bort_fields(0.03, "l1-full", "1"),
                       bort_adamw=bort_fields(0.5, "l1-full", "1"))


def get_config(recipe: str = "bort_sgd"):
  c = default.get_config()
  c.dataset = "mnist"
  c.model = "lenet5"
  c.batch_size = 128
  c.num_epochs = 10
  c.warmup_epochs = 0.5
  c.checkpoint_every_steps = 1000
  return default.apply_recipe(c, RECIPES, recipe)
