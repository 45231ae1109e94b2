"""Flax NNX models for the examples and the ``create_model`` factory.

All models take NHWC float images and return float32 logits, accept ``use_bias`` (False gives the
bias-free variant used for explainability) and ``dtype`` (compute dtype; parameters stay float32).
Weights are ``kernel`` leaves, learned tokens ``embedding`` leaves, norms ``scale``/``bias``.
"""

from collections.abc import Callable
import functools
from typing import NamedTuple

from flax import nnx
import jax.numpy as jnp

from examples.models.explain import BcosNet
from examples.models.explain import ConvNet
from examples.models.resnet import BasicBlock
from examples.models.resnet import BottleneckBlock
from examples.models.resnet import ResNet
from examples.models.small import MLP
from examples.models.small import LeNet5
from examples.models.swin import Swin
from examples.models.swin import SwinBlock
from examples.models.vgg import VGG16
from examples.models.vit import EncoderBlock
from examples.models.vit import ViT

__all__ = ["MLP", "LeNet5", "ResNet", "BasicBlock", "BottleneckBlock", "VGG16", "ViT", "EncoderBlock",
           "Swin", "SwinBlock",
           "ModelSpec", "MODELS", "create_model"]


class ModelSpec(NamedTuple):
  """A registered model: its constructor and whether it can sow its layer outputs.

  ``sows_outputs``: the constructor accepts ``capture=True`` and the model then sows every layer's output
  (read with ``nnx.capture(model, nnx.Intermediate)``), which the DBort loss term needs.
  """
  factory: Callable[..., nnx.Module]
  sows_outputs: bool = False


MODELS = {
    "mlp": ModelSpec(MLP, sows_outputs=True),
    "lenet5": ModelSpec(LeNet5, sows_outputs=True),
    # The explainability report's nets (with "mlp"): pixels in [0, 1], read whole grids (examples/models/explain.py).
    "explain_cnn": ModelSpec(ConvNet, sows_outputs=True),
    "bcos_mlp": ModelSpec(functools.partial(BcosNet, arch="mlp")),
    "bcos_cnn": ModelSpec(functools.partial(BcosNet, arch="cnn")),
    "resnet18": ModelSpec(functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic", stem="cifar"),
                          sows_outputs=True),
    "resnet20": ModelSpec(functools.partial(ResNet, stage_sizes=(3, 3, 3), block="basic", widths=(16, 32, 64),
                                            stem="cifar"), sows_outputs=True),
    "resnet50": ModelSpec(functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck",
                                            stem="imagenet"), sows_outputs=True),
    "vgg16": ModelSpec(VGG16),
    "deit_s": ModelSpec(functools.partial(ViT, patch_size=16, dim=384, depth=12, num_heads=6,
                                          drop_path_rate=0.1), sows_outputs=True),
    "vit_b16": ModelSpec(functools.partial(ViT, patch_size=16, dim=768, depth=12, num_heads=12,
                                           drop_path_rate=0.1), sows_outputs=True),
    # DeiT-Ti width on 4x4 patches of 32x32 images: for tests and CPU smoke runs.
    "vit_tiny": ModelSpec(functools.partial(ViT, image_size=32, patch_size=4, dim=192, depth=4, num_heads=3),
                          sows_outputs=True),
    "swin_t": ModelSpec(functools.partial(Swin, depths=(2, 2, 6, 2), drop_path_rate=0.2)),
    "swin_s": ModelSpec(functools.partial(Swin, depths=(2, 2, 18, 2), drop_path_rate=0.3)),
}


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, use_bias: bool = True,
                 dtype: jnp.dtype = jnp.float32, **kwargs) -> nnx.Module:
  """Builds model ``name`` (a key of ``MODELS``); ``kwargs`` override the architecture's defaults.

  Example: ``create_model("resnet20", num_classes=10, rngs=nnx.Rngs(0), use_bias=False)``.
  The model starts in training mode (batch statistics, dropout on); call ``model.eval()`` to evaluate.
  """
  if name not in MODELS:
    raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}.")
  return MODELS[name].factory(num_classes=num_classes, rngs=rngs, use_bias=use_bias, dtype=dtype, **kwargs)
