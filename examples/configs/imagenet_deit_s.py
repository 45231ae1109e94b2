"""DeiT-S (ViT-S/16, drop path 0.1) on ImageNet (TFDS "imagenet2012", 224x224), 300 epochs.

Touvron et al. (2021) optimisation: AdamW lr 5e-4 per 512 images (1e-3 at batch 1024), weight decay
0.05, 5 warmup epochs, cosine decay, label smoothing 0.1, bf16 compute. Not reproduced here: RandAugment,
Mixup/CutMix, random erasing and repeated augmentation (the pipeline only has random-resized crop +
flip). Pick a recipe after ":" (default "bort_adamw").
"""

from examples.configs import default

RECIPES = {
    "adamw": dict(optimizer="adamw", learning_rate=1e-3, weight_decay=0.05),
    "bort_adamw": dict(optimizer="bort_adamw", learning_rate=1e-3, weight_decay=0.05, gamma=0.4),
    "sgd": dict(optimizer="sgd", learning_rate=0.4, momentum=0.9, weight_decay=1e-4),
    "bort_sgd": dict(optimizer="bort_sgd", learning_rate=0.4, momentum=0.9, weight_decay=1e-4,
                     gamma=1e-4),
}


def get_config(recipe: str = "bort_adamw"):
  c = default.imagenet(default.get_config(), "deit_s", num_epochs=300)
  return default.apply_recipe(c, RECIPES, recipe)
