"""`explain.png`, the figure that ends the README's main job: what Bort buys, visible in a few minutes.

For a trained MLP, LeNet-5 or ConvNet, and beside it the baseline `examples.main` trained for it (the same config
with a plain optimizer): a few test images, their reconstruction x̂ = J(x)ᵀ f(x) from every depth
(`bort_jax.explain.reconstruct`) with its fitted-scale PSNR, and the backtracking saliency of the top features of
the last hidden layer (`bort_jax.explain.backtrack`). Other models are skipped with a message.
"""

from collections.abc import Mapping
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
PSNR_IMAGES = explain_protocol.NUM_RECONSTRUCTION  # the PSNR is a mean over this many test images, as in the reports


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


def _gray(images: np.ndarray) -> np.ndarray:
  return images[..., 0] if images.shape[-1] == 1 else images


def _explain(net, fns: Mapping, head, params, x, raw, show, num_shown: int):
  """One trained model on normalised images `x` (pixels `raw`, `show` maps back to pixels): {depth: (its c·x̂ of
  the first `num_shown` images in [0, 1], mean fitted-scale PSNR over the others)} and their saliency maps."""
  reconstructions = {}
  for name, fn in fns.items():
    x_hat = reconstruction.reconstruct(fn, params, x)
    fitted = show(reconstruction.fitted_scale(x, x_hat) * x_hat)
    _, psnr = reconstruction.reconstruction_errors(jnp.asarray(raw[num_shown:]), jnp.asarray(fitted[num_shown:]))
    reconstructions[name] = _gray(np.clip(fitted[:num_shown], 0, 1)), float(psnr.mean())
  shown, last = x[:num_shown], list(fns)[-1]
  units = int(np.prod(jax.eval_shape(fns[last], params, shown).shape[1:]))
  saliency = explain.backtrack(fns[last], params, shown, max(1, int(TOP_FRACTION * units)),
                               head_fn=lambda p, h: head(net(p), h), target=jnp.argmax(net(params)(shown), -1))
  return reconstructions, np.asarray(explain.pixel_map(saliency))


def write_explain_figure(config, workdir: str, states: Mapping[str, train.TrainState], data_dir: str | None
                         ) -> str | None:
  """Draws `workdir/explain.png` for trained states of `config`'s MLP, LeNet-5 or ConvNet; its path (None: skipped).

  `states` maps an optimizer name to its final state: `config`'s run first, then its baseline (the same model).
  Columns: the first test image of each of a few classes. Rows: the input; for every depth, each run's
  reconstruction x̂ = J(x)ᵀ f(x) at its best scalar multiple c·x̂, labelled with its fitted-scale PSNR (mean over
  `PSNR_IMAGES` test images); each run's backtracking saliency of the top 10% units of the last hidden layer,
  ranked by their contribution to the predicted class. Images are shown un-normalised.
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

  labels = np.asarray(test_labels)
  classes = np.unique(labels)[np.linspace(0, len(np.unique(labels)) - 1, EXPLAIN_IMAGES).astype(int)]
  pick = [int(np.flatnonzero(labels == c)[0]) for c in classes] + list(range(min(PSNR_IMAGES, len(labels))))
  stats = train.input_normalization(config)
  mean, std = np.asarray(stats.mean, np.float32), np.asarray(stats.std, np.float32)
  raw = np.asarray(test_images)[pick].astype(np.float32) / 255.0
  x = jnp.asarray((raw - mean) / std)
  show = lambda z: np.asarray(z) * std + mean

  explained = {}
  for optimizer, state in states.items():
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # a fresh copy per run: replaced in place
    nnx.replace_by_pure_dict(params, jax.device_get(state.params))
    net = lambda p, g=graphdef, r=rest: nnx.merge(g, p, r)
    fns = {name: (lambda p, x, f=f, net=net: f(net(p), x)) for name, f in features_by_depth.items()}
    explained[optimizer] = _explain(net, fns, head, params, x, raw, show, EXPLAIN_IMAGES)
  # Each depth's rows of all runs together, so that Bort and its baseline are compared at a glance.
  rows = [("input", _gray(raw[:EXPLAIN_IMAGES]), None)]
  rows += [(f"{depth} · {run}\nPSNR {recon[depth][1]:.1f} dB", recon[depth][0], run)
           for depth in features_by_depth for run, (recon, _) in explained.items()]
  rows += [(f"saliency\n{run}", saliency, run) for run, (_, saliency) in explained.items()]
  names = list(states)
  title = f"{config.model} / {config.dataset} / {names[0]}" + (f" vs its baseline {names[1]}" * (len(names) > 1))
  caption = ("x̂ rows: reconstruction x̂ = J(x)ᵀ f(x) from each depth, drawn as c·x̂ with c the best scalar multiple.\n"
             f"dB: fitted-scale PSNR of c·x̂ against the input, mean over the first {len(pick) - EXPLAIN_IMAGES:,} "
             "test images (higher: more of the digit is recovered).\n"
             f"saliency rows: backtracking of the top {TOP_FRACTION:.0%} units of {list(features_by_depth)[-1]} "
             "towards the predicted class, each map divided by its largest |value|.")
  print(f"fitted-scale PSNR (dB) of the reconstructions from {' / '.join(features_by_depth)}, mean over the first "
        f"{len(pick) - EXPLAIN_IMAGES:,} test images:")
  width = max(len(run) for run in explained)
  for run, (recon, _) in explained.items():
    print(f"  {run:<{width}}  " + " / ".join(f"{psnr:.1f}" for _, psnr in recon.values()))
  path = os.path.join(workdir, "explain.png")
  _draw(rows, names, path, title, caption)
  return path


def _draw(rows, runs, path: str, title: str, caption: str):
  """Rows of images (label, (N, H, W[, 3]) array, run name or None for the input); a row whose label starts with
  "saliency" is a signed map in a blue-white-red colour bar, the others images in [0, 1]."""
  import matplotlib  # imported here: matplotlib is only in the examples/test extras, not in `flax`
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  colours = dict(zip(runs, ("tab:blue", "tab:red", "tab:green")))
  cols = len(rows[0][1])
  fig, axes = plt.subplots(len(rows), cols, figsize=(0.85 * cols + 2.2, 0.85 * len(rows) + 1.3), squeeze=False,
                           layout="constrained")
  saliency_axes, image = [], None
  for r, (label, images, run) in enumerate(rows):
    is_saliency = label.startswith("saliency")
    for c in range(cols):
      ax = axes[r, c]
      if is_saliency:
        image = ax.imshow(images[c] / (np.abs(images[c]).max() + 1e-12), cmap="bwr", vmin=-1, vmax=1)
        saliency_axes.append(ax)
      else:
        ax.imshow(np.clip(images[c], 0, 1), cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([]), ax.set_yticks([])
    axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8, color=colours.get(run, "black"))
  if image is not None:
    bar = fig.colorbar(image, ax=saliency_axes, location="right", shrink=0.9, ticks=(-1, 0, 1))
    bar.set_label("saliency / max |saliency|", fontsize=8)
    bar.ax.tick_params(labelsize=7)
  fig.suptitle(title, fontsize=9)
  fig.supxlabel(caption, fontsize=7)
  fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)  # keeps the row labels whole
  plt.close(fig)
