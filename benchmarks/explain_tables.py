"""Markdown tables of an explainability report: seeds aggregated, one table per metric family, each captioned
with the protocol :func:`examples.explain_protocol.evaluate` followed."""

from collections.abc import Mapping
from collections.abc import Sequence
import json
import pathlib

import numpy as np

from examples.explain_protocol import ADVERSARIAL_EPSILON
from examples.explain_protocol import ADVERSARIAL_STEPS
from examples.explain_protocol import NUM_RECONSTRUCTION
from examples.explain_protocol import PIXEL_EPSILONS


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, float]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def summarize_seeds(results: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
  """model -> metric path -> (mean, std, number of seeds measured).

  A NaN (a metric that could not be measured for that seed, e.g. a pointing game without any grid) is left out
  of the mean and the count; a metric no seed measured is (nan, nan, 0).
  """
  by_model: dict[str, dict[str, list[float]]] = {}
  for r in results:
    for key, value in _flatten(r["metrics"]).items():
      by_model.setdefault(r["model"], {}).setdefault(key, []).append(value)
  summary = {}
  for model, metrics in by_model.items():
    summary[model] = {}
    for key, values in metrics.items():
      measured = [float(v) for v in values if not np.isnan(v)]
      summary[model][key] = ((float(np.mean(measured)), float(np.std(measured)), len(measured)) if measured
                             else (float("nan"), float("nan"), 0))
  return summary


def _cell(stats, key: str, digits: int, seeds: int) -> str:
  """mean ± std; "n/a" when no seed measured it, and the count when only some did."""
  if key not in stats:
    return "—"
  mean, std, measured = stats[key]
  if not measured:
    return "n/a"
  cell = f"{mean:.{digits}f} ± {std:.{digits}f}"
  return cell if measured == seeds else f"{cell} ({measured} of {seeds} seeds)"


def _table(summary, header: list[str], rows: list[tuple[str, str]], keys: list[str], digits: int) -> list[str]:
  """Markdown rows: one per (model, row label); ``keys`` are metric paths with ``{row}`` for the label."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for model, label in rows:
    seeds = max(n for _, _, n in summary[model].values())
    cells = [_cell(summary[model], k.format(row=label), digits, seeds) for k in keys]
    if any(c != "—" for c in cells):
      lines.append(f"| {model} | " + (f"{label} | " if label else "") + " | ".join(cells) + " |")
  return lines


def _radii(values) -> str:
  return "{" + ", ".join(f"{float(v):g}" for v in values) + "}"


def default_captions(config: Mapping) -> dict[str, str]:
  """The protocol of each table, from the evaluation options in ``config`` (``evaluate``'s defaults otherwise)."""
  get = lambda key, default: config.get(key) if config.get(key) is not None else default
  ig_steps, num_big, num_eval = get("ig_steps", 16), get("num_big", 100), get("num_eval", 200)
  epsilons = get("boundary_epsilons", PIXEL_EPSILONS)
  cw_epsilon = get("cw_epsilon", max(epsilons))
  smooth = get("smooth", 1)
  pixels = get("pixels_per_step", None)
  return {
      "models": "Models (test accuracy on the whole test split; orthogonality gap: off-diagonal RMS of the "
                "normalised Gram matrix of each feature kernel, averaged over layers)",
      "reconstruction": f"Reconstruction x̂ = J(x)ᵀ f(x) / ∏α from each depth (first {NUM_RECONSTRUCTION} test "
                        "images; PSNR with peak 1 on raw x̂, and of the best scalar multiple c·x̂)",
      "pointing_game": f"Grid pointing game, B-cos protocol (Böhle et al. 2022): up to {get('num_grids', 500)} "
                       "grids per size from each model's correctly classified test images with sigmoid(top "
                       "logit) > 0.5 (for every model, as the authors' code does: top logit > 0 for softmax-trained "
                       "ones), "
                       "taken in decreasing confidence per class, distinct classes per grid "
                       "(seed 42); every cell explained for its own class and scored as positive attribution in "
                       "the cell / total positive attribution (channels summed; B-cos: both input encodings), "
                       + ("no smoothing" if smooth == 1 else f"{smooth}×{smooth} box smoothing") + " ↑",
      "deletion_insertion": "Deletion ↓ / insertion ↑ AUC, RISE protocol (Petsiuk et al. 2018): softmax "
                            "probability of the top predicted class; pixels in decreasing attribution order, "
                            "deleted to the training mean (zero in normalised space), inserted into an 11×11, "
                            "σ = 5 Gaussian blur; "
                            + ("⌈H·W/28⌉" if pixels is None else str(pixels)) + " pixels per step; maps explain "
                            f"the predicted class (first {num_eval} test images, BSM / BIG on the first "
                            f"{num_big})",
      "completeness": "Completeness |Σ a − Δ| / |Δ| (median) and the boundary points of BSM / BIG. IG: zero "
                      f"baseline, midpoint rule, {ig_steps} steps, Δ = f(x) − f(0). BIG (Wang et al. 2022): "
                      f"captum's trapezoid rule with {ig_steps} points from the boundary point x', Δ = "
                      f"({ig_steps}−1)/{ig_steps} · (f(x) − f(x')). Boundary search for the predicted class: "
                      f"PGD-L2 with random start, 40 steps of 2ε²/40, radii ε ∈ {_radii(epsilons)} (images in "
                      "[0, 1]), the smallest successful ε kept (else the smallest ε's point); then CW-L2 (9 "
                      f"binary-search rounds × 100 Adam steps, lr 0.01) clipped to cw_epsilon = {cw_epsilon:g}, "
                      "kept where closer and across the boundary. cw_epsilon = the largest radius mirrors the "
                      "authors' ratio: their CW radius 1.0 sits at the top of their PGD radii 0.14–1.1, which "
                      "are in ImageNet-normalised units and do not transfer to [0, 1] pixels",
      "adversarial": f"Explainable adversarial samples ({ADVERSARIAL_STEPS} latent steps of 0.25 toward the "
                     "target's class prototype, backtracked to pixels) vs targeted PGD-L2 "
                     f"(ε = {ADVERSARIAL_EPSILON:g}, {ADVERSARIAL_STEPS} steps of 2.5ε/{ADVERSARIAL_STEPS}, no "
                     f"random start); target (y + 1) mod C for the true label y, first {num_big} test images",
  }


def write_markdown(results: list[dict], path: pathlib.Path, config: Mapping, figure_name: str | None = None,
                   notes: Sequence[str] = (), *, title: str = "Explainability report",
                   captions: Mapping[str, str] | None = None, data_note: str = "",
                   sections: Sequence[str] = ()) -> str:
  """Markdown report: configuration, figure, one table per metric family; returns the text.

  Args:
    results: ``{"model", "seed", "metrics"}`` records, ``metrics`` as :func:`evaluate` returns them.
    config: written as JSON; its evaluation options fill the captions (:func:`default_captions`).
    captions: per-table caption overrides, keys of :func:`default_captions`.
    data_note: appended to every caption (e.g. where the data come from).
    sections: Markdown lines appended at the end (e.g. the claims a benchmark checks).
  """
  summary = summarize_seeds(results)
  models = list(summary)
  caption = default_captions(config) | dict(captions or {})
  keys_of = lambda prefix: sorted({k[len(prefix):].split("/")[0] for m in models for k in summary[m]
                                   if k.startswith(prefix)})
  methods = keys_of("pointing_game/2x2/")
  depths = keys_of("reconstruction/")
  seeds = sorted({r["seed"] for r in results})
  lines = [f"# {title}", "",
           f"Mean ± std over seeds {seeds} (per-seed numbers in `{path.with_suffix('.json').name}`); "
           "configuration:", "",
           "```", json.dumps(dict(config), sort_keys=True), "```", ""] + list(notes) + [""]
  if figure_name:
    lines += [f"![inputs, reconstructions and saliency]({figure_name})", ""]

  def section(key: str, table: list[str], after: Sequence[str] = ()) -> None:
    """Caption + table, left out when no model has a row."""
    if len(table) > 2:
      lines.extend(["", f"## {caption[key]}" + (f" — {data_note}" if data_note else ""), ""] + table + list(after))

  section("models", _table(
      summary, ["model", "test accuracy", "orthogonality gap (off-diag RMS)", "train seconds (wall clock)"],
      [(m, "") for m in models], ["accuracy", "orthogonality_offdiag", "train_seconds"], 3))
  section("reconstruction", _table(
      summary, ["model", "depth", "PSNR (dB) ↑", "MSE ↓", "PSNR of the best scalar multiple (dB) ↑"],
      [(m, d) for m in models for d in depths],
      ["reconstruction/{row}/psnr", "reconstruction/{row}/mse", "reconstruction/{row}/psnr_fitted"], 3))
  grids = lambda m, g: ", ".join(str(r["metrics"]["pointing_game_grids"][g]) for r in results
                                 if r["model"] == m and g in r["metrics"].get("pointing_game_grids", {}))
  counts = [f"{m} {grids(m, '2x2')} / {grids(m, '3x3')}" for m in models if grids(m, "2x2") and grids(m, "3x3")]
  section("pointing_game", _table(summary, ["model", "method", "2×2", "3×3"], [(m, a) for m in models for a in methods],
                                  ["pointing_game/2x2/{row}", "pointing_game/3x3/{row}"], 3),
          ["", "Grids built per seed (2×2 / 3×3): " + "; ".join(counts) + ". A seed without any grid of a size "
           "is left out of that size's mean (the cell then names how many seeds it averages; n/a: none)."]
          if counts else [])
  section("deletion_insertion", _table(
      summary, ["model", "method", "deletion ↓", "insertion ↑"],
      [(m, a) for m in models for a in keys_of("deletion_insertion/")],
      ["deletion_insertion/{row}/deletion", "deletion_insertion/{row}/insertion"], 3))
  completeness = keys_of("completeness_rel_error/")
  section("completeness", _table(
      summary, ["model", *completeness, "mean ‖x − x'‖₂", "boundary found"], [(m, "") for m in models],
      [f"completeness_rel_error/{k}" for k in completeness] + ["boundary_l2", "boundary_found"], 4))
  section("adversarial", _table(
      summary, ["model", "attack", "success rate", "L2 (successful)", "L2 (all)"],
      [(m, a) for m in models for a in keys_of("adversarial/")],
      [f"adversarial/{{row}}/{k}" for k in ("success_rate", "l2_success", "l2_all")], 3))
  lines += [""] + list(sections) + [""]
  text = "\n".join(lines)
  path.write_text(text)
  return text
