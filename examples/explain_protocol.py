"""Explainability report pieces: measure a trained model with every method and metric, write Markdown + a figure.

A model enters as :class:`ModelFns` (pure functions) plus its params, so the report does not depend on how the
model was built or trained. :func:`evaluate` measures, each metric with the protocol of the paper it is named
after (the captions of :func:`benchmarks.explain_tables.write_markdown` state them):

* test accuracy and the orthogonality gap of the feature kernels;
* reconstruction MSE / PSNR from every depth (:mod:`bort_jax.explain.reconstruction`);
* the B-cos grid pointing game (Böhle et al., CVPR 2022): grids of confident, correctly classified test images,
  every cell scored (:func:`pointing_game`);
* RISE deletion / insertion AUC (Petsiuk et al., BMVC 2018): top predicted class, deletion to the channel mean,
  insertion from a blurred image (:func:`deletion_insertion`);
* BSM / BIG (Wang et al., ICML 2022) from the PGD-L2 + CW-L2 boundary search for the predicted class, BIG with
  captum's trapezoid rule, and the completeness error of IG and BIG;
* explainable adversarial samples next to targeted PGD-L2 (:func:`adversarial_comparison`).

:func:`figure_panels` and :func:`write_figure` draw inputs, reconstructions and saliency maps;
:mod:`benchmarks.explain_tables` aggregates seeds into Markdown tables. What a report is about (title, setup,
claims to check) is the caller's: ``benchmarks/explain_report.py`` is one.
"""

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import functools
import pathlib
import re
import time
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import bort_jax
from bort_jax.explain import adversarial
from bort_jax.explain import attributions
from bort_jax.explain import metrics
from bort_jax.explain import reconstruction
from bort_jax.explain.backtrack import backtrack as backtrack_fn


class ModelFns(NamedTuple):
  """Pure functions of one model family; ``params`` is passed separately so seeds share compilations."""
  apply_fn: Callable                                     # (params, x) -> logits on raw images in [0, 1]
  features_fns: Mapping[str, Callable] = {}              # depth name -> (params, x) -> features, forward order
  head_fn: Callable | None = None                        # (params, last features) -> logits
  kernels_fn: Callable | None = None                     # params -> {layer name: Conv/Linear kernel} to the last depth
  explain_fn: Callable | None = None                     # (params, x, target) -> model-native attribution


# Radii of the PGD-L2 stage of the boundary search for images in [0, 1]. Wang et al.'s radii (their
# ``attributions.BOUNDARY_EPSILONS``, 0.14–1.1) are in ImageNet-normalised units on 224×224×3 inputs.
PIXEL_EPSILONS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
NUM_RECONSTRUCTION = 1000                                # test images of the reconstruction table
ADVERSARIAL_STEPS = 20
ADVERSARIAL_EPSILON = 3.0

_CHUNK = 100
_gradient = jax.jit(attributions.gradient, static_argnums=0)
_input_x_gradient = jax.jit(attributions.input_x_gradient, static_argnums=0)
_ig = jax.jit(attributions.integrated_gradients, static_argnums=0, static_argnames=("steps", "method"))
_boundary_search = attributions.boundary_search           # jitted and cached per apply_fn inside
_backtrack = jax.jit(backtrack_fn, static_argnums=(0, 3), static_argnames=("by", "head_fn"))
_curve = jax.jit(metrics.perturbation_curve, static_argnums=0,
                 static_argnames=("mode", "substrate", "pixels_per_step", "steps", "score", "blur_size",
                                  "blur_sigma"))
_logits = jax.jit(lambda apply_fn, params, x: apply_fn(params, x), static_argnums=0)


def _conv_or_dense_views(kernels: Mapping[str, jax.Array]) -> list:
  """Exact views of `kernels_fn`'s Conv / Linear kernels (their names alone would leave ConvLocal possible)."""
  return [(re.escape(name) + "/kernel", bort_jax.KernelView(in_axes=tuple(range(k.ndim - 1)), out_axes=(k.ndim - 1,)))
          for name, k in kernels.items()]


def _chunked(fn: Callable, *arrays: np.ndarray):
  """Apply ``fn`` over leading-axis chunks of fixed size (one compilation per shape); a tuple-valued ``fn``
  gives a tuple of concatenated arrays."""
  outs = [fn(*(a[i:i + _CHUNK] for a in arrays)) for i in range(0, len(arrays[0]), _CHUNK)]
  if isinstance(outs[0], tuple):
    return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0])))
  return np.concatenate([np.asarray(o) for o in outs])


def ig_name(steps: int) -> str:
  return f"IG ({steps} steps)"


def big_name(steps: int) -> str:
  return f"BIG ({steps} steps)"


def attribution_methods(fns: ModelFns, params, ig_steps: int = 16, top_fraction: float = 0.1
                        ) -> dict[str, Callable]:
  """name -> ``(x, target) -> attribution`` for every method the model supports (IG: zero baseline, midpoint)."""
  methods = {
      "gradient": lambda x, t: _gradient(fns.apply_fn, params, x, t),
      "input×gradient": lambda x, t: _input_x_gradient(fns.apply_fn, params, x, t),
      ig_name(ig_steps): lambda x, t: _ig(fns.apply_fn, params, x, t, 0.0, steps=ig_steps),
  }
  if fns.head_fn is not None:
    features_fn = list(fns.features_fns.values())[-1]

    def backtracked(x, t):
      units = int(np.prod(jax.eval_shape(features_fn, params, x).shape[1:]))
      k = max(1, int(top_fraction * units))
      return _backtrack(features_fn, params, x, k, head_fn=fns.head_fn, target=t)

    methods[f"backtracking (top {top_fraction:.0%})"] = backtracked
  if fns.explain_fn is not None:
    methods["B-cos W(x)⊙x"] = lambda x, t: fns.explain_fn(params, x, t)
  return methods


def pointing_game(methods: Mapping[str, Callable], grids, cell_labels, grid_size: int, smooth: int = 1
                  ) -> dict[str, float]:
  """Mean B-cos localisation score per method over every cell of ``grids`` (from ``metrics.make_grids``).

  Each cell is explained for its own class on the whole grid and scored by ``metrics.pointing_game_score``
  (positive attribution in the cell / total positive attribution, after a ``smooth``×``smooth`` box filter).
  NaN when no grid could be built.
  """
  grid_index, targets, cells = metrics.grid_cells(cell_labels)
  if not len(grid_index):
    return {name: float("nan") for name in methods}
  scores = {}
  for name, method in methods.items():
    score = lambda gi, t, c: metrics.pointing_game_score(method(grids[gi], t), grid_size, c, smooth=smooth)
    scores[name] = float(_chunked(score, grid_index, targets, cells).mean())
  return scores


def deletion_insertion(fns: ModelFns, params, attributions_by_method: Mapping[str, np.ndarray], x, channel_mean,
                       pixels_per_step: int | None = None) -> dict[str, dict[str, float]]:
  """RISE deletion / insertion AUC per method (``metrics.perturbation_curve`` defaults).

  Softmax probability of the top predicted class; deleted pixels take ``channel_mean`` (zero in the normalised
  space of a model on raw images), insertion starts from the 11×11, σ = 5 blur; ``pixels_per_step`` None is
  RISE's ⌈H·W/28⌉.
  """
  out = {}
  for name, attribution in attributions_by_method.items():
    out[name] = {mode: float(_chunked(lambda xx, aa: metrics.curve_auc(
        _curve(fns.apply_fn, params, xx, aa, mode=mode, baseline=channel_mean, pixels_per_step=pixels_per_step)),
        x, attribution).mean())
        for mode in metrics.CURVE_MODES}
  return out


def evaluate(fns: ModelFns, params, x_test, y_test, x_train, y_train, *, num_grids: int = 500,
             num_eval: int = 200, num_big: int = 100, ig_steps: int = 16, channel_mean=None, smooth: int = 1,
             epsilons: Sequence[float] = PIXEL_EPSILONS, cw_epsilon: float | None = None,
             pixels_per_step: int | None = None) -> dict[str, Any]:
  """Every metric of one trained model; plain floats in nested dicts (JSON-ready), ``"seconds"`` per phase.

  Args:
    x_test, y_test: test images (NHWC in [0, 1]) and labels; the grids, the deletion / insertion images (the
      first ``num_eval``) and the BSM / BIG / adversarial images (the first ``num_big``) come from them.
    x_train, y_train: training images for the class prototypes of the explainable adversarial samples.
    num_grids: grids per size (2×2, 3×3), fewer when the confident, correct test images run out.
    channel_mean: per-channel training mean, the deletion value; None: the mean of ``x_train``.
    smooth: box filter of the pointing game (the B-cos authors: 1 on CIFAR-10, 15 on ImageNet).
    epsilons: PGD-L2 radii of the boundary search (images in [0, 1]).
    cw_epsilon: radius the CW-L2 point is clipped to; None: ``max(epsilons)``, as the authors' CW radius (1.0)
      sits at the top of their PGD radii (up to 1.1).
    pixels_per_step: deletion / insertion schedule; None: RISE's ⌈H·W/28⌉.
  """
  out: dict[str, Any] = {"seconds": {}}
  clock = [time.perf_counter()]

  def lap(phase: str) -> None:                           # wall seconds per phase, for planning runs
    now = time.perf_counter()
    out["seconds"][phase] = now - clock[0]
    clock[0] = now

  logits = _chunked(lambda x: _logits(fns.apply_fn, params, x), x_test)
  num_classes = logits.shape[-1]
  out["accuracy"] = float((logits.argmax(-1) == y_test).mean())
  if fns.kernels_fn is not None:
    kernels = fns.kernels_fn(params)
    gaps = bort_jax.orthogonality_gap({name: {"kernel": k} for name, k in kernels.items()},
                                      views=_conv_or_dense_views(kernels))
    out["orthogonality_offdiag"] = float(np.mean([float(g.offdiag) for g in gaps.values()]))
    scales = reconstruction.depth_scales(list(kernels.values()))
    depths = list(fns.features_fns)
    recon = reconstruction.reconstruction_by_depth(
        fns.features_fns, params, jnp.asarray(x_test[:NUM_RECONSTRUCTION]), dict(zip(depths, scales)))
    out["reconstruction"] = {d: {k: float(v) for k, v in r.items()} for d, r in recon.items()}
  lap("accuracy_reconstruction")

  methods = attribution_methods(fns, params, ig_steps)
  out["pointing_game"], out["pointing_game_grids"] = {}, {}
  for g in (2, 3):
    grids, cell_labels = metrics.make_grids(x_test, y_test, g, num_grids, logits=logits)
    out["pointing_game"][f"{g}x{g}"] = pointing_game(methods, grids, cell_labels, g, smooth)
    out["pointing_game_grids"][f"{g}x{g}"] = len(grids)
  lap("pointing_game")

  # RISE and Wang et al. explain the predicted class; deleted pixels take the training mean.
  channel_mean = np.asarray(x_train.mean((0, 1, 2)) if channel_mean is None else channel_mean, np.float32)
  x, target = x_test[:num_eval], logits[:num_eval].argmax(-1).astype(np.int32)
  maps = {name: _chunked(method, x, target) for name, method in methods.items()}
  lap("maps")
  xb, tb = x[:num_big], target[:num_big]
  cw_epsilon = max(epsilons) if cw_epsilon is None else cw_epsilon
  boundary, found = _chunked(lambda xx, tt: _boundary_search(fns.apply_fn, params, xx, tt, epsilons,
                                                              cw_epsilon=cw_epsilon), xb, tb)
  lap("boundary_search")
  big = big_name(ig_steps)
  big_maps = {
      "BSM": _chunked(lambda bb, tt: _gradient(fns.apply_fn, params, bb, tt), boundary, tb),
      big: _chunked(lambda xx, bb, tt: _ig(fns.apply_fn, params, xx, tt, bb, steps=ig_steps,
                                           method="riemann_trapezoid"), xb, boundary, tb),
  }
  out["deletion_insertion"] = deletion_insertion(fns, params, maps, x, channel_mean, pixels_per_step)
  out["deletion_insertion"].update(deletion_insertion(fns, params, big_maps, xb, channel_mean, pixels_per_step))
  lap("deletion_insertion")
  out["boundary_l2"] = float(np.linalg.norm((boundary - xb).reshape(len(xb), -1), axis=1).mean())
  out["boundary_found"] = float(found.mean())

  def f(z, t):
    return np.take_along_axis(_chunked(lambda zz: _logits(fns.apply_fn, params, zz), z), t[:, None], 1)[:, 0]

  def rel_error(attribution, gap):
    keep = gap != 0
    return np.median(np.abs(attribution.reshape(len(gap), -1).sum(1)[keep] - gap[keep]) / np.abs(gap[keep]))

  # IG (midpoint rule) sums to f(x) − f(0); BIG (captum's trapezoid, n points) to (n − 1)/n · (f(x) − f(x')).
  # Samples without a gap (f(x) = f(x'), e.g. no boundary point found) are left out of the ratio.
  out["completeness_rel_error"] = {
      ig_name(ig_steps): float(rel_error(maps[ig_name(ig_steps)], f(x, target) - f(np.zeros_like(x), target))),
      big: float(rel_error(big_maps[big], (ig_steps - 1) / ig_steps * (f(xb, tb) - f(boundary, tb))))}

  if fns.head_fn is not None:
    out["adversarial"] = adversarial_comparison(fns, params, xb, y_test[:num_big], x_train, y_train, num_classes)
  lap("completeness_adversarial")
  return out


def adversarial_comparison(fns: ModelFns, params, x, label, x_train, y_train, num_classes: int = 10
                           ) -> dict[str, dict[str, float]]:
  """Explainable adversarial samples (latent move + backtracking) vs targeted PGD-L2, target = (y + 1) mod C."""
  features_fn = list(fns.features_fns.values())[-1]
  scale = reconstruction.depth_scales(list(fns.kernels_fn(params).values()))[-1]
  prototypes = adversarial.class_prototypes(features_fn, params, jnp.asarray(x_train), jnp.asarray(y_train),
                                            num_classes)
  target = (np.asarray(label) + 1) % num_classes
  explainable = jax.jit(functools.partial(adversarial.explainable_adversarial, features_fn, fns.apply_fn,
                                          steps=ADVERSARIAL_STEPS, step_size=0.25))(
      params, x, target, prototypes, scale=scale)
  pgd = jax.jit(functools.partial(adversarial.pgd_attack, fns.apply_fn, norm="l2", steps=ADVERSARIAL_STEPS))(
      params, x, target, ADVERSARIAL_EPSILON)
  return {f"explainable ({ADVERSARIAL_STEPS} steps)": {
              k: float(v) for k, v in adversarial.summarize(explainable).items()},
          f"PGD-L2 ε={ADVERSARIAL_EPSILON:g} ({ADVERSARIAL_STEPS} steps)": {
              k: float(v) for k, v in adversarial.summarize(pgd).items()}}


def _image(x) -> np.ndarray:
  """(N, H, W) for one channel, (N, H, W, 3) for RGB."""
  x = np.asarray(x)
  return x[..., 0] if x.shape[-1] == 1 else x


def figure_panels(models: Mapping[str, tuple[ModelFns, Any]], x, label, depths: Sequence[str] = ()
                  ) -> dict[str, np.ndarray]:
  """Columns of the Fig. 1a-style figure: input, reconstructions from each of ``depths`` (their best scalar
  multiple c·x̂, as the fitted PSNR; a model without that depth is skipped, a depth no model has is a
  ValueError), saliency maps of the label (backtracking, or B-cos W(x)⊙x)."""
  unknown = [d for d in depths if not any(d in fns.features_fns for fns, _ in models.values())]
  if unknown:
    raise ValueError(f"depths {unknown} are not accepted: no model has them; accepted values: "
                     f"{sorted({d for fns, _ in models.values() for d in fns.features_fns})}")
  panels = {"input": _image(x)}
  saliency = {}
  for name, (fns, params) in models.items():
    names = list(fns.features_fns)
    wanted = [d for d in depths if d in fns.features_fns]
    scales = reconstruction.depth_scales(list(fns.kernels_fn(params).values())) if wanted else []
    for depth in wanted:
      x_hat = reconstruction.reconstruct(fns.features_fns[depth], params, jnp.asarray(x), scales[names.index(depth)])
      panels[f"{name} c·x̂ ({depth})"] = _image(reconstruction.fitted_scale(jnp.asarray(x), x_hat) * x_hat)
    methods = attribution_methods(fns, params)
    method = next(m for m in methods if m.startswith(("backtracking", "B-cos")))
    saliency[f"{name} {method.split(' (')[0]}"] = np.asarray(metrics.pixel_map(methods[method](x, label)))
  return panels | saliency


def write_figure(panels: Mapping[str, np.ndarray], path: pathlib.Path, title: str | None = None) -> None:
  """Grid of images (rows: samples, columns: panels); saliency in a symmetric blue-white-red map.

  A panel whose title is ``"input"`` or contains ``"x̂"`` is an image in [0, 1] ((N, H, W) gray or (N, H, W, 3)
  RGB); every other panel is an (N, H, W) saliency map.
  """
  import matplotlib  # imported here: matplotlib is only in the examples/test extras, not in `flax`
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows, cols = len(panels["input"]), len(panels)
  top = 0.14 * ((title or "").count("\n") + 1) * bool(title)   # inches kept free for the title
  height = 1.1 * rows + 0.4 + top
  fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, height), squeeze=False)
  for c, (name, images) in enumerate(panels.items()):
    is_saliency = "x̂" not in name and name != "input"
    for r in range(rows):
      ax = axes[r, c]
      if is_saliency:
        v = np.abs(images[r]).max() + 1e-12
        ax.imshow(images[r], cmap="bwr", vmin=-v, vmax=v)
      else:
        ax.imshow(np.clip(images[r], 0, 1), cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([]), ax.set_yticks([])
    axes[0, c].set_title(name, fontsize=6)
  if title:
    fig.suptitle(title, fontsize=7)
  fig.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - top / height))
  fig.savefig(path, dpi=90)
  plt.close(fig)
