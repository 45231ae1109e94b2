"""Explainability report: measure a trained model with every method and metric, write Markdown + a figure.

A model enters as :class:`ModelFns` (pure functions) plus its params, so the report does not depend on how the
model was built or trained. Measured per model: test accuracy, orthogonality gap, reconstruction MSE / PSNR per
depth, grid pointing game (2×2, 3×3), deletion / insertion AUC, IG / BIG completeness error, and explainable
adversarial samples next to PGD-L2 (success rate, perturbation L2).
"""

import functools
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import bort_jax
from bort_jax.explain import adversarial
from bort_jax.explain import attributions
from bort_jax.explain.backtrack import backtrack as backtrack_fn
from bort_jax.explain import metrics
from bort_jax.explain import reconstruction


class ModelFns(NamedTuple):
  """Pure functions of one model family; ``params`` is passed separately so seeds share compilations."""
  apply_fn: Callable                                     # (params, x) -> logits on raw images in [0, 1]
  features_fns: Mapping[str, Callable] = {}              # depth name -> (params, x) -> features, forward order
  head_fn: Callable | None = None                        # (params, last features) -> logits
  kernels_fn: Callable | None = None                     # params -> {layer name: kernel} up to the last depth
  explain_fn: Callable | None = None                     # (params, x, target) -> model-native attribution


_CHUNK = 100
_gradient = jax.jit(attributions.gradient, static_argnums=0)
_input_x_gradient = jax.jit(attributions.input_x_gradient, static_argnums=0)
_ig = jax.jit(attributions.integrated_gradients, static_argnums=0, static_argnames=("steps", "method"))
_boundary_search = jax.jit(attributions.boundary_search, static_argnums=(0, 4),
                           static_argnames=("attack_steps", "stop_on_success", "clip"))
_backtrack = jax.jit(backtrack_fn, static_argnums=(0, 3), static_argnames=("by", "head_fn"))
_curve = jax.jit(metrics.perturbation_curve, static_argnums=0, static_argnames=("mode", "steps", "score"))
_logits = jax.jit(lambda apply_fn, params, x: apply_fn(params, x), static_argnums=0)
_EPSILONS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)


def _chunked(fn: Callable, *arrays: np.ndarray) -> np.ndarray:
  """Apply ``fn`` over leading-axis chunks of fixed size (one compilation per shape)."""
  return np.concatenate([np.asarray(fn(*(a[i:i + _CHUNK] for a in arrays)))
                         for i in range(0, len(arrays[0]), _CHUNK)])


def attribution_methods(fns: ModelFns, params, ig_steps: int = 16, top_fraction: float = 0.1
                        ) -> dict[str, Callable]:
  """name -> ``(x, target) -> attribution`` for every method the model supports."""
  methods = {
      "gradient": lambda x, t: _gradient(fns.apply_fn, params, x, t),
      "input×gradient": lambda x, t: _input_x_gradient(fns.apply_fn, params, x, t),
      f"IG ({ig_steps} steps)": lambda x, t: _ig(fns.apply_fn, params, x, t, 0.0, steps=ig_steps),
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


def pointing_game(methods: Mapping[str, Callable], x_test, y_test, grid_size: int, num_grids: int
                  ) -> dict[str, float]:
  """Mean grid pointing-game score per method on ``num_grids`` fixed grids (data seed 0, one target cell each)."""
  grids, cell_labels = metrics.make_grids(x_test, y_test, grid_size, num_grids, seed=0)
  cells = np.random.default_rng(1).integers(grid_size**2, size=num_grids)
  targets = cell_labels[np.arange(num_grids), cells].astype(np.int32)
  scores = {}
  for name, method in methods.items():
    score = lambda x, t, c: metrics.pointing_game_score(method(x, t), grid_size, c)
    scores[name] = float(_chunked(score, grids, targets, cells).mean())
  return scores


def deletion_insertion(fns: ModelFns, params, attributions_by_method: Mapping[str, np.ndarray], x, target,
                       steps: int = 14) -> dict[str, dict[str, float]]:
  """Deletion / insertion AUC of the softmax target probability (zero baseline), per method."""
  out = {}
  for name, attribution in attributions_by_method.items():
    out[name] = {mode: float(_chunked(lambda xx, aa, tt: metrics.curve_auc(
        _curve(fns.apply_fn, params, xx, aa, tt, mode=mode, steps=steps)), x, attribution, target).mean())
        for mode in metrics.CURVE_MODES}
  return out


def evaluate(fns: ModelFns, params, x_test, y_test, x_train, y_train, *, num_grids: int = 500,
             num_eval: int = 200, num_big: int = 100, ig_steps: int = 16) -> dict[str, Any]:
  """Every metric of one trained model; plain floats in nested dicts (JSON-ready)."""
  out: dict[str, Any] = {}
  logits = _chunked(lambda x: _logits(fns.apply_fn, params, x), x_test)
  out["accuracy"] = float((logits.argmax(-1) == y_test).mean())
  if fns.kernels_fn is not None:
    kernels = fns.kernels_fn(params)
    gaps = bort_jax.orthogonality_gap({name: {"kernel": k} for name, k in kernels.items()})
    out["orthogonality_offdiag"] = float(np.mean([float(g.offdiag) for g in gaps.values()]))
    scales = reconstruction.depth_scales(list(kernels.values()))
    depths = list(fns.features_fns)
    recon = reconstruction.reconstruction_by_depth(
        fns.features_fns, params, jnp.asarray(x_test[:1000]), dict(zip(depths, scales)))
    out["reconstruction"] = {d: {k: float(v) for k, v in r.items()} for d, r in recon.items()}

  methods = attribution_methods(fns, params, ig_steps)
  out["pointing_game"] = {f"{g}x{g}": pointing_game(methods, x_test, y_test, g, num_grids) for g in (2, 3)}

  x, target = x_test[:num_eval], y_test[:num_eval]
  maps = {name: _chunked(method, x, target) for name, method in methods.items()}
  xb, tb = x[:num_big], target[:num_big]
  boundary = _chunked(lambda xx, tt: _boundary_search(fns.apply_fn, params, xx, tt, _EPSILONS, attack_steps=10)[0],
                      xb, tb)
  big_maps = {
      "BSM": _chunked(lambda xx, bb, tt: _gradient(fns.apply_fn, params, bb, tt), xb, boundary, tb),
      f"BIG ({ig_steps} steps)": _chunked(lambda xx, bb, tt: _ig(fns.apply_fn, params, xx, tt, bb,
                                                                  steps=ig_steps), xb, boundary, tb),
  }
  out["deletion_insertion"] = deletion_insertion(fns, params, maps, x, target)
  out["deletion_insertion"].update(deletion_insertion(fns, params, big_maps, xb, tb))
  out["boundary_l2"] = float(np.linalg.norm((boundary - xb).reshape(num_big, -1), axis=1).mean())

  def f(z, t):
    return np.take_along_axis(_chunked(lambda zz: _logits(fns.apply_fn, params, zz), z), t[:, None], 1)[:, 0]

  ig_name, big_name = f"IG ({ig_steps} steps)", f"BIG ({ig_steps} steps)"

  def rel_error(attribution, gap):
    keep = gap != 0
    return np.median(np.abs(attribution.reshape(len(gap), -1).sum(1)[keep] - gap[keep]) / np.abs(gap[keep]))

  # A misclassified sample is its own boundary point (f(x) − f(x') = 0): left out of the BIG ratio.
  out["completeness_rel_error"] = {
      ig_name: float(rel_error(maps[ig_name], f(x, target) - f(np.zeros_like(x), target))),
      big_name: float(rel_error(big_maps[big_name], f(xb, tb) - f(boundary, tb)))}

  if fns.head_fn is not None:
    out["adversarial"] = adversarial_comparison(fns, params, xb, tb, x_train, y_train)
  return out


def adversarial_comparison(fns: ModelFns, params, x, label, x_train, y_train) -> dict[str, dict[str, float]]:
  """Explainable adversarial samples (latent move + backtracking) vs targeted PGD-L2, target = (y + 1) mod 10."""
  features_fn = list(fns.features_fns.values())[-1]
  scale = reconstruction.depth_scales(list(fns.kernels_fn(params).values()))[-1]
  prototypes = adversarial.class_prototypes(features_fn, params, jnp.asarray(x_train), jnp.asarray(y_train), 10)
  target = (label + 1) % 10
  explainable = jax.jit(functools.partial(adversarial.explainable_adversarial, features_fn, fns.apply_fn,
                                          steps=20, step_size=0.25))(params, x, target, prototypes, scale=scale)
  pgd = jax.jit(functools.partial(adversarial.pgd_attack, fns.apply_fn, norm="l2", steps=20))(
      params, x, target, 3.0)
  return {"explainable (20 steps)": {k: float(v) for k, v in adversarial.summarize(explainable).items()},
          "PGD-L2 ε=3 (20 steps)": {k: float(v) for k, v in adversarial.summarize(pgd).items()}}


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, float]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def summarize_seeds(results: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
  """model -> metric path -> (mean, std, number of seeds)."""
  by_model: dict[str, dict[str, list[float]]] = {}
  for r in results:
    for key, value in _flatten(r["metrics"]).items():
      by_model.setdefault(r["model"], {}).setdefault(key, []).append(value)
  return {m: {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in d.items()} for m, d in by_model.items()}


def _cell(stats, key: str, digits: int) -> str:
  if key not in stats:
    return "—"
  mean, std, _ = stats[key]
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(summary, header: list[str], rows: list[tuple[str, str]], keys: list[str], digits: int) -> list[str]:
  """Markdown rows: one per (model, row label); ``keys`` are metric paths with ``{row}`` for the label."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for model, label in rows:
    cells = [_cell(summary[model], k.format(row=label), digits) for k in keys]
    if any(c != "—" for c in cells):
      lines.append(f"| {model} | " + (f"{label} | " if label else "") + " | ".join(cells) + " |")
  return lines


def _check(name: str, ok: bool, detail: str) -> str:
  return f"- {'PASS' if ok else 'FAIL'} — {name}: {detail}"


def acceptance(summary) -> list[str]:
  """The issue's acceptance statements, evaluated on the measured means."""
  lines = []
  mean = lambda m, k: summary.get(m, {}).get(k, (float("nan"),))[0]
  depths = sorted({k.split("/")[1] for m in summary for k in summary[m] if k.startswith("reconstruction/")})
  for d in depths:
    for metric, label in (("psnr", "PSNR"), ("psnr_fitted", "fitted PSNR")):
      key = f"reconstruction/{d}/{metric}"
      sgd, bort, dbort = mean("sgd", key), mean("bort", key), mean("dbort", key)
      lines.append(_check(f"Bort {label} > SGD {label} ({d})", bort > sgd, f"{bort:.2f} vs {sgd:.2f} dB"))
      lines.append(_check(f"DBort {label} ≥ Bort {label} ({d})", dbort >= bort, f"{dbort:.2f} vs {bort:.2f} dB"))
  for key in sorted(k for k in summary.get("bort", {}) if k.startswith("pointing_game/")):
    sgd, bort = mean("sgd", key), mean("bort", key)
    lines.append(_check(f"Bort ≥ SGD on {key.split('/', 1)[1]}", bort >= sgd, f"{bort:.3f} vs {sgd:.3f}"))
  return lines


def write_markdown(results: list[dict], path: pathlib.Path, config: Mapping, figure_name: str | None,
                   notes: Sequence[str] = ()) -> str:
  """Markdown report: configuration, figure, one table per metric family, acceptance checks; returns the text."""
  summary = summarize_seeds(results)
  models = list(summary)
  keys_of = lambda prefix: sorted({k[len(prefix):].split("/")[0] for m in models for k in summary[m]
                                   if k.startswith(prefix)})
  methods = keys_of("pointing_game/2x2/")
  depths = keys_of("reconstruction/")
  seeds = sorted({r["seed"] for r in results})
  lines = ["# Explainability on MNIST: SGD vs Bort vs DBort vs B-cos", "",
           f"Mean ± std over seeds {seeds} (per-seed numbers in `{path.with_suffix('.json').name}`). Written by "
           "`benchmarks/explain_report.py`; configuration:", "",
           "```", json.dumps(dict(config), sort_keys=True), "```", ""] + list(notes) + [""]
  if figure_name:
    lines += [f"![inputs, reconstructions and saliency]({figure_name})", ""]
  lines += ["## Models", ""] + _table(summary, ["model", "test accuracy", "orthogonality gap (off-diag RMS)",
                                               "train seconds"],
                                      [(m, "") for m in models],
                                      ["accuracy", "orthogonality_offdiag", "train_seconds"], 3)
  lines += ["", "## Reconstruction x̂ = J(x)ᵀ f(x) / ∏α from each depth (1000 test images)", ""]
  lines += _table(summary, ["model", "depth", "PSNR (dB) ↑", "MSE ↓", "PSNR of the best scalar multiple (dB) ↑"],
                  [(m, d) for m in models for d in depths],
                  ["reconstruction/{row}/psnr", "reconstruction/{row}/mse", "reconstruction/{row}/psnr_fitted"], 3)
  lines += ["", f"## Grid pointing game ({config.get('num_grids')} grids per size, one target cell each) ↑", ""]
  lines += _table(summary, ["model", "method", "2×2", "3×3"], [(m, a) for m in models for a in methods],
                  ["pointing_game/2x2/{row}", "pointing_game/3x3/{row}"], 3)
  all_methods = keys_of("deletion_insertion/")
  lines += ["", f"## Deletion ↓ / insertion ↑ AUC of the softmax probability (zero baseline; "
            f"{config.get('num_eval')} test images, BSM/BIG on the first {config.get('num_big')})", ""]
  lines += _table(summary, ["model", "method", "deletion ↓", "insertion ↑"],
                  [(m, a) for m in models for a in all_methods],
                  ["deletion_insertion/{row}/deletion", "deletion_insertion/{row}/insertion"], 3)
  lines += ["", "## Completeness |Σ a − (f(x) − f(x'))| / |f(x) − f(x')| (median) and boundary distance", ""]
  completeness = keys_of("completeness_rel_error/")
  lines += _table(summary, ["model", *completeness, "mean ‖x − x_boundary‖₂"], [(m, "") for m in models],
                  [f"completeness_rel_error/{k}" for k in completeness] + ["boundary_l2"], 4)
  attacks = keys_of("adversarial/")
  if attacks:
    lines += ["", "## Explainable adversarial samples vs PGD-L2 (target (y+1) mod 10)", ""]
    lines += _table(summary, ["model", "attack", "success rate", "L2 (successful)", "L2 (all)"],
                    [(m, a) for m in models for a in attacks],
                    [f"adversarial/{{row}}/{k}" for k in ("success_rate", "l2_success", "l2_all")], 3)
  lines += ["", "## Acceptance checks (on the means above)", ""] + acceptance(summary) + [""]
  text = "\n".join(lines)
  path.write_text(text)
  return text


def figure_panels(models: Mapping[str, tuple[ModelFns, Any]], x, label, depth: str) -> dict[str, np.ndarray]:
  """Columns of the Fig. 1a-style figure: input, reconstructions from ``depth``, class saliency maps."""
  panels = {"input": np.asarray(x[..., 0])}
  saliency = {}
  for name, (fns, params) in models.items():
    if depth in fns.features_fns:
      scales = reconstruction.depth_scales(list(fns.kernels_fn(params).values()))
      scale = scales[list(fns.features_fns).index(depth)]
      panels[f"{name} x̂ ({depth})"] = np.asarray(
          reconstruction.reconstruct(fns.features_fns[depth], params, jnp.asarray(x), scale)[..., 0])
    methods = attribution_methods(fns, params)
    method = next(m for m in methods if m.startswith(("backtracking", "B-cos")))
    saliency[f"{name} {method.split(' (')[0]}"] = np.asarray(metrics.pixel_map(methods[method](x, label)))
  return panels | saliency


def write_figure(panels: Mapping[str, np.ndarray], path: pathlib.Path) -> None:
  """Grid of images (rows: samples, columns: panels); saliency in a symmetric blue-white-red map."""
  import matplotlib    # imported here: matplotlib is only in the examples/test extras, not in `flax`
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows, cols = len(panels["input"]), len(panels)
  fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4), squeeze=False)
  for c, (title, images) in enumerate(panels.items()):
    is_saliency = "x̂" not in title and title != "input"
    for r in range(rows):
      ax = axes[r, c]
      if is_saliency:
        v = np.abs(images[r]).max() + 1e-12
        ax.imshow(images[r], cmap="bwr", vmin=-v, vmax=v)
      else:
        ax.imshow(np.clip(images[r], 0, 1), cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([]), ax.set_yticks([])
    axes[0, c].set_title(title, fontsize=6)
  fig.tight_layout(pad=0.2)
  fig.savefig(path, dpi=90)
  plt.close(fig)
