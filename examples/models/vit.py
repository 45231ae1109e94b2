"""Vision Transformer (Dosovitskiy et al., 2021) in the DeiT configurations (Touvron et al., 2021).

Pre-norm encoder: x += DropPath(MHA(LN(x))); x += DropPath(MLP(LN(x))), MLP = dim -> 4 dim (GELU) -> dim,
a learned class token and learned position embeddings, classification from the final LN of the class token.
DeiT-S = patch 16, dim 384, depth 12, 6 heads; ViT-B/16 = dim 768, depth 12, 12 heads. DropPath (stochastic
depth, Huang et al., 2016) grows linearly from 0 to ``drop_path_rate`` over the blocks.

Learned tokens are leaves called ``embedding`` (``cls/embedding``, ``position/embedding``) so Bort's default
mask, which picks ``kernel`` leaves, leaves them alone. ``use_bias=False`` removes every dense/attention bias
and the LayerNorm shifts.

``capture=True`` sows the output of every kernel's layer as its ``preact`` (``examples.models.capture``):
the patch embedding, the attention's query/key/value/out projections, both MLP layers and the head. The block
therefore applies the attention's projections itself (the same sub-modules and parameters as
``nnx.MultiHeadAttention.__call__``, without attention dropout, which these models do not use).
``features(x)`` is the final LayerNorm of every token, the representation reconstruction is measured from;
``features(x, depth)`` stops after ``depth`` encoder blocks, at the depths named in ``feature_stages()``.
"""

from flax import nnx
import jax
import jax.numpy as jnp

from examples.models.capture import record

_DENSE_INIT = nnx.initializers.xavier_uniform()


class LearnedEmbedding(nnx.Module):
  """A learned additive tensor of the given shape, N(0, 0.02^2) at init."""

  def __init__(self, shape: tuple[int, ...], *, rngs: nnx.Rngs):
    self.embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), shape, jnp.float32))


class EncoderBlock(nnx.Module):
  """One pre-norm transformer block with stochastic depth on both residual branches."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, drop_path_rate: float, use_bias: bool,
               dtype: jnp.dtype, rngs: nnx.Rngs, capture: bool = False):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, **kw)
    self.attention = nnx.MultiHeadAttention(num_heads, dim, kernel_init=_DENSE_INIT, decode=False, **kw)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, **kw)
    self.mlp_in = nnx.Linear(dim, mlp_dim, kernel_init=_DENSE_INIT, **kw)
    self.mlp_out = nnx.Linear(mlp_dim, dim, kernel_init=_DENSE_INIT, **kw)
    # Dropping the whole residual branch per example = dropout broadcast over tokens and features.
    self.drop_path = nnx.Dropout(drop_path_rate, broadcast_dims=(1, 2), rngs=rngs)
    self.capture = capture

  def _apply(self, layer: nnx.Module, x: jax.Array) -> jax.Array:
    return record(layer, layer(x), self.capture)

  def attend(self, x: jax.Array) -> jax.Array:
    """Self-attention of the tokens ``x``, (N, T, dim), through ``self.attention``'s projections."""
    att = self.attention
    query, key, value = (self._apply(layer, x) for layer in (att.query, att.key, att.value))
    return self._apply(att.out, att.attention_fn(query, key, value, dtype=att.dtype, precision=att.precision))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.drop_path(self.attend(self.norm1(x)))
    return x + self.drop_path(self._apply(self.mlp_out, nnx.gelu(self._apply(self.mlp_in, self.norm2(x)))))


class ViT(nnx.Module):
  """ViT classifier on NHWC images of side ``image_size`` (a multiple of ``patch_size``)."""

  def __init__(
      self,
      num_classes: int,
      *,
      image_size: int = 224,
      patch_size: int = 16,
      dim: int = 384,
      depth: int = 12,
      num_heads: int = 6,
      mlp_ratio: int = 4,
      drop_path_rate: float = 0.0,
      in_channels: int = 3,
      use_bias: bool = True,
      dtype: jnp.dtype = jnp.float32,
      capture: bool = False,
      rngs: nnx.Rngs,
  ):
    if image_size % patch_size:
      raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}.")
    if dim % num_heads:
      raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}.")
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.patch_embed = nnx.Conv(in_channels, dim, (patch_size, patch_size), strides=patch_size,
                                padding="VALID", **kw)
    num_tokens = (image_size // patch_size) ** 2 + 1
    self.cls = LearnedEmbedding((1, 1, dim), rngs=rngs)
    self.position = LearnedEmbedding((1, num_tokens, dim), rngs=rngs)
    rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
    self.blocks = nnx.List([
        EncoderBlock(dim, num_heads, mlp_ratio * dim, drop_path_rate=rate, use_bias=use_bias, dtype=dtype,
                     rngs=rngs, capture=capture)
        for rate in rates
    ])
    self.norm = nnx.LayerNorm(dim, epsilon=1e-6, **kw)
    self.head = nnx.Linear(dim, num_classes, kernel_init=_DENSE_INIT, **kw)
    self.capture = capture

  def features(self, x: jax.Array, depth: int | None = None) -> jax.Array:
    """Every token, (N, T, dim), after the first ``depth`` encoder blocks (0: the embedded patches, class token and
    positions); None: after every block and the final LayerNorm, whose class token (index 0) the head reads."""
    if depth is not None and not 0 <= depth <= len(self.blocks):
      raise ValueError(f"depth must be None or in [0, {len(self.blocks)}] (the blocks), got {depth}.")
    x = record(self.patch_embed, self.patch_embed(x), self.capture)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    cls = jnp.broadcast_to(self.cls.embedding[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
    x = jnp.concatenate([cls, x], axis=1) + self.position.embedding[...].astype(x.dtype)
    for block in self.blocks[:depth]:
      x = block(x)
    return self.norm(x) if depth is None else x

  def feature_stages(self) -> dict[str, int | None]:
    """Stage name -> ``features`` depth in forward order: the embedding, every ``depth // 4``-th block (every block
    of up to 7) but the last, and "features" (``features(x)``), the representations reconstruction is measured
    from."""
    step = max(1, len(self.blocks) // 4)
    return {"embedding": 0, **{f"block{b}": b for b in range(step, len(self.blocks), step)}, "features": None}

  def __call__(self, x: jax.Array) -> jax.Array:
    return record(self.head, self.head(self.features(x)[:, 0]), self.capture).astype(jnp.float32)
