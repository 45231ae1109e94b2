"""`explain.png`, the figure that ends the README's main job: what Bort buys, visible in two minutes.

For a trained MLP, LeNet-5 or ConvNet: a few test images, their reconstruction x̂ = J(x)ᵀ f(x) from every depth
(`bort_jax.explain.reconstruct`) and the backtracking saliency of the top features of the last hidden layer
(`bort_jax.explain.backtrack`). Other models are skipped with a message.
"""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from bort_jax import explain
from bort_jax.explain import reconstruction
from examples import data as data_lib
from examples import explain_protocol
from examples import models as models_lib
from examples import train

EXPLAIN_IMAGES = 6
TOP_FRACTION = 0.1  # backtracking keeps this share of the last hidden layer's units


def feature_depths(model: nnx.Module):
  """(depth name -> features(model, x), head(model, last features) -> logits) of an MLP, LeNet-5 or the report's
  ConvNet, else None."""
  relu, pool = jax.nn.relu, lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2))
  flat = lambda y: y.reshape(y.shape[0], -1)
  if hasattr(model, "layers"):  # MLP: the ReLU output of every hidden layer
    def hidden(d):
      def features(m, x):
        h = flat(x)
        for layer in m.layers[:d]:
          h = relu(layer(h))
        return h
      return features
    return {f"fc{d}": hidden(d) for d in range(1, len(model.layers))}, lambda m, h: m.layers[-1](h)
  if all(hasattr(model, n) for n in ("conv1", "conv2", "fc1", "fc2", "fc3")):  # LeNet-5, after each pool / ReLU
    conv1 = lambda m, x: pool(relu(m.conv1(x)))
    conv2 = lambda m, x: pool(relu(m.conv2(conv1(m, x))))
    fc1 = lambda m, x: relu(m.fc1(flat(conv2(m, x))))
    fc2 = lambda m, x: relu(m.fc2(fc1(m, x)))
    return {"conv1": conv1, "conv2": conv2, "fc1": fc1, "fc2": fc2}, lambda m, h: m.fc3(h)
  if isinstance(model, models_lib.ConvNet):  # the ReLU output of every 3×3 convolution
    return ({f"conv{d}": lambda m, x, d=d: m.features(x, d) for d in range(1, len(model.convs) + 1)},
            lambda m, h: m.head(h).mean((1, 2)))
  return None


def write_explain_figure(config, workdir: str, state, data_dir: str | None) -> str | None:
  """Draws `workdir/explain.png` for the trained `state` of an MLP, LeNet-5 or ConvNet; its path (None: skipped).

  Columns: the first test image of each of a few classes; x̂ = J(x)ᵀ f(x) from every depth (the best scalar
  multiple of x̂, its fitted PSNR in the title); backtracking saliency of the top 10% units of the last hidden
  layer, ranked by their contribution to the predicted class. Images are shown un-normalised.
  """
  test_images, test_labels = data_lib.as_arrays(train.load_splits(config, data_dir)[1])
  model = train.create_model(
      config, config.num_classes or data_lib.num_classes(config.dataset, data_dir or config.data_dir or None))
  depths = feature_depths(model)
  if depths is None:
    print(f"explain.png: not drawn for config.model={config.model!r} (MLP, LeNet-5 and ConvNet only)")
    return None
  features_by_depth, head = depths
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  nnx.replace_by_pure_dict(params, jax.device_get(state.params))
  net = lambda p: nnx.merge(graphdef, p, rest)
  fns = {name: (lambda p, x, f=f: f(net(p), x)) for name, f in features_by_depth.items()}

  labels = np.asarray(test_labels)
  classes = np.unique(labels)[np.linspace(0, len(np.unique(labels)) - 1, EXPLAIN_IMAGES).astype(int)]
  pick = [int(np.flatnonzero(labels == c)[0]) for c in classes]
  stats = train.input_normalization(config)
  mean, std = np.asarray(stats.mean, np.float32), np.asarray(stats.std, np.float32)
  raw = np.stack([np.asarray(test_images[i]) for i in pick]).astype(np.float32) / 255.0
  x = jnp.asarray((raw - mean) / std)
  show = lambda z: np.asarray(z) * std + mean
  gray = lambda a: a[..., 0] if a.shape[-1] == 1 else a

  panels = {"input": gray(raw)}
  for name, fn in fns.items():
    x_hat = reconstruction.reconstruct(fn, params, x)
    c = reconstruction.fitted_scale(x, x_hat)
    _, psnr = reconstruction.reconstruction_errors(jnp.asarray(raw), jnp.asarray(show(c * x_hat)))
    panels[f"x̂ {name}\n{float(psnr.mean()):.1f} dB"] = gray(np.clip(show(c * x_hat), 0, 1))
  last = list(fns)[-1]
  logits = net(params)(x)
  units = int(np.prod(jax.eval_shape(fns[last], params, x).shape[1:]))
  saliency = explain.backtrack(fns[last], params, x, max(1, int(TOP_FRACTION * units)),
                               head_fn=lambda p, h: head(net(p), h), target=jnp.argmax(logits, -1))
  panels[f"backtracking\n{last}, top {TOP_FRACTION:.0%}"] = np.asarray(explain.pixel_map(saliency))
  path = os.path.join(workdir, "explain.png")
  explain_protocol.write_figure(panels, path, title=f"{config.model} / {config.dataset} / {config.optimizer}:\n"
                                          "reconstruction from each depth, backtracking saliency")
  return path
