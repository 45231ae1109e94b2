"""Tests for examples.models: sizes against published counts, forward shapes, bias-free variants, modes."""

import re

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax
from examples import models


def _abstract(name, num_classes=10, **kw):
  return nnx.eval_shape(lambda: models.create_model(name, num_classes=num_classes, rngs=nnx.Rngs(0), **kw))


def _param_count(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _vit_count(image, patch, dim, depth, classes, channels=3):
  """ViT parameters re-derived: patch conv, cls + position tokens, blocks (2 LN, attention, MLP), LN, head."""
  tokens = (image // patch) ** 2 + 1
  block = 2 * 2 * dim + 4 * (dim * dim + dim) + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)
  return patch * patch * channels * dim + dim + dim + tokens * dim + depth * block + 2 * dim + dim * classes + classes


# Published sizes: torchvision resnet50 / vgg16_bn (whose convs carry 4,224 biases; ours do not, BatchNorm
# follows), timm deit_small_patch16_224 / vit_base_patch16_224, LeNet-5 61,706, CIFAR ResNet-18 11,173,962,
# ResNet-20 0.27M (He et al., 2016, Table 6; projection shortcuts).
def test_vit_count_formula_matches_published_sizes():
  """The re-derivation used above gives timm's DeiT-S and ViT-B/16 sizes (the latter is too slow to build)."""
  assert _vit_count(224, 16, 384, 12, 1000) == 22_050_664
  assert _vit_count(224, 16, 768, 12, 1000) == 86_567_656


@pytest.mark.parametrize("name, kw, classes, count", [  # at their native resolution
    ("mlp", {}, 10, 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),
    ("lenet5", {}, 10, 61_706),
    ("resnet20", {}, 10, 272_474),
    ("resnet18", {}, 10, 11_173_962),
    ("vgg16", {}, 10, 14_728_266 - 4_224),
    ("vit_tiny", {}, 10, _vit_count(32, 4, 192, 4, 10)),
    ("resnet50", {}, 1000, 25_557_032),
    ("vgg16", {"image_size": 224, "fc_width": 4096}, 1000, 138_365_992 - 4_224),
    ("deit_s", {}, 1000, 22_050_664),
])
def test_full_size_parameter_counts_and_output_shape(name, kw, classes, count):
  model = _abstract(name, classes, **kw)
  assert _param_count(model) == count
  if classes != 1000:
    return  # the small models' forward passes are checked below
  side = 224 if classes == 1000 else 32 if name not in ("mlp", "lenet5") else 28
  x = jax.ShapeDtypeStruct((1, side, side, 3 if side != 28 else 1), jnp.float32)
  graph, state = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(graph, s)(x), state, x)
  assert out.shape == (1, classes) and out.dtype == jnp.float32


# Reduced widths/depths keep every real forward pass fast on a CPU.
SMALL = {
    "mlp": ((2, 28, 28, 1), dict(hidden_sizes=(32, 16))),
    "lenet5": ((2, 28, 28, 1), {}),
    "resnet20": ((2, 32, 32, 3), dict(widths=(4, 8, 16))),
    "resnet18": ((2, 32, 32, 3), dict(widths=(4, 8, 8, 16))),
    "resnet50": ((1, 64, 64, 3), dict(widths=(4, 4, 8, 8))),
    "vgg16": ((2, 32, 32, 3), dict(widths=(4, 8, 8, 16, 16))),
    "deit_s": ((1, 32, 32, 3), dict(image_size=32, dim=24, depth=1)),
    "vit_b16": ((1, 32, 32, 3), dict(image_size=32, dim=24, depth=1)),
    "vit_tiny": ((2, 32, 32, 3), dict(dim=24, depth=1)),
    "explain_cnn": ((2, 28, 28, 1), dict(channels=(4, 4), strides=(2, 1))),
    "bcos_mlp": ((2, 28, 28, 1), dict(widths=(8,), image_shape=(28, 28, 1))),
    "bcos_cnn": ((2, 28, 28, 1), dict(widths=(4, 4), strides=(2, 1), image_shape=(28, 28, 1))),
    "swin_t": ((1, 32, 32, 3), dict(image_size=32, embed_dim=12, depths=(2, 2), num_heads=(3, 6), window_size=4)),
    "swin_s": ((1, 32, 32, 3), dict(image_size=32, embed_dim=12, depths=(2, 2), num_heads=(3, 6), window_size=4)),
}
BIAS_FREE = {"bcos_mlp", "bcos_cnn"}  # B-cos layers have no bias: use_bias=True is refused


def _small(name, seed=0, **kw):
  """A small model with NumPy-drawn values and an input batch.

  The model is built abstractly and filled from ``np.random.default_rng(seed)`` (kernels N(0, 1/fan_in),
  biases N(0, 0.1^2), norms and running stats at their identity values): this avoids compiling
  ``jax.random`` once per parameter shape, which dominates the run time of these tests on a CPU.
  """
  shape, small_kw = SMALL[name]
  graph, state = nnx.split(_abstract(name, **{**small_kw, **kw}))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    leaf_name = path[-1].key
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.key(seed)
    if leaf_name in ("kernel", "embedding"):
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, fan_in ** -0.5, leaf.shape).astype(leaf.dtype)
    if leaf_name == "bias":
      return rng.normal(0.0, 0.1, leaf.shape).astype(leaf.dtype)
    return np.full(leaf.shape, leaf_name in ("scale", "var"), leaf.dtype)

  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
  x = np.random.default_rng(seed + 1).normal(size=shape).astype(np.float32)
  return nnx.merge(graph, state), jnp.asarray(x)


@nnx.jit
def _forward(model, x):
  return model(x)


def test_factory_covers_every_model():
  assert sorted(SMALL) == sorted(models.MODELS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registry_declares_which_models_sow_their_outputs(name):
  """`sows_outputs` (what DBort configs are validated against) matches what the constructor accepts."""
  if not models.MODELS[name].sows_outputs:
    with pytest.raises(TypeError, match="capture"):
      _abstract(name, capture=True, **SMALL[name][1])
    return
  model, x = _small(name, capture=True)
  _, sown = nnx.capture(model, nnx.Intermediate)(x)
  assert nnx.to_pure_dict(sown)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bias_free_variant_forward_shape(name):
  shape, kw = SMALL[name]
  graph, state = nnx.split(_abstract(name, use_bias=False, **kw))
  logits = jax.eval_shape(lambda s, x: nnx.merge(graph, s)(x), state, jax.ShapeDtypeStruct(shape, jnp.float32))
  assert logits.shape == (shape[0], 10) and logits.dtype == jnp.float32
  assert all(path[-1] != "bias" for path, _ in nnx.to_flat_state(nnx.filter_state(state, nnx.Param)))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_weights_are_kernels_and_match_the_default_bort_mask(name):
  params = nnx.state(_abstract(name, use_bias=name not in BIAS_FREE, **SMALL[name][1]), nnx.Param)
  flat = [("/".join(str(k) for k in path), leaf.get_value().ndim) for path, leaf in nnx.to_flat_state(params)]
  for path, ndim in flat:
    assert re.search(r"(^|/)(kernel|embedding|scale|bias)$", path), path
    if re.search(r"(kernel|embedding)$", path):
      assert ndim >= 2, path
  assert any(path.endswith("bias") for path, _ in flat) == (name not in BIAS_FREE)  # use_bias=True keeps them
  mask = [bool(v) for v in jax.tree.leaves(bort_jax.kernel_mask(params))]
  assert mask == [path.endswith("kernel") for path, _ in flat]


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "vit_tiny"])
def test_real_forward_is_finite(name):
  model, x = _small(name)
  model.eval()
  logits = _forward(model, x)
  assert logits.shape == (x.shape[0], 10) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("name,shapes", [
    ("resnet20", {"stem": (32, 32, 16), "stage1": (32, 32, 16), "stage2": (16, 16, 32), "features": (8, 8, 64)}),
    ("vit_tiny", {"embedding": (65, 192), "block1": (65, 192), "block2": (65, 192), "block3": (65, 192),
                  "features": (65, 192)})])
def test_feature_stages_end_with_exactly_the_features(name, shapes):
  """Reconstruction stages: the stem/embedding, stages or evenly spaced blocks, and `features(x)` itself; the
  last block's output is `features(x)` (ViT: before the final LayerNorm)."""
  model = models.create_model(name, num_classes=10, rngs=nnx.Rngs(0))
  model.eval()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  stages = model.feature_stages()
  assert {stage: model.features(x, depth).shape[1:] for stage, depth in stages.items()} == shapes
  assert list(stages.values())[-1] is None
  last = len(model.blocks) if name == "vit_tiny" else len(model.stage_ends)
  after_last = model.features(x, last)
  np.testing.assert_array_equal(model.norm(after_last) if name == "vit_tiny" else after_last, model.features(x))
  with pytest.raises(ValueError, match=f"depth must be None or in \\[0, {last}\\]"):
    model.features(x, last + 1)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "explain_cnn"])
def test_bias_free_relu_nets_are_positively_homogeneous(name):
  """Without biases, ReLU + max-pool networks satisfy f(3x) = 3 f(x)."""
  model, x = _small(name, use_bias=False)
  np.testing.assert_allclose(_forward(model, 3.0 * x), 3.0 * _forward(model, x), rtol=1e-5, atol=1e-5)


def test_mlp_capture_sows_preactivations_beside_kernels():
  model, x = _small("mlp", capture=True)
  logits, sown = nnx.jit(nnx.capture(lambda m, x: m(x), nnx.Intermediate))(model, x)
  sown = nnx.to_pure_dict(sown)
  params = nnx.state(model, nnx.Param)
  h = np.asarray(x).reshape(2, -1)
  for i in range(3):  # NumPy re-derivation: y_i = h_{i-1} M_i + b_i, h_i = relu(y_i)
    y = h @ np.asarray(params["layers"][i]["kernel"][...]) + np.asarray(params["layers"][i]["bias"][...])
    np.testing.assert_allclose(sown["layers"][i]["preact"][0], y, rtol=1e-5, atol=1e-5)
    h = np.maximum(y, 0)
  np.testing.assert_allclose(logits, y, rtol=1e-5, atol=1e-5)
  assert not nnx.state(model, nnx.Intermediate)  # captured values are returned, not left in the model


def test_lenet5_capture_names_every_layer():
  model, x = _small("lenet5", capture=True)
  logits, sown = nnx.jit(nnx.capture(lambda m, x: m(x), nnx.Intermediate))(model, x)
  sown = nnx.to_pure_dict(sown)
  np.testing.assert_allclose(sown["fc3"]["preact"][0], logits, rtol=1e-6)
  shapes = {k: sown[k]["preact"][0].shape for k in ("conv1", "conv2", "fc1", "fc2", "fc3")}
  assert shapes == {"conv1": (2, 28, 28, 6), "conv2": (2, 10, 10, 16), "fc1": (2, 120), "fc2": (2, 84),
                    "fc3": (2, 10)}


def test_explain_cnn_sows_every_preactivation_and_pools_the_class_maps():
  model, x = _small("explain_cnn", use_bias=False, capture=True)
  logits, sown = nnx.capture(model, nnx.Intermediate)(x)
  sown = nnx.to_pure_dict(sown)
  assert [sown["convs"][i]["preact"][0].shape for i in (0, 1)] == [(2, 14, 14, 4), (2, 14, 14, 4)]
  np.testing.assert_allclose(sown["head"]["preact"][0].mean((1, 2)), logits, rtol=1e-6)
  np.testing.assert_allclose(model.features(x, 1), jax.nn.relu(sown["convs"][0]["preact"][0]), rtol=1e-6)


def test_bcos_net_reads_raw_images_through_the_input_encoding():
  from bort_jax.explain import bcos
  model, x = _small("bcos_cnn", use_bias=False)
  np.testing.assert_allclose(model(x), model.net(bcos.encode_input(x)), rtol=1e-6)
  with pytest.raises(ValueError, match="use_bias must be False for a B-cos net"):
    _abstract("bcos_mlp", **SMALL["bcos_mlp"][1])


def test_batchnorm_train_updates_running_stats_and_eval_freezes_them():
  model, x = _small("resnet20")
  features = np.asarray(nnx.jit(lambda m, x: m.stem_conv(x))(model, x))
  train_logits = _forward(model, x)
  # PyTorch momentum 0.1: running mean = 0.9 * 0 + 0.1 * batch mean.
  np.testing.assert_allclose(model.stem_norm.mean[...], 0.1 * features.mean((0, 1, 2)), rtol=1e-4,
                             atol=1e-6)
  model.eval()
  frozen = np.asarray(model.stem_norm.mean[...])
  eval_logits = _forward(model, x)
  np.testing.assert_array_equal(_forward(model, x), eval_logits)
  np.testing.assert_array_equal(model.stem_norm.mean[...], frozen)
  assert not np.allclose(eval_logits, train_logits)


def test_vit_drop_path_is_stochastic_in_training_only():
  model, x = _small("vit_tiny", depth=2, drop_path_rate=0.5)  # rates grow 0 -> 0.5 over the blocks
  assert not np.allclose(_forward(model, x), _forward(model, x))
  model.eval()
  np.testing.assert_array_equal(_forward(model, x), _forward(model, x))


def test_bfloat16_compute_keeps_float32_parameters():
  model32, x = _small("lenet5")
  model16, _ = _small("lenet5", dtype=jnp.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model16, nnx.Param))} == {jnp.dtype(jnp.float32)}
  logits16, logits32 = _forward(model16, x), _forward(model32, x)
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits32, atol=0.03 * float(jnp.abs(logits32).max()))


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match=r"name must be one of .*'resnet20'"):
    models.create_model("resnet34", num_classes=10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="block must be one of"):
    nnx.eval_shape(lambda: models.ResNet(10, stage_sizes=(1,), widths=(4,), block="wide", rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="stem must be one of"):
    nnx.eval_shape(lambda: models.ResNet(10, stage_sizes=(1,), widths=(4,), stem="tiny", rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="multiple of patch_size"):
    nnx.eval_shape(lambda: models.ViT(10, image_size=30, patch_size=4, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="multiple of 32"):
    nnx.eval_shape(lambda: models.VGG16(10, image_size=48, rngs=nnx.Rngs(0)))



def _path(keys) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def _lookup(tree, path: str):
  for key in path.split("/"):
    tree = tree[int(key) if key.isdigit() else key]
  return tree


def _split(model):
  """(graph, params, other state) with the state as pure dicts of jax arrays (BatchNorm writes its statistics)."""
  graph, params, rest = nnx.split(model, nnx.Param, ...)
  return graph, *(jax.tree.map(jnp.asarray, nnx.to_pure_dict(s)) for s in (params, rest))


def _sown(model, x):
  """(logits, {layer path: its sown preact}) of a forward pass inside ``nnx.capture``."""
  logits, sown = nnx.capture(lambda m, x: m(x), nnx.Intermediate)(model, x)
  return logits, {_path(p[:-2]): y for p, y in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(sown))[0]}


@pytest.mark.parametrize("name,kw", [("resnet20", {}), ("resnet50", {"stage_sizes": (1, 1), "widths": (4, 8)}),
                                     ("vit_tiny", {})])
def test_capture_sows_the_preactivation_of_every_constrained_kernel(name, kw):
  """One sown output per Bort-constrained kernel, each linear in that kernel: y = x M + b with x independent
  of M (the derivative along M itself is y - b); capturing leaves the logits unchanged."""
  model, x = _small(name, capture=True, **kw)
  plain, _ = _small(name, **kw)
  logits, sown = _sown(model, x)
  np.testing.assert_array_equal(logits, plain(x))
  np.testing.assert_allclose(sown["head"], logits, rtol=1e-6)
  graph, params, rest = _split(model)
  mask = bort_jax.kernel_mask(params)
  kernels = [_path(p[:-1]) for p, constrained in jax.tree_util.tree_flatten_with_path(mask)[0] if constrained]
  assert sorted(sown) == sorted(kernels)

  def outputs(t):  # kernel k -> (1 + t_k) M_k
    scaled = jax.tree_util.tree_map_with_path(
        lambda p, v: v * (1 + t[kernels.index(_path(p[:-1]))]) if p[-1].key == "kernel" else v, params)
    return _sown(nnx.merge(graph, scaled, rest), x)[1]

  along = jax.jit(jax.vmap(lambda e: jax.jvp(outputs, (jnp.zeros(len(kernels)),), (e,))[1]))
  derivatives = along(jnp.eye(len(kernels)))
  for k, path in enumerate(kernels):
    bias = _lookup(params, path).get("bias", 0.0)
    np.testing.assert_allclose(derivatives[path][k], sown[path] - bias, rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(sown[path]).max()), err_msg=path)


@pytest.mark.parametrize("name", ["resnet20", "vit_tiny"])
def test_one_dbort_step_changes_the_update_as_the_dbort_term_predicts(name):
  """The trainer's SGD step with dbort_lambda > 0 minus the step without it is -lr * jax.grad of
  bort_jax.dbort_loss over the sown outputs; for the head (the last layer, whose kernel reaches no other sown
  output) it is also add_dbort_term's closed form from the head's input and the logits."""
  from examples import optimizers  # pylint: disable=g-import-not-at-top
  from examples import train  # pylint: disable=g-import-not-at-top
  from examples.configs import default  # pylint: disable=g-import-not-at-top
  lam, beta, lr = 0.5, 0.5, 1.0
  config = default.get_config()
  config.update(dict(model=name, dataset="cifar10", optimizer="sgd", learning_rate=lr, momentum=0.0,
                     weight_decay=0.0, lr_schedule="constant", dbort_beta=beta))
  rng = np.random.default_rng(3)
  batch = {"image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, (4,), dtype=np.int32)}
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch=10)
  new = {}
  for lam_run in (0.0, lam):
    config.dbort_lambda = lam_run
    state, graphs = train.create_train_state(_small(name, capture=lam_run > 0)[0], tx)
    new[lam_run] = train.make_train_step(graphs, tx, config, 10)(state, batch)[0].params
  model, _ = _small(name, capture=True)
  graph, params, rest = _split(model)
  x = train.normalize_images(jnp.asarray(batch["image"]), train.data_lib.normalization("cifar10"))

  def dbort_term(p):
    return bort_jax.dbort_loss(_sown(nnx.merge(graph, p, rest), x)[1], lam, beta)

  expected = jax.tree.map(lambda g: -lr * g, jax.jit(jax.grad(dbort_term))(params))
  change = jax.tree.map(lambda a, b: a - b, new[lam], new[0.0])
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale), change, expected)

  def head_input(m, x):
    features = m.features(x)
    return jnp.mean(features, axis=(1, 2)) if features.ndim == 4 else features[:, 0]

  h = nnx.jit(nnx.capture(head_input, nnx.Intermediate))(model, x)[0]
  logits = h @ params["head"]["kernel"] + params["head"]["bias"]
  zeros = jax.tree.map(jnp.zeros_like, params)
  closed = bort_jax.add_dbort_term(lam, beta, views=bort_jax.nnx_views(model)).update(
      zeros, None, params, dbort_activations={"head/kernel": bort_jax.dense_io(h, logits)})[0]
  for leaf in ("kernel", "bias"):
    np.testing.assert_allclose(change["head"][leaf], -lr * closed["head"][leaf], rtol=1e-3, atol=1e-4 * scale)
    assert float(jnp.abs(change["head"][leaf]).max()) > 0
