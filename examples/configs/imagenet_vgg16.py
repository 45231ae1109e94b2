"""VGG-16-BN on ImageNet (TFDS "imagenet2012", 224x224) with the 4096-4096 classifier, 90 epochs.

Simonyan & Zisserman (2015) style SGD: lr 0.01 per 256 images (0.04 at batch 1024), momentum 0.9,
weight decay 5e-4, cosine decay after 5 warmup epochs, label smoothing 0.1, bf16 compute.
Pick a recipe after ":".
"""

from examples.configs import default

RECIPES = {
    "sgd": dict(optimizer="sgd", learning_rate=0.04, momentum=0.9, weight_decay=5e-4),
    "bort_sgd": dict(optimizer="bort_sgd", learning_rate=0.04, momentum=0.9, weight_decay=5e-4,
                     gamma=1e-4),
    "adamw": dict(optimizer="adamw", learning_rate=1e-3, weight_decay=5e-2),
    "bort_adamw": dict(optimizer="bort_adamw", learning_rate=1e-3, weight_decay=5e-2, gamma=0.04),
}


def get_config(recipe: str = "bort_sgd"):
  c = default.imagenet(default.get_config(), "vgg16", num_epochs=90)
  c.model_kwargs.image_size = 224
  c.model_kwargs.fc_width = 4096
  return default.apply_recipe(c, RECIPES, recipe)
