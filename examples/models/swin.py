"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021).

4x4 patch embedding, then stages of pre-norm blocks at 1/4, 1/8, 1/16, 1/32 resolution, each block being
x += DropPath(W-MSA(LN(x))); x += DropPath(MLP(LN(x))). Attention runs inside non-overlapping w x w windows;
every second block shifts the windows by w/2 (a cyclic roll) and masks the pairs the roll brought together.
Logits get a learned bias B[Δy, Δx] per head from a ((2w-1)^2, heads) table. Between stages, patch merging
concatenates 2x2 neighbours (4C) and maps LN(4C) -> 2C. Swin-T: depths (2, 2, 6, 2), Swin-S: (2, 2, 18, 2);
both C = 96 (x2 per stage), heads (3, 6, 12, 24), w = 7, drop path 0.2 / 0.3 growing linearly over blocks.

Projections are ``nnx.LinearGeneral`` named ``query``/``key``/``value``/``out`` as in ``nnx.MultiHeadAttention``
(so ``bort_jax.nnx_views`` reads one dim x dim matrix for each); the bias table is an ``nnx.Embed`` looked up
by relative offset (``relative_position_bias/embedding``), which Bort's default mask (``kernel`` leaves) leaves
alone.
"""

from collections.abc import Sequence
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

_INIT = nnx.initializers.truncated_normal(stddev=0.02)


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  """(w², w²) row of the bias table for each (query, key) pair: (Δy + w − 1)(2w − 1) + Δx + w − 1."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  delta = coords[:, :, None] - coords[:, None, :] + window - 1
  return delta[0] * (2 * window - 1) + delta[1]


@functools.lru_cache(maxsize=None)
def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """(windows, w², w²) bool: True where query and key of a window of the rolled map were neighbours before it.

  After rolling by −shift, the last window of each row/column holds pixels from both image edges; the three
  slices per axis ([0, H−w), [H−w, H−shift), [H−shift, H)) label the regions that may attend to each other.
  """
  labels = np.zeros((height, width), np.int32)
  slices = lambda n: (slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n))
  for i, rows in enumerate(slices(height)):
    for j, cols in enumerate(slices(width)):
      labels[rows, cols] = 3 * i + j
  windows = window_partition(labels[None, :, :, None], window)[..., 0]
  return windows[:, :, None] == windows[:, None, :]


def window_partition(x, window: int):
  """(B, H, W, C) -> (B · H/w · W/w, w², C), windows in row-major order; works on NumPy and JAX arrays."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """Inverse of :func:`window_partition`."""
  c = windows.shape[-1]
  x = windows.reshape(-1, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


class WindowAttention(nnx.Module):
  """Multi-head self-attention within each window, with relative position bias and an optional region mask."""

  def __init__(self, dim: int, num_heads: int, window: int, *, use_bias: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
    head_dim = dim // num_heads
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, kernel_init=_INIT, rngs=rngs)
    self.query = nnx.LinearGeneral(dim, (num_heads, head_dim), **kw)
    self.key = nnx.LinearGeneral(dim, (num_heads, head_dim), **kw)
    self.value = nnx.LinearGeneral(dim, (num_heads, head_dim), **kw)
    self.out = nnx.LinearGeneral((num_heads, head_dim), dim, axis=(-2, -1), **kw)
    # The ((2w-1)^2, heads) table B, looked up by relative_position_index: an embedding, not a kernel.
    self.relative_position_bias = nnx.Embed((2 * window - 1) ** 2, num_heads, embedding_init=_INIT, rngs=rngs)
    self.window = window

  def __call__(self, x: jax.Array, mask: np.ndarray | None = None) -> jax.Array:
    """``x``: (B · windows, w², C); ``mask``: (windows, w², w²) bool or None."""
    q, k, v = self.query(x), self.key(x), self.value(x)
    logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
    bias = self.relative_position_bias(relative_position_index(self.window))  # (T, T, heads)
    logits = logits + jnp.transpose(bias, (2, 0, 1))
    if mask is not None:
      shape = logits.shape
      logits = logits.reshape(-1, mask.shape[0], *shape[1:])
      # A where, not Swin's additive −100: masked pairs get exactly zero weight.
      logits = jnp.where(mask[None, :, None], logits, jnp.finfo(jnp.float32).min).reshape(shape)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return self.out(jnp.einsum("bnts,bsnh->btnh", weights, v))


class SwinBlock(nnx.Module):
  """One (shifted-)window block on a (B, H, W, C) map; ``shift = 0`` is the regular-window block."""

  def __init__(self, dim: int, num_heads: int, window: int, shift: int, *, mlp_ratio: int, drop_path_rate: float,
               use_bias: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, **kw)
    self.attention = WindowAttention(dim, num_heads, window, use_bias=use_bias, dtype=dtype, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, **kw)
    self.mlp_in = nnx.Linear(dim, mlp_ratio * dim, kernel_init=_INIT, **kw)
    self.mlp_out = nnx.Linear(mlp_ratio * dim, dim, kernel_init=_INIT, **kw)
    # Dropping the whole residual branch per example = dropout broadcast over rows, columns and features.
    self.drop_path = nnx.Dropout(drop_path_rate, broadcast_dims=(1, 2, 3), rngs=rngs)
    self.window, self.shift = window, shift

  def __call__(self, x: jax.Array) -> jax.Array:
    _, height, width, _ = x.shape
    h = self.norm1(x)
    mask = None
    if self.shift:
      h = jnp.roll(h, (-self.shift, -self.shift), axis=(1, 2))
      mask = shifted_window_mask(height, width, self.window, self.shift)
    h = window_reverse(self.attention(window_partition(h, self.window), mask), self.window, height, width)
    if self.shift:
      h = jnp.roll(h, (self.shift, self.shift), axis=(1, 2))
    x = x + self.drop_path(h)
    return x + self.drop_path(self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x)), approximate=False)))


class PatchMerging(nnx.Module):
  """(B, H, W, C) -> (B, H/2, W/2, 2C): 2x2 neighbours concatenated, LayerNorm, bias-free linear 4C -> 2C."""

  def __init__(self, dim: int, *, use_bias: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(4 * dim, epsilon=1e-5, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                              rngs=rngs)
    self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False, kernel_init=_INIT, dtype=dtype,
                                param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    return self.reduction(self.norm(x))


class Stage(nnx.Module):
  """``depth`` blocks alternating regular and shifted windows, then patch merging unless it is the last stage."""

  def __init__(self, dim: int, depth: int, num_heads: int, window: int, shift: int, *, rates: Sequence[float],
               downsample: bool, mlp_ratio: int, use_bias: bool, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.blocks = nnx.List([
        SwinBlock(dim, num_heads, window, shift if i % 2 else 0, mlp_ratio=mlp_ratio, drop_path_rate=rates[i],
                  use_bias=use_bias, dtype=dtype, rngs=rngs)
        for i in range(depth)
    ])
    self.downsample = PatchMerging(dim, use_bias=use_bias, dtype=dtype, rngs=rngs) if downsample else None

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.blocks:
      x = block(x)
    return x if self.downsample is None else self.downsample(x)


class Swin(nnx.Module):
  """Swin classifier on NHWC images of side ``image_size``; each stage's side must be a multiple of its window.

  A stage whose side is at most ``window_size`` uses one window of the whole map and no shift (as the paper's
  last stage at 224 px: 7 x 7).
  """

  def __init__(
      self,
      num_classes: int,
      *,
      image_size: int = 224,
      patch_size: int = 4,
      embed_dim: int = 96,
      depths: Sequence[int] = (2, 2, 6, 2),
      num_heads: Sequence[int] = (3, 6, 12, 24),
      window_size: int = 7,
      mlp_ratio: int = 4,
      drop_path_rate: float = 0.2,
      in_channels: int = 3,
      use_bias: bool = True,
      dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    if len(depths) != len(num_heads):
      raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same length.")
    side = image_size // patch_size
    if image_size % patch_size or side % 2 ** (len(depths) - 1):
      raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size} "
                       f"x 2^{len(depths) - 1}.")
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.patch_embed = nnx.Conv(in_channels, embed_dim, (patch_size, patch_size), strides=patch_size,
                                padding="VALID", **kw)
    self.patch_norm = nnx.LayerNorm(embed_dim, epsilon=1e-5, **kw)
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    stages = []
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
      dim, stage_side = embed_dim * 2 ** i, side // 2 ** i
      window, shift = (stage_side, 0) if stage_side <= window_size else (window_size, window_size // 2)
      if stage_side % window or dim % heads:
        raise ValueError(f"stage {i}: side {stage_side} must be a multiple of the window {window} and dim {dim} "
                         f"of the heads {heads}.")
      first = sum(depths[:i])
      stages.append(Stage(dim, depth, heads, window, shift, rates=rates[first:first + depth],
                          downsample=i < len(depths) - 1, mlp_ratio=mlp_ratio, use_bias=use_bias, dtype=dtype,
                          rngs=rngs))
    self.stages = nnx.List(stages)
    final = embed_dim * 2 ** (len(depths) - 1)
    self.norm = nnx.LayerNorm(final, epsilon=1e-5, **kw)
    self.head = nnx.Linear(final, num_classes, kernel_init=_INIT, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.patch_norm(self.patch_embed(x))
    for stage in self.stages:
      x = stage(x)
    return self.head(jnp.mean(self.norm(x), axis=(1, 2))).astype(jnp.float32)
