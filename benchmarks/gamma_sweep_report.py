"""Selection and report of the γ sweep of `benchmarks/gamma_sweep.py`, from its JSONL records.

Selection (`select`) reads `val_*` fields only; the test split is never used for a choice. Per family: the
tuned baseline, the Bort setting with the best validation accuracy and the Bort setting with the highest
validation PSNR whose validation accuracy is within `--tolerance` of the baseline's (default: one binomial
standard error of the baseline's validation accuracy). The `final` stage retrains these on the whole
training split and scores them on the test split.

Report: `gamma_sweep_<dataset>_<model>.md` (selected settings with test accuracy mean ± std, gap, PSNR and a
verdict against the tuned baseline; γ ranges; the whole validation sweep; the exact commands) and `.png`
(validation accuracy and PSNR against γ, log axis, one line per optimizer/α/mode, tuned baseline as a band).
"""

from collections.abc import Sequence
import math
import pathlib
import typing

import jax
import numpy as np
import scipy.stats

if typing.TYPE_CHECKING:  # gamma_sweep imports this module at load time; only type checkers import it back
  from benchmarks.gamma_sweep import Sweep


# PSNR used for the "most explainable" selection: raw for the MLP (1/∏α is its exact inverse scale when the
# layers are orthogonal); fitted for LeNet-5, whose overlapping 5×5 patches and pooling make 1/∏α only an
# estimate (as in benchmarks/explain_report.py); fitted for ResNet / ViT, whose residual paths leave 1/∏α undefined.
PSNR_METRIC = {"mlp": "psnr", "lenet5": "psnr_fitted", "resnet20": "psnr_fitted", "vit_tiny": "psnr_fitted"}


# -------------------------------------------------------------------------------------------- selection


def _val(record: dict, field: str) -> float:
  """A validation number of `record` (NaN, e.g. a diverged run's PSNR, ranks last)."""
  value = record.get(f"val_{field}")
  return -math.inf if value is None or not math.isfinite(value) else float(value)


def _best(records: Sequence[dict], field: str) -> dict | None:
  """The record with the highest `val_<field>`; ties go to the earliest (grid order)."""
  best = None
  for r in records:
    if best is None or _val(r, field) > _val(best, field):
      best = r
  return best


def binomial_se(accuracy: float, count: int) -> float:
  return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(count, 1))


def select(records: Sequence[dict], family: str, psnr_metric: str, tolerance: float | None = None,
           psnr_resolution: float = 0.0) -> dict:
  """The selected settings of one family, from validation numbers only (`val_*` fields of sweep records).

  Returns {"baseline": record, "bort_best_accuracy": record | None, "bort_max_psnr": record | None,
  "tolerance": float}: the baseline with the best validation accuracy; among the Bort records at that
  baseline's learning rate and weight decay, the one with the best validation accuracy and the one with the
  highest validation `psnr_metric` whose accuracy is at least the baseline's minus `tolerance` (None: one
  binomial standard error of the baseline's validation accuracy). PSNRs within `psnr_resolution` dB of that
  highest one tie, and a tie goes to the smallest orthogonality gap (the PSNR cannot tell them apart).
  """
  if psnr_resolution < 0:
    raise ValueError(f"psnr_resolution must be >= 0 dB (0: no ties), got {psnr_resolution}.")
  baselines = [r for r in records if r["stage"] == "baselines" and r["optimizer"] == family]
  baseline = _best(baselines, "accuracy")
  if baseline is None:
    return {"baseline": None, "bort_best_accuracy": None, "bort_max_psnr": None, "tolerance": tolerance}
  if tolerance is None:
    tolerance = binomial_se(baseline["val_accuracy"], baseline["val_count"])
  borts = bort_runs(records, baseline)
  holding = [r for r in borts if _val(r, "accuracy") >= baseline["val_accuracy"] - tolerance]
  top = _best(holding, psnr_metric)
  if top is not None and psnr_resolution > 0:
    tied = [r for r in holding if _val(r, psnr_metric) >= _val(top, psnr_metric) - psnr_resolution]
    top = min(tied, key=lambda r: r["gap"])
  return {"baseline": baseline, "bort_best_accuracy": _best(borts, "accuracy"), "bort_max_psnr": top,
          "tolerance": tolerance}


ROLES = {"baseline": "tuned baseline", "bort_best_accuracy": "Bort, best val. accuracy",
         "bort_max_psnr": "Bort, max val. PSNR with accuracy held"}


# --------------------------------------------------------------------------------------------- report


def _fmt_alpha(alpha: str) -> str:
  return "adaptive" if alpha == "adaptive" else "1"


def _describe(record: dict) -> str:
  text = f"{record['optimizer']}, lr={record['learning_rate']:g}, wd={record['weight_decay']:g}"
  if record["optimizer"].startswith("bort_"):
    text += f", γ={record['gamma']:g}, α={_fmt_alpha(record['alpha'])}, {record['mode']}"
  return text


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
  """mean ± std (ddof 1) with ``digits`` decimals, "mean (1 seed)" for one value (no spread to show); in
  scientific notation where the mean would print as 0."""
  values = scale * np.asarray(values, float)
  if not len(values):
    return "—"
  mean = values.mean()
  form = ".1e" if 0 < abs(mean) < 0.5 * 10.0 ** -digits else f".{digits}f"
  if len(values) == 1:
    return f"{mean:{form}} (1 seed)"
  return f"{mean:{form}} ± {values.std(ddof=1):{form}}"


def final_runs(records: Sequence[dict], record: dict) -> list[dict]:
  """The `final` (test split) runs of the setting of `record`, one per seed."""
  want = {k: record[k] for k in ("optimizer", "learning_rate", "weight_decay", "gamma", "alpha", "mode")}
  return [r for r in records if r["stage"] == "final" and all(r[k] == v for k, v in want.items())]


def compare(test_bort: Sequence[float], test_base: Sequence[float]) -> tuple[str, float, float]:
  """("above" | "level" | "below", difference of the means, its standard error): level within twice the error."""
  diff = float(np.mean(test_bort) - np.mean(test_base))
  se = math.sqrt(np.var(test_bort, ddof=1) / len(test_bort) + np.var(test_base, ddof=1) / len(test_base))
  return "level" if abs(diff) <= 2 * se else ("above" if diff > 0 else "below"), diff, se


def verdict(test_bort: Sequence[float], test_base: Sequence[float], baseline: str = "the tuned baseline") -> str:
  """"above" / "level with" / "below" ``baseline``, with the difference in points and in standard errors, and the
  two-sided p-value of Welch's t-test (the rule's "above" / "below" is not a significance test at few seeds)."""
  if len(test_bort) < 2 or len(test_base) < 2:
    return "not yet measured (fewer than 2 seeds)"
  word, diff, se = compare(test_bort, test_base)
  if se == 0:
    return f"{'level with' if word == 'level' else word} {baseline} ({100 * diff:+.2f} pt, standard error 0)"
  p = scipy.stats.ttest_ind(test_bort, test_base, equal_var=False).pvalue
  return (f"{'level with' if word == 'level' else word} {baseline} ({100 * diff:+.2f} pt, {diff / se:+.1f} standard "
          f"errors of {100 * se:.2f} pt, Welch p = {p:.2f})")


def rule_note(seeds: int) -> str:
  """How often the 2-standard-error rule calls a pair "above" or "below" without a true difference, with `seeds`
  seeds in both rows (Welch's t at equal variances: 2(seeds - 1) degrees of freedom)."""
  chance = 2 * scipy.stats.t.sf(2.0, 2 * (seeds - 1))
  return (f"With {seeds} seeds a row, pairs without a true difference fall outside twice the standard error "
          f"{100 * chance:.0f} % of the time (Welch's t, {2 * (seeds - 1)} degrees of freedom): read the p-value.")


CIFAR_NOTE = ("Baselines: the config's standard recipe (one grid point, not tuned); the test-split comparison is "
              "`benchmarks/cifar_table.py` (`benchmarks/results/cifar10_plan.md`). The shared `cifar10.npz` is a "
              "JPEG-compressed copy: these numbers check the pipeline and the selection, they are not publishable. "
              "The raw PSNR columns use scale 1 (residual paths leave 1/∏α undefined), so they measure nothing: "
              "read the fitted-scale PSNR.")


def _after_selection(sweep) -> str:
  if sweep.validation_only:
    return ("the selected settings are trained on the whole training split and tested by `benchmarks/cifar_table.py` "
            "(no final stage here)")
  return (f"the selected settings are retrained on the whole training split with seeds {list(sweep.seeds)} and "
          "scored on the test split")


def bort_runs(records: Sequence[dict], baseline: dict) -> list[dict]:
  """The sweep's Bort records at `baseline`'s learning rate and weight decay (those the selection compares)."""
  return [r for r in records if r["stage"] == "bort" and r["optimizer"] == f"bort_{baseline['optimizer']}"
          and r["learning_rate"] == baseline["learning_rate"] and r["weight_decay"] == baseline["weight_decay"]]


def held_gammas(records: Sequence[dict], chosen: dict, psnr_metric: str,
                rise_db: float = 0.5) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
  """Per Bort line {(α, mode): (γs whose validation accuracy holds, those of them whose PSNR also rises)}."""
  baseline, tolerance = chosen["baseline"], chosen["tolerance"]
  if baseline is None:
    return {}
  lines = {}
  borts = bort_runs(records, baseline)
  for alpha, mode in sorted({(r["alpha"], r["mode"]) for r in borts}):
    line = sorted((r for r in borts if (r["alpha"], r["mode"]) == (alpha, mode)), key=lambda r: r["gamma"])
    holds = [r["gamma"] for r in line if _val(r, "accuracy") >= baseline["val_accuracy"] - tolerance]
    both = [r["gamma"] for r in line if r["gamma"] in holds
            and _val(r, psnr_metric) > _val(baseline, psnr_metric) + rise_db]
    lines[alpha, mode] = (holds, both)
  return lines


def gamma_ranges(records: Sequence[dict], chosen: dict, psnr_metric: str, rise_db: float = 0.5) -> list[str]:
  """Per Bort line (α, mode): the γ values whose validation accuracy holds and whose PSNR rises."""
  fmt = lambda gs: ", ".join(f"{g:g}" for g in gs) or "none"
  return [f"- bort_{chosen['baseline']['optimizer']}, α={_fmt_alpha(alpha)}, {mode}: "
          f"accuracy held at γ ∈ {{{fmt(holds)}}}; held with PSNR > baseline + {rise_db} dB at γ ∈ {{{fmt(both)}}}."
          for (alpha, mode), (holds, both) in held_gammas(records, chosen, psnr_metric, rise_db).items()]


def write_report(sweep: "Sweep"):
  """Rewrites the Markdown table and the PNG from this budget's records (partial sweeps included)."""
  records = sweep.records()
  chosen = sweep.selected(records)
  out = pathlib.Path(sweep.out)
  md = out / f"{sweep.name}.md"
  metric, metric_name = sweep.psnr_metric, "raw" if sweep.psnr_metric == "psnr" else "fitted-scale"
  val_count = next((r["val_count"] for r in records if "val_count" in r), None)
  planned = sweep.planned_runs
  finished = sum(r["stage"] in ("baselines", "bort") for r in records)
  lines = [f"# Choosing γ: {sweep.dataset} / {sweep.model}"
           + (f" (in progress: {finished} of {planned} validation runs finished)" if finished < planned else ""), "",
           f"Budget: {sweep.epochs} epochs per run for every optimizer (batch {sweep.batch_size}, cosine decay after "
           f"a linear warmup of min(0.5, epochs/4) epochs, augmentation: {sweep.augment}"
           + (f", first {sweep.train_limit} training images" if sweep.train_limit else "") + "). "
           f"Sweep stages train on the training split minus a stratified validation split (the last 10% of every "
           f"class{f', {val_count} images' if val_count else ''}) and are scored on it; {_after_selection(sweep)}. "
           "Selection reads validation numbers only. PSNR: reconstruction x̂ = J(x)ᵀ f(x) / ∏α of 1,000 images "
           f"from the last feature layer ({sweep.feature_layer}); the selection uses the {metric_name} "
           "PSNR" + (f" (PSNRs within {sweep.psnr_resolution:g} dB of the highest held one tie, and a tie goes to the "
                     "smallest gap)" if sweep.psnr_resolution else "")
           + ". Gap: mean over kernels of the off-diagonal orthogonality gap (`bort_jax.orthogonality_gap`)."
           + (f" {CIFAR_NOTE}" if sweep.validation_only else ""), "",
           f"![validation accuracy and PSNR against γ]({sweep.name}.png)", "",
           "## Selected settings (train → test)", "",
           "| family | role | settings | val. acc. (%) | test acc. (%) | Δ vs baseline (pt) | gap | PSNR (dB) "
           "| fitted PSNR (dB) | seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
  verdicts = []
  for family, pick in chosen.items():
    base_runs = final_runs(records, pick["baseline"]) if pick["baseline"] else []
    base_acc = [r["test_accuracy"] for r in base_runs]
    for role, label in ROLES.items():
      record = pick[role]
      if record is None:
        continue
      runs = final_runs(records, record)
      acc = [r["test_accuracy"] for r in runs]
      delta = (f"{100 * (np.mean(acc) - np.mean(base_acc)):+.2f}" if role != "baseline" and acc and base_acc
               else "—")
      lines.append(f"| {family} | {label} | {_describe(record)} | {100 * record['val_accuracy']:.2f} | "
                   f"{mean_std(acc, 100)} | {delta} | {mean_std([r['gap'] for r in runs], digits=4)} | "
                   f"{mean_std([r['test_psnr'] for r in runs])} | {mean_std([r['test_psnr_fitted'] for r in runs])}"
                   f" | {len(runs)} |")
      if role != "baseline":
        verdicts.append(f"- {family}, {label} ({_describe(record)}): test accuracy "
                        f"{verdict(acc, base_acc)}.")
  lines += ["", "## Verdict", "",
            "Above / level / below: the difference of the test means against twice its standard error "
            f"(seeds as samples). {rule_note(len(sweep.seeds))}", ""] + (verdicts or ["- no final runs yet."])
  lines += ["", f"γ ranges (validation): accuracy held = validation accuracy ≥ the tuned baseline's minus the "
            "tolerance; PSNR rises = "
            f"{metric_name} PSNR more than 0.5 dB above the baseline's.", ""]
  for family, pick in chosen.items():
    if pick["baseline"] is not None:
      lines.append(f"- {family}: tuned baseline {_describe(pick['baseline'])}, validation accuracy "
                   f"{100 * pick['baseline']['val_accuracy']:.2f} %, {metric_name} PSNR "
                   f"{pick['baseline']['val_' + metric]:.2f} dB; tolerance {100 * pick['tolerance']:.2f} pt.")
    lines += gamma_ranges(records, pick, metric)
  lines += ["", "## Validation sweep (seed 0)", "",
            "| stage | optimizer | lr | wd | γ | α | mode | val. acc. (%) | gap | PSNR (dB) | fitted PSNR (dB) "
            "| seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in sorted((r for r in records if r["stage"] != "final"),
                  key=lambda r: (r["stage"] != "baselines", r["optimizer"], r["mode"], r["alpha"], r["gamma"],
                                 r["learning_rate"], r["weight_decay"])):
    bort = r["optimizer"].startswith("bort_")
    lines.append(f"| {r['stage']} | {r['optimizer']} | {r['learning_rate']:g} | {r['weight_decay']:g} | "
                 f"{r['gamma']:g} | {_fmt_alpha(r['alpha']) if bort else '—'} | {r['mode'] or '—'} | "
                 f"{100 * r['val_accuracy']:.2f} | {r['gap']:.4f} | {r['val_psnr']:.2f} | "
                 f"{r['val_psnr_fitted']:.2f} | {r['seconds']:.0f} |")
  commands = list(dict.fromkeys(r["command"] for r in records if r.get("command")))
  jax_versions = sorted({r.get("jax", "?") for r in records})
  lines += ["", "## Exactly what was run", "",
            *(f"- `python -m benchmarks.gamma_sweep {c}`" for c in commands),
            "- Records (one line per finished setting, with every depth's reconstruction numbers): "
            f"`{sweep.jsonl.name}`.",
            f"- Data: `{sweep.dataset}.npz` of the shared offline copy; models `{sweep.model}` with biases, float32; "
            f"jax {', '.join(jax_versions) or jax.__version__}; 2 shared CPU cores (seconds are wall time with other "
            "jobs running, not comparable across rows).",
            "- Optimizers: baselines as in `examples/optimizers.py` (SGD momentum 0.9 with coupled weight decay, "
            "AdamW b1=0.9, b2=0.999 with decoupled decay); Bort corrects every dense/conv kernel (classifier "
            "included, as the example recipes do)."]
  out.mkdir(parents=True, exist_ok=True)
  md.write_text("\n".join(lines) + "\n")
  write_plot(sweep, records, chosen, out / f"{sweep.name}.png")


def write_plot(sweep: "Sweep", records: Sequence[dict], chosen: dict, path: pathlib.Path):
  """Validation accuracy, PSNR and fitted PSNR against γ (log axis): one column per family."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  families = [f for f in sweep.families if chosen[f]["baseline"] is not None]
  if not families:
    return
  rows = (("accuracy", "val. accuracy (%)", 100.0), ("psnr", "PSNR (dB), last feature layer", 1.0),
          ("psnr_fitted", "fitted PSNR (dB), last feature layer", 1.0))
  fig, axes = plt.subplots(len(rows), len(families), figsize=(5.5 * len(families), 9), squeeze=False)
  colors, styles = {"l2-full": "tab:blue", "l1-full": "tab:orange"}, {"1": "-", "adaptive": "--"}
  for col, family in enumerate(families):
    pick = chosen[family]
    base = pick["baseline"]
    borts = bort_runs(records, base)
    grid = [r for r in records if r["stage"] == "baselines" and r["optimizer"] == family]
    gammas = sorted({r["gamma"] for r in borts}) or [1.0]
    for row, (field, label, scale) in enumerate(rows):
      ax = axes[row, col]
      x_lo, x_hi = gammas[0] / 2, gammas[-1] * 2
      value = scale * base[f"val_{field}"]
      if field == "accuracy":
        half = scale * binomial_se(base["val_accuracy"], base["val_count"])
        lo, hi, band = value - half, value + half, "tuned baseline ± 1 s.e."
      else:
        values = [scale * r[f"val_{field}"] for r in grid if math.isfinite(r[f"val_{field}"])]
        lo, hi, band = min(values), max(values), "baseline lr×wd grid (min–max)"
      ax.fill_between([x_lo, x_hi], lo, hi, color="0.8", alpha=0.6, label=band)
      ax.plot([x_lo, x_hi], [value, value], color="k", lw=1, ls=":", label=f"tuned {family}")
      for mode in sweep.modes:
        for alpha in sweep.alphas:
          line = sorted((r for r in borts if r["mode"] == mode and r["alpha"] == alpha), key=lambda r: r["gamma"])
          if line:
            ax.plot([r["gamma"] for r in line], [scale * r[f"val_{field}"] for r in line], marker="o", ms=4,
                    color=colors.get(mode), ls=styles.get(alpha, "-"),
                    label=f"bort_{family} α={_fmt_alpha(alpha)} {mode}")
      for role in ("bort_best_accuracy", "bort_max_psnr"):
        if pick[role] is not None:
          ax.plot([pick[role]["gamma"]], [scale * pick[role][f"val_{field}"]], marker="*", ms=12,
                  color="crimson", ls="none", label="selected" if role == "bort_best_accuracy" else None)
      ax.set_xscale("log")
      ax.set_xlim(x_lo, x_hi)
      ax.set(xlabel="γ", ylabel=label)
      if field == "accuracy":
        finite = [scale * r["val_accuracy"] for r in borts] + [lo]
        ax.set_ylim(max(min(finite) - 0.2, value - 5.0), max(finite + [hi]) + 0.2)
        ax.set_title(f"bort_{family} at lr={base['learning_rate']:g}, wd={base['weight_decay']:g}", fontsize=9)
      ax.grid(alpha=0.3, which="both")
    axes[0, col].legend(fontsize=6, loc="lower left")
  fig.suptitle(f"{sweep.dataset} / {sweep.model}: validation accuracy and reconstruction PSNR against γ "
               f"({sweep.epochs} epochs)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)

