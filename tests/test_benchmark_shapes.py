"""Benchmark shape sets (known parameter counts) and a smoke run of the update-speed harness."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `benchmarks` lives beside `tests`
from benchmarks import shapes  # noqa: E402
from benchmarks import update_speed  # noqa: E402

# The benchmarks declare every view: a guess would mean a benchmark times something other than it says.
pytestmark = pytest.mark.filterwarnings("error::bort_jax.ViewGuessWarning")

# torchvision / timm totals with ImageNet-1k heads.
KNOWN_COUNTS = {"resnet18": 11.69e6, "resnet50": 25.56e6, "vit_b16": 86.57e6}

TINY_TREE = {
    "conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32),
             "bias": jax.ShapeDtypeStruct((4,), jnp.float32)},
    "dense": {"kernel": jax.ShapeDtypeStruct((4, 6), jnp.float32)},
}
TINY_VIEWS = [("conv/kernel", shapes.CONV_VIEW)]


@pytest.mark.parametrize("name", sorted(KNOWN_COUNTS))
def test_parameter_count_matches_known_total(name):
  count = shapes.param_count(shapes.shape_set(name))
  assert abs(count - KNOWN_COUNTS[name]) / KNOWN_COUNTS[name] < 0.005


def test_only_kernels_are_constrained():
  params = jax.tree.map(lambda s: jnp.zeros(s.shape), shapes.shape_set("vit_b16"))
  for path, selected in jax.tree_util.tree_leaves_with_path(bort_jax.kernel_mask(params)):
    assert selected == path[-1].key.endswith("kernel"), jax.tree_util.keystr(path)
  views = {v.path: (v.batch, v.fan_in, v.out) for v in update_speed.matrix_views(params, shapes.shape_views("vit_b16"))}
  assert views["encoder/block0/attention/query/kernel"] == (1, 768, 768)  # (embed, heads·head_dim)
  assert views["encoder/block0/attention/out/kernel"] == (1, 768, 768)  # (heads·head_dim, embed)
  assert views["encoder/block0/mlp/fc1/kernel"] == (1, 768, 3072)
  assert views["patch_embed/kernel"] == (1, 16 * 16 * 3, 768)
  assert len(views) == 1 + 12 * 6 + 1  # patch embedding, 4 attention + 2 MLP kernels per block, head


@pytest.mark.parametrize("name", sorted(shapes.SHAPE_SETS))
def test_declared_views_are_the_inferred_ones_without_the_guesses(name):
  tree = shapes.shape_set(name)
  with pytest.warns(bort_jax.ViewGuessWarning):  # the convs are named, not known, without views=
    inferred = update_speed.matrix_views(tree)
  assert update_speed.matrix_views(tree, shapes.shape_views(name)) == inferred
  assert all("guessed" not in row[5] for row in bort_jax.describe(tree, views=shapes.shape_views(name)))


def test_resnet50_kernel_shapes():
  tree = shapes.shape_set("resnet50")
  assert tree["conv1"]["kernel"].shape == (7, 7, 3, 64)
  assert tree["layer1"]["block0"]["downsample"]["conv"]["kernel"].shape == (1, 1, 64, 256)
  assert tree["layer4"]["block2"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
  assert tree["fc"]["kernel"].shape == (2048, 1000)
  kernels = [p for p, _ in jax.tree_util.tree_leaves_with_path(tree) if p[-1].key == "kernel"]
  assert len(kernels) == 1 + 16 * 3 + 4 + 1  # stem, bottleneck convs, downsamples, fc


def test_flop_model_counts_cheaper_side_and_forced_gram():
  params = shapes.init_params(TINY_TREE, jax.random.key(0))
  views = update_speed.matrix_views(params, TINY_VIEWS)
  assert [(v.fan_in, v.out) for v in views] == [(18, 4), (4, 6)]
  assert update_speed.correction_flops(views, "l2-full") == 4 * 18 * 4 * 4 + 4 * 4 * 6 * 4
  assert update_speed.correction_flops(views, "l1-fullrow") == 4 * 18 * 4 * 4 + 4 * 4 * 6 * 6
  assert update_speed.reference_flops(views) == 4 * 18 * 4 * 4 + 4 * 4 * 6 * 6
  assert update_speed.gemm_size(2 * 10**3) == 10
  with pytest.raises(ValueError, match="mode must be one of"):
    update_speed.correction_flops(views, "l3")


def test_benchmark_tree_smoke():
  rows = update_speed.benchmark_tree(TINY_TREE, modes=("l2-full", "l1-fullrow"), every_k=(2,), repeats=1,
                                     warmup=1, with_torch=False, views=TINY_VIEWS)
  names = [r["name"] for r in rows]
  assert names == ["optax.sgd", "bort_sgd l2-full", "GEMM l2-full", "bort_sgd l1-fullrow", "GEMM l1-fullrow",
                   "bort_sgd l2-full every_k=2"]
  assert all(r["seconds"] > 0 for r in rows)
  assert len(update_speed.ratio_lines(rows)) == 2
  assert "| bort_sgd l2-full |" in update_speed.format_table("tiny", rows)


def _run_bort_sgd(params, grads, hyper, mode, alpha, steps):
  tx = update_speed.bort_tx(mode, "adaptive" if alpha == "ada" else alpha, hyper=hyper, views=TINY_VIEWS)
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params


# Adaptive alpha only on a wide kernel: on tall ones the core deliberately uses fan-in norms (see correction.py).
@pytest.mark.parametrize("mode,alpha,tree", [("l2-full", 1.0, TINY_TREE), ("l1-fullrow", 1.0, TINY_TREE),
                                             ("l2-full", "ada", {"conv": TINY_TREE["conv"]})])
def test_torch_reference_step_matches_bort_sgd(mode, alpha, tree):
  """Two steps of the torch loop equal two bort_sgd steps: the speed comparison is like for like."""
  torch = pytest.importorskip("torch")
  params = shapes.init_params(tree, jax.random.key(0))
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  hyper = dict(update_speed.HYPER, gamma=0.5)  # large γ so the correction dominates the comparison
  expected = _run_bort_sgd(params, grads, hyper, mode, alpha, steps=2)
  without_bort = _run_bort_sgd(params, grads, dict(hyper, gamma=0.0), mode, alpha, steps=2)

  tensors, is_kernel = update_speed.torch_tensors(params, TINY_VIEWS)
  buffers = [torch.zeros_like(t) for t in tensors]
  for _ in range(2):
    torch_grads, _ = update_speed.torch_tensors(grads, TINY_VIEWS)  # fresh: the loop accumulates into grads in place
    update_speed.torch_reference_step(tensors, torch_grads, buffers, is_kernel, mode, alpha, hyper)

  want, _ = update_speed.torch_tensors(expected, TINY_VIEWS)
  plain, _ = update_speed.torch_tensors(without_bort, TINY_VIEWS)
  for got, w in zip(tensors, want):
    np.testing.assert_allclose(got.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
  moved = [np.abs(w.numpy() - p.numpy()).max() for w, p, kernel in zip(want, plain, is_kernel) if kernel]
  assert min(moved) > 1e-3  # the correction is really exercised
