"""Swin: sizes against timm, shifted-window masking through a whole block, relative positions, exact views."""

import warnings

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax
from examples import models
from examples.models import swin


@pytest.mark.parametrize("name, count", [("swin_t", 28_288_354), ("swin_s", 49_606_258)])
def test_full_size_parameter_counts_and_exact_views(name, count):
  """timm's swin_{tiny,small}_patch4_window7_224 sizes; every kernel gets a view from its layer type."""
  model = nnx.eval_shape(lambda: models.create_model(name, num_classes=1000, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert sum(x.size for x in jax.tree.leaves(params)) == count
  with warnings.catch_warnings():
    warnings.simplefilter("error", bort_jax.ViewGuessWarning)
    rows = bort_jax.describe(params, views=bort_jax.nnx_views(model))
  kernels = [r for r in rows if r[0].endswith("/kernel")]
  assert kernels and all(r[5] == "constrained" and r[6].startswith("views rule") for r in kernels)
  tables = [r for r in rows if r[0].endswith("relative_position_bias/embedding")]
  assert len(tables) == sum((2, 2, 6, 2) if name == "swin_t" else (2, 2, 18, 2))
  assert all(r[1][0] == 13 * 13 and r[5] == "not a kernel" for r in tables)


def test_relative_position_index_against_a_loop():
  w = 3
  expected = np.zeros((w * w, w * w), np.int64)
  for i in range(w * w):
    for j in range(w * w):
      dy, dx = i // w - j // w, i % w - j % w  # query minus key, row-major tokens
      expected[i, j] = (dy + w - 1) * (2 * w - 1) + (dx + w - 1)
  np.testing.assert_array_equal(swin.relative_position_index(w), expected)


def test_bias_table_rows_are_shared_by_equal_offsets():
  model = swin.WindowAttention(8, 2, 3, use_bias=True, dtype=jnp.float32, rngs=nnx.Rngs(0))
  table = np.asarray(model.relative_position_bias.embedding[...])
  bias = table[swin.relative_position_index(3)]  # (T, T, heads)
  # Tokens (0,0)->(1,1) and (1,1)->(2,2) have the same offset, hence the same bias; (0,0)->(0,0) is row 12.
  np.testing.assert_array_equal(bias[0, 4], bias[4, 8])
  np.testing.assert_array_equal(bias[0, 0], table[12])


def test_shifted_block_mixes_only_tokens_adjacent_in_the_image():
  """Output pixel q depends on input pixel p iff they share a shifted window and are < w apart in the image
  (no wrap-around through the cyclic roll); read from the exact zeros of the block's Jacobian."""
  side, window, shift, dim = 8, 4, 2, 4
  block = swin.SwinBlock(dim, 2, window, shift, mlp_ratio=2, drop_path_rate=0.0, use_bias=True,
                         dtype=jnp.float32, rngs=nnx.Rngs(0))
  block.eval()
  x = jax.random.normal(jax.random.key(1), (1, side, side, dim))
  jacobian = nnx.jit(lambda block, x: jax.jacrev(lambda x: block(x)[0])(x))(block, x)[..., 0, :, :, :]
  depends = np.abs(np.asarray(jacobian)).sum(axis=(2, 5)) > 0  # (H, W, C, H, W, C) -> (H, W, H, W)
  coords = np.arange(side)
  shifted_window = ((coords - shift) % side) // window
  same = lambda a: (shifted_window[:, None] == shifted_window[None, :]) & (np.abs(a[:, None] - a[None, :]) < window)
  rows, cols = same(coords), same(coords)
  expected = rows[:, None, :, None] & cols[None, :, None, :]
  np.testing.assert_array_equal(depends, expected)
  assert not expected.all()  # the mask did cut some pairs of a window


def test_mask_keeps_only_same_region_pairs():
  mask = swin.shifted_window_mask(8, 8, 4, 2)
  assert mask.shape == (4, 16, 16) and mask[0].all()  # the first window holds no wrapped pixel
  assert mask[3].sum() == 4 * 4 + 4 * 4 + 4 * 4 + 4 * 4  # four 2x2 regions in the corner window


def test_forward_shape_and_dtype_at_reduced_size():
  model = models.create_model("swin_t", num_classes=5, rngs=nnx.Rngs(0), image_size=64, embed_dim=12,
                              depths=(2, 2, 2, 2), window_size=4, dtype=jnp.bfloat16)
  out = nnx.jit(lambda model, x: model(x))(model, jnp.ones((2, 64, 64, 3)))
  assert out.shape == (2, 5) and out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
  assert [s.blocks[1].shift for s in model.stages] == [2, 2, 0, 0]  # 16, 8 shift; 4 and 2 are one window


def test_bad_sizes_are_rejected():
  with pytest.raises(ValueError, match="multiple of the window"):
    nnx.eval_shape(lambda: models.create_model("swin_t", num_classes=5, rngs=nnx.Rngs(0), image_size=96))
