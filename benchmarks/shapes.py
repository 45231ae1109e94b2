"""Parameter shapes of ResNet-18, ResNet-50 and ViT-B/16 in Flax layout.

The trees mirror what Flax builds for these models (ImageNet heads, 1000 classes):
conv kernels are (kh, kw, in, out), dense kernels (in, out), attention projections
are `LinearGeneral` kernels like `flax.nnx.MultiHeadAttention`: query/key/value
(embed, heads, head_dim) and out (heads, head_dim, embed). Leaves are
`jax.ShapeDtypeStruct`, so a shape set costs no memory until `init_params`.
Path names end in ".../kernel" for weight matrices and ".../scale" / ".../bias"
for the 1-D norm and bias vectors that Bort must leave untouched. `shape_views` gives the `views=` rules of
each tree: the layer kinds are known here, so no matrix view is a guess.

References: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
"""

import math

import jax
import jax.numpy as jnp

import bort_jax

# (blocks per stage, bottleneck?) for the torchvision / Flax-examples ResNets.
_RESNET_STAGES = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}

# Matrix views of the layer kinds in these trees (dense kernels are 2-D, which needs no rule).
CONV_VIEW = bort_jax.KernelView(in_axes=(0, 1, 2), out_axes=(3,))  # nn.Conv (kh, kw, in, out)
QKV_VIEW = bort_jax.KernelView(in_axes=(0,), out_axes=(1, 2))  # LinearGeneral (embed, heads, head_dim)
ATTENTION_OUT_VIEW = bort_jax.KernelView(in_axes=(0, 1), out_axes=(2,))  # LinearGeneral (heads, head_dim, embed)


def _leaf(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _conv_bn(kh, c_in, c_out):
  """A bias-free conv followed by BatchNorm (scale, bias)."""
  return {"kernel": _leaf(kh, kh, c_in, c_out)}, {"scale": _leaf(c_out), "bias": _leaf(c_out)}


def resnet_shapes(depth, num_classes=1000):
  """Parameter shapes of ResNet-`depth` (18 or 50), Flax layout."""
  if depth not in _RESNET_STAGES:
    raise ValueError(f"depth must be one of {sorted(_RESNET_STAGES)}, got {depth!r}")
  blocks, bottleneck = _RESNET_STAGES[depth]
  expansion = 4 if bottleneck else 1
  tree = {}
  tree["conv1"], tree["bn1"] = _conv_bn(7, 3, 64)
  c_in = 64
  for stage, n_blocks in enumerate(blocks):
    width = 64 * 2**stage
    c_out = width * expansion
    layer = {}
    for b in range(n_blocks):
      block = {}
      if bottleneck:
        block["conv1"], block["bn1"] = _conv_bn(1, c_in, width)
        block["conv2"], block["bn2"] = _conv_bn(3, width, width)
        block["conv3"], block["bn3"] = _conv_bn(1, width, c_out)
      else:
        block["conv1"], block["bn1"] = _conv_bn(3, c_in, width)
        block["conv2"], block["bn2"] = _conv_bn(3, width, width)
      if b == 0 and (stage > 0 or c_in != c_out):
        conv, bn = _conv_bn(1, c_in, c_out)
        block["downsample"] = {"conv": conv, "bn": bn}
      layer[f"block{b}"] = block
      c_in = c_out
    tree[f"layer{stage + 1}"] = layer
  tree["fc"] = {"kernel": _leaf(c_in, num_classes), "bias": _leaf(num_classes)}
  return tree


def vit_shapes(patch=16, embed=768, depth=12, heads=12, mlp=3072, image=224, num_classes=1000):
  """Parameter shapes of a ViT (default ViT-B/16 at 224px), Flax layout."""
  if embed % heads:
    raise ValueError(f"embed must be divisible by heads, got embed={embed}, heads={heads}")
  head_dim = embed // heads
  tokens = (image // patch) ** 2 + 1

  def norm():
    return {"scale": _leaf(embed), "bias": _leaf(embed)}

  def encoder_block():
    attention = {name: {"kernel": _leaf(embed, heads, head_dim), "bias": _leaf(heads, head_dim)}
                 for name in ("query", "key", "value")}
    attention["out"] = {"kernel": _leaf(heads, head_dim, embed), "bias": _leaf(embed)}
    return {
        "norm1": norm(),
        "attention": attention,
        "norm2": norm(),
        "mlp": {"fc1": {"kernel": _leaf(embed, mlp), "bias": _leaf(mlp)},
                "fc2": {"kernel": _leaf(mlp, embed), "bias": _leaf(embed)}},
    }

  return {
      "patch_embed": {"kernel": _leaf(patch, patch, 3, embed), "bias": _leaf(embed)},
      "cls_token": _leaf(1, 1, embed),
      "pos_embedding": _leaf(1, tokens, embed),
      "encoder": {f"block{i}": encoder_block() for i in range(depth)},
      "encoder_norm": norm(),
      "head": {"kernel": _leaf(embed, num_classes), "bias": _leaf(num_classes)},
  }


def resnet_views():
  """`views=` rules of `resnet_shapes` trees: every conv is an nn.Conv."""
  return [(r"(.*/)?conv\d*/kernel", CONV_VIEW)]


def vit_views():
  """`views=` rules of `vit_shapes` trees: a conv patch embedding and LinearGeneral attention projections."""
  return [("patch_embed/kernel", CONV_VIEW), (r".*/attention/(query|key|value)/kernel", QKV_VIEW),
          (r".*/attention/out/kernel", ATTENTION_OUT_VIEW)]


SHAPE_SETS = {
    "resnet18": lambda: resnet_shapes(18),
    "resnet50": lambda: resnet_shapes(50),
    "vit_b16": vit_shapes,
}


def shape_set(name):
  """The shape tree registered under `name` (one of `SHAPE_SETS`)."""
  if name not in SHAPE_SETS:
    raise ValueError(f"name must be one of {sorted(SHAPE_SETS)}, got {name!r}")
  return SHAPE_SETS[name]()


VIEWS = {"resnet18": resnet_views, "resnet50": resnet_views, "vit_b16": vit_views}


def shape_views(name):
  """The `views=` rules of the shape tree registered under `name` (one of `SHAPE_SETS`)."""
  if name not in VIEWS:
    raise ValueError(f"name must be one of {sorted(VIEWS)}, got {name!r}")
  return VIEWS[name]()


def param_count(shapes):
  """Total number of scalars in a shape tree."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def init_params(shapes, key, dtype=jnp.float32):
  """Random parameters for `shapes`: leaf ~ N(0, 1/prod(shape[:-1])), 1-D leaves N(0, 1).

  Scaling by the leading dimensions keeps conv/dense columns near unit norm, the
  regime the correction sees in training; the values only matter for timing.
  """
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, leaf in zip(keys, leaves):
    fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 1
    out.append((jax.random.normal(k, leaf.shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype))
  return jax.tree.unflatten(treedef, out)
