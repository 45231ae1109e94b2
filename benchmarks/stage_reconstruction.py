"""Reconstruction from every feature depth of a trained example model: the PSNR numbers of the γ sweeps, the
tables and the CIFAR-10 explain figure (one measurement, so their numbers agree)."""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bort_jax.explain import reconstruction
from examples import data as data_lib
from examples import models as models_lib
from examples import train

# Feature depths in forward order; the last is "the last feature layer". MNIST models: kernels whose ReLU
# outputs are the features. ResNet / ViT: the stages of their `feature_stages()` (stem or embedding, stages or
# evenly spaced blocks), the last being FEATURES, the model's `features(x)` (last stage / final LayerNorm tokens).
FEATURES = "features"
FEATURE_LAYERS = {"mlp": ("layers/0", "layers/1"), "lenet5": ("conv1", "conv2", "fc1", "fc2")}
RECONSTRUCTION_BATCH = 100
NUM_RECONSTRUCTED = 1000


def _lookup(tree, path: str):
  for part in path.split("/"):
    tree = tree[int(part)] if part.isdigit() and int(part) in tree else tree[part]
  return tree


def feature_reconstruction(config: ml_collections.ConfigDict, state: train.TrainState):
  """The trained model's features at every depth, in forward order, for `bort_jax.explain.reconstruction`.

  Returns (params, {depth name: features_fn(params, pixels)}, scales_fn(params) -> {depth name: scale}, std):
  `pixels` are the normalized images the model sees times `std` (pixels minus the mean; `train.input_normalization`,
  so mean 0 and std 1 with `config.normalize=False`), and the scales turn
  J(x)ᵀ f(x) into x̂ in those units. MNIST models: the ReLU outputs of the layers in `FEATURE_LAYERS`, read from
  the model's sown pre-activations (`capture=True`, the DBort hook), scale 1/∏α of those layers. ResNet / ViT:
  the model's `features` at each of its `feature_stages()`, scale 1, so only a fitted-scale PSNR is meaningful.
  """
  stats = train.input_normalization(config)
  num_classes = config.num_classes or data_lib.num_classes(config.dataset, config.data_dir or None)
  model = models_lib.create_model(config.model, num_classes=num_classes, rngs=nnx.Rngs(0), use_bias=config.use_bias,
                                  capture=True, **dict(config.model_kwargs))
  model.eval()
  graph = nnx.split(model, nnx.Param, ...)[0]
  stages = model.feature_stages() if hasattr(model, "feature_stages") else None
  layers = tuple(stages or FEATURE_LAYERS[config.model])
  std = jnp.asarray(stats.std, jnp.float32)

  def features_fn(layer):
    def fn(params, pixels):
      net = nnx.merge(graph, params, state.model_state)
      if stages:
        return nnx.capture(lambda m, x: m.features(x, stages[layer]), nnx.Intermediate)(net, pixels / std)[0]
      _, sown = nnx.capture(net, nnx.Intermediate)(pixels / std)
      return jax.nn.relu(_lookup(nnx.to_pure_dict(sown), layer)["preact"][0])
    return fn

  def scales_fn(params):
    # J over pixels is J over normalized inputs divided by std: std² turns x̂ into the normalized x̂ times std.
    scales = (jnp.ones(len(layers)) if stages
              else reconstruction.depth_scales([_lookup(params, layer)["kernel"] for layer in layers]))
    return {layer: s * std ** 2 for layer, s in zip(layers, scales)}

  return jax.device_get(state.params), {layer: features_fn(layer) for layer in layers}, scales_fn, std


def reconstruction_metrics(config: ml_collections.ConfigDict, state: train.TrainState, images: np.ndarray,
                           built=None) -> dict[str, dict[str, float]]:
  """Reconstruction MSE / PSNR / fitted PSNR from every feature depth of the trained model, on `images`.

  The depths and scales are `feature_reconstruction`'s (ResNet / ViT: scale 1, only the fitted PSNR is
  meaningful). The model's own forward pass is differentiated, on the normalized images it sees; errors are
  measured in [0, 1] pixel space (each channel's difference times its std), where the peak is 1. Means over the
  first `NUM_RECONSTRUCTED` images, in batches of `RECONSTRUCTION_BATCH`. `built`: `feature_reconstruction(config,
  state)` when the caller has it already.
  """
  params, features_fns, scales_fn, std = built or feature_reconstruction(config, state)

  @jax.jit
  def measure(params, x):
    return reconstruction.reconstruction_by_depth(features_fns, params, x * std, scales_fn(params))

  x = train.normalize_images(jnp.asarray(images[:NUM_RECONSTRUCTED]), train.input_normalization(config))
  parts = [jax.device_get(measure(params, x[i:i + RECONSTRUCTION_BATCH]))
           for i in range(0, len(x), RECONSTRUCTION_BATCH)]
  sizes = [min(RECONSTRUCTION_BATCH, len(x) - i) for i in range(0, len(x), RECONSTRUCTION_BATCH)]
  return {layer: {k: float(np.average([p[layer][k] for p in parts], weights=sizes)) for k in parts[0][layer]}
          for layer in features_fns}


def zero_image_psnr(config: ml_collections.ConfigDict, images: np.ndarray) -> float:
  """PSNR of x̂ = 0 on the images `reconstruction_metrics` scores: the fitted PSNR's floor, as the least-squares
  scale c = 0 is always a choice. A stage at this floor keeps nothing of the image."""
  centred = images[:NUM_RECONSTRUCTED] / 255.0 - np.asarray(train.input_normalization(config).mean)
  return float(np.mean(reconstruction.reconstruction_errors(jnp.asarray(centred), jnp.zeros(centred.shape))[1]))
