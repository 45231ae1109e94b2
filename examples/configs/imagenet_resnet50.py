"""ResNet-50 on ImageNet (TFDS "imagenet2012", 224x224), 90 epochs, data parallel over all devices.

Goyal et al. (2017) recipe: SGD momentum 0.9, lr 0.1 per 256 images (0.4 at batch 1024), 5 warmup
epochs, cosine decay, weight decay 1e-4, label smoothing 0.1, random-resized crop + flip, bf16 compute.
Bort-SGD uses the reference implementation's default gamma 1e-4. Pick a recipe after ":".
"""

from examples.configs import default

RECIPES = {
    "sgd": dict(optimizer="sgd", learning_rate=0.4, momentum=0.9, weight_decay=1e-4),
    "bort_sgd": dict(optimizer="bort_sgd", learning_rate=0.4, momentum=0.9, weight_decay=1e-4,
                     gamma=1e-4),
    "adamw": dict(optimizer="adamw", learning_rate=2e-3, weight_decay=5e-2),
    "bort_adamw": dict(optimizer="bort_adamw", learning_rate=2e-3, weight_decay=5e-2, gamma=0.2),
}


def get_config(recipe: str = "bort_sgd"):
  c = default.imagenet(default.get_config(), "resnet50", num_epochs=90)
  return default.apply_recipe(c, RECIPES, recipe)
