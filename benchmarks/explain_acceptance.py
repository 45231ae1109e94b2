"""Bort's claims, checked on the means of an explainability report (``benchmarks/explain_report.py``).

Reported as measured, whichever way they go: each line is PASS or FAIL with both numbers, or NOT MEASURED where
a side has no number (e.g. no pointing-game grid could be built from a model's confident images).
"""

from collections.abc import Mapping
import math

CLAIMS_TITLE = "## Bort's claims, checked on the means above"


def _check(name: str, ok: bool, detail: str, *values: float) -> str:
  verdict = "NOT MEASURED" if any(math.isnan(v) for v in values) else "PASS" if ok else "FAIL"
  return f"- {verdict} — {name}: {detail}"


def acceptance(summary: Mapping[str, Mapping[str, tuple]]) -> list[str]:
  """The claims (Bort reconstructs better than SGD, DBort at least as well as Bort, Bort's explanations point at
  least as well as SGD's) on ``benchmarks.explain_tables.summarize_seeds`` output; one line per check."""
  lines = []
  mean = lambda m, k: summary.get(m, {}).get(k, (float("nan"),))[0]
  depths = sorted({k.split("/")[1] for m in summary for k in summary[m] if k.startswith("reconstruction/")})
  for d in depths:
    for metric, label in (("psnr", "PSNR"), ("psnr_fitted", "fitted PSNR")):
      key = f"reconstruction/{d}/{metric}"
      sgd, bort, dbort = mean("sgd", key), mean("bort", key), mean("dbort", key)
      lines.append(_check(f"Bort {label} > SGD {label} ({d})", bort > sgd, f"{bort:.2f} vs {sgd:.2f} dB", bort, sgd))
      lines.append(_check(f"DBort {label} ≥ Bort {label} ({d})", dbort >= bort, f"{dbort:.2f} vs {bort:.2f} dB",
                            dbort, bort))
  for key in sorted(k for k in summary.get("bort", {}) if k.startswith("pointing_game/")):
    sgd, bort = mean("sgd", key), mean("bort", key)
    lines.append(_check(f"Bort ≥ SGD on {key.split('/', 1)[1]}", bort >= sgd, f"{bort:.3f} vs {sgd:.3f}", bort, sgd))
  return lines


def claims_section(summary) -> list[str]:
  """Markdown lines of the claims section (for ``explain_tables.write_markdown(..., sections=...)``)."""
  return [CLAIMS_TITLE, ""] + acceptance(summary)
