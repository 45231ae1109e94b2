"""Flax NNX models for the examples and the ``create_model`` factory.

All models take NHWC float images and return float32 logits, accept ``use_bias`` (False gives the
bias-free variant used for explainability) and ``dtype`` (compute dtype; parameters stay float32).
Weights are ``kernel`` leaves, learned tokens ``embedding`` leaves, norms ``scale``/``bias``.
"""

import functools

import jax.numpy as jnp
from flax import nnx

from examples.models.resnet import BasicBlock, BottleneckBlock, ResNet
from examples.models.small import LeNet5, MLP
from examples.models.vgg import VGG16
from examples.models.vit import EncoderBlock, ViT

__all__ = ["MLP", "LeNet5", "ResNet", "BasicBlock", "BottleneckBlock", "VGG16", "ViT", "EncoderBlock",
           "MODELS", "create_model"]

MODELS = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic", stem="cifar"),
    "resnet20": functools.partial(ResNet, stage_sizes=(3, 3, 3), block="basic", widths=(16, 32, 64),
                                  stem="cifar"),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck", stem="imagenet"),
    "vgg16": VGG16,
    "deit_s": functools.partial(ViT, patch_size=16, dim=384, depth=12, num_heads=6, drop_path_rate=0.1),
    "vit_b16": functools.partial(ViT, patch_size=16, dim=768, depth=12, num_heads=12, drop_path_rate=0.1),
    # DeiT-Ti width on 4x4 patches of 32x32 images: for tests and CPU smoke runs.
    "vit_tiny": functools.partial(ViT, image_size=32, patch_size=4, dim=192, depth=4, num_heads=3),
}


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, use_bias: bool = True,
                 dtype: jnp.dtype = jnp.float32, **kwargs) -> nnx.Module:
  """Builds model ``name`` (a key of ``MODELS``); ``kwargs`` override the architecture's defaults.

  Example: ``create_model("resnet20", num_classes=10, rngs=nnx.Rngs(0), use_bias=False)``.
  The model starts in training mode (batch statistics, dropout on); call ``model.eval()`` to evaluate.
  """
  if name not in MODELS:
    raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}.")
  return MODELS[name](num_classes=num_classes, rngs=rngs, use_bias=use_bias, dtype=dtype, **kwargs)
