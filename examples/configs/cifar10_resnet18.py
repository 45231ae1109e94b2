"""ResNet-18 (CIFAR stem) on CIFAR-10, 200 epochs: the usual SGD recipe and AdamW, each with Bort.

    python -m examples.main --config examples/configs/cifar10_resnet18.py:bort_sgd --workdir runs/r18 \\
        --data-dir DIR   # DIR/cifar10.npz, or $BORT_DATA_DIR; or TFDS "cifar10" online

Standard recipe (He et al., 2016 augmentation; cosine decay): SGD lr 0.1, momentum 0.9, weight decay
5e-4, batch 128, pad-4 crop + flip. Meant for an accelerator (bf16 compute on by default); the
argument after ":" picks a recipe (default "bort_sgd").
"""

from examples.configs import default

RECIPES = {
    "sgd": dict(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4),
    "bort_sgd": dict(optimizer="bort_sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                     gamma=1e-3),
    "adamw": dict(optimizer="adamw", learning_rate=1e-3, weight_decay=5e-2),
    "bort_adamw": dict(optimizer="bort_adamw", learning_rate=1e-3, weight_decay=5e-2, gamma=1.0),
}


def get_config(recipe: str = "bort_sgd"):
  c = default.cifar10(default.get_config(), "resnet18", num_epochs=200, half_precision=True,
                      checkpoint_every_steps=2000)
  return default.apply_recipe(c, RECIPES, recipe)
