"""Swin-S (window 7, drop path 0.3) on ImageNet (TFDS "imagenet2012", 224x224), 300 epochs.

Liu et al. (ICCV 2021) ImageNet-1k recipe: AdamW lr 1e-3 at batch 1024, weight decay 0.05, 20 warmup epochs,
cosine decay, label smoothing 0.1, gradient clipping at global norm 5, bf16 compute. Not reproduced here: the
warmup from 1e-6 and decay to 1e-5 (0 here), RandAugment, Mixup/CutMix and random erasing (the pipeline only
has random-resized crop + flip), and no decay on biases, norms and the relative position bias tables
(decayed here, as in the other configs). Bort-AdamW's gamma 0.4 is imagenet_deit_s.py's (same lr 1e-3, hence
the same default.py rule: 1e-4 * 0.4 / ((1 - 0.9) * 1e-3)). Pick a recipe after ":" (default "bort_adamw").
"""

from examples.configs import default

_ADAMW = dict(learning_rate=1e-3, weight_decay=0.05)

RECIPES = {
    "adamw": dict(optimizer="adamw", **_ADAMW),
    "bort_adamw": dict(optimizer="bort_adamw", **_ADAMW, gamma=0.4),
}


def get_config(recipe: str = "bort_adamw"):
  c = default.imagenet(default.get_config(), "swin_s", num_epochs=300)
  c.warmup_epochs = 20.0
  c.grad_clip_norm = 5.0
  return default.apply_recipe(c, RECIPES, recipe)
