"""LeNet-5 on MNIST (60k/10k): SGD vs Bort-SGD, AdamW vs Bort-AdamW, and DBort.

    python -m examples.main --config examples/configs/mnist_lenet.py:bort_adamw --workdir runs/lenet \\
        --data-dir DIR   # DIR/mnist.npz, or $BORT_DATA_DIR

The argument after ":" picks a recipe (default "bort_sgd"). The Bort variants differ from their baseline
only by the correction: gamma * Delta(M) on every conv/dense kernel, l2-full mode, alpha = 1 (the squared
unit norm of a LeCun-normal initialised kernel). AdamW's correction is not Adam-scaled (BortA), hence
its larger gamma. DBort adds -lambda * mean(y^2)^beta per layer (lambda = 1e-3, beta = 0.1).
"""

from examples.configs import default

RECIPES = {
    "sgd": dict(optimizer="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4),
    "bort_sgd": dict(optimizer="bort_sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                     gamma=1e-2),
    "dbort_sgd": dict(optimizer="bort_sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                      gamma=1e-2, dbort_lambda=1e-3, dbort_beta=0.1),
    "adamw": dict(optimizer="adamw", learning_rate=1e-3, weight_decay=1e-4),
    "bort_adamw": dict(optimizer="bort_adamw", learning_rate=1e-3, weight_decay=1e-4, gamma=5.0),
}


def get_config(recipe: str = "bort_sgd"):
  c = default.get_config()
  c.dataset = "mnist"
  c.model = "lenet5"
  c.batch_size = 128
  c.num_epochs = 10
  c.warmup_epochs = 0.5
  c.checkpoint_every_steps = 1000
  return default.apply_recipe(c, RECIPES, recipe)
