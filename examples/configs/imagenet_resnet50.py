"""ResNet-50 on ImageNet (TFDS "imagenet2012", 224x224), 90 epochs, data parallel over all devices.

Goyal et al. (2017) recipe: SGD momentum 0.9, lr 0.1 per 256 images (0.4 at batch 1024), 5 warmup
epochs, cosine decay, weight decay 1e-4, label smoothing 0.1, random-resized crop + flip, bf16 compute.
Bort-SGD uses the reference implementation's default gamma 1e-4. Pick a recipe after ":".

"lamb" follows the A2 recipe of Wightman et al. ("ResNet strikes back", 2021; 79.8% top-1, the Bort paper's
R50-LAMB row is 79.72%): LAMB lr 5e-3 at batch 2048, weight decay 0.02, 300 epochs, cosine after 5 warmup
epochs. Not reproduced: their BCE loss (cross-entropy with label smoothing 0.1 here), RandAugment, Mixup/CutMix,
and no decay on biases and norms (decayed like every other leaf here, as in the SGD/AdamW recipes).
Bort-LAMB's gamma follows default.py's rule: 1e-4 * 0.4 / ((1 - 0.9) * 5e-3) = 0.08.
"""

from examples.configs import default

_LAMB = dict(learning_rate=5e-3, weight_decay=0.02, eps=1e-6, batch_size=2048, num_epochs=300)

RECIPES = {
    "sgd": dict(optimizer="sgd", learning_rate=0.4, momentum=0.9, weight_decay=1e-4),
    "bort_sgd": dict(optimizer="bort_sgd", learning_rate=0.4, momentum=0.9, weight_decay=1e-4,
                     gamma=1e-4),
    "adamw": dict(optimizer="adamw", learning_rate=2e-3, weight_decay=5e-2),
    "bort_adamw": dict(optimizer="bort_adamw", learning_rate=2e-3, weight_decay=5e-2, gamma=0.2),
    "lamb": dict(optimizer="lamb", **_LAMB),
    "bort_lamb": dict(optimizer="bort_lamb", **_LAMB, gamma=0.08),
}


def get_config(recipe: str = "bort_sgd"):
  c = default.imagenet(default.get_config(), "resnet50", num_epochs=90)
  return default.apply_recipe(c, RECIPES, recipe)
