"""VGG-16 with BatchNorm (Simonyan & Zisserman, 2015, configuration D; BN as in Ioffe & Szegedy, 2015).

Five stages of (2, 2, 3, 3, 3) 3x3 convolutions, each conv followed by BatchNorm and ReLU, each stage
closed by 2x2 max pooling. For 32x32 inputs (CIFAR) the 1x1x512 feature map feeds one linear classifier
(``fc_width=None``); for 224x224 ImageNet the 7x7x512 map feeds two ``fc_width``-wide hidden layers with
dropout, as in the paper. As in the ResNets, convolutions have no bias (BatchNorm follows) and
``use_bias=False`` also removes the BatchNorm shift and the dense biases.
"""

from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from examples.models.resnet import conv_bn_factories

VGG16_STAGES = (2, 2, 3, 3, 3)


class VGG16(nnx.Module):
  """VGG-16-BN; NHWC input with side ``image_size`` (a multiple of 32), logits output."""

  def __init__(
      self,
      num_classes: int,
      *,
      image_size: int = 32,
      widths: Sequence[int] = (64, 128, 256, 512, 512),
      fc_width: int | None = None,
      dropout_rate: float = 0.5,
      in_channels: int = 3,
      use_bias: bool = True,
      dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    if image_size % 32:
      raise ValueError(f"image_size must be a multiple of 32 for VGG16, got {image_size}.")
    if len(widths) != len(VGG16_STAGES):
      raise ValueError(f"widths must have {len(VGG16_STAGES)} entries, got {tuple(widths)}.")
    conv, norm = conv_bn_factories(use_bias, dtype, rngs)
    convs, norms, features = [], [], in_channels
    for size, width in zip(VGG16_STAGES, widths):
      for _ in range(size):
        convs.append(conv(features, width, (3, 3), padding=1))
        norms.append(norm(width))
        features = width
    self.convs, self.norms = nnx.List(convs), nnx.List(norms)
    dense = lambda n_in, n_out: nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=dtype,
                                           param_dtype=jnp.float32, rngs=rngs)
    features *= (image_size // 32) ** 2
    hidden = [] if fc_width is None else [dense(features, fc_width), dense(fc_width, fc_width)]
    self.hidden = nnx.List(hidden)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs) if hidden else None
    self.head = dense(features if fc_width is None else fc_width, num_classes)

  def __call__(self, x: jax.Array) -> jax.Array:
    layer = 0
    for size in VGG16_STAGES:
      for _ in range(size):
        x = nnx.relu(self.norms[layer](self.convs[layer](x)))
        layer += 1
      x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    for fc in self.hidden:
      x = self.dropout(nnx.relu(fc(x)))
    return self.head(x).astype(jnp.float32)
