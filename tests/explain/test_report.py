"""Report tables: seed aggregation, one row per (model, method), acceptance checks, figure file."""

import json

import numpy as np

from bort_jax.explain import report


def _results():
  results = []
  for seed, shift in enumerate((0.0, 1.0, 2.0)):
    for model, psnr, point in (("sgd", 7.0, 0.4), ("bort", 12.0, 0.5), ("dbort", 13.0, 0.45)):
      results.append({"model": model, "seed": seed, "metrics": {
          "accuracy": 0.9,
          "reconstruction": {"fc1": {"psnr": psnr + shift, "mse": 0.1}},
          "pointing_game": {"2x2": {"gradient": point, "input×gradient": point}, "3x3": {"gradient": point / 2}},
      }})
  return results


def test_summarize_seeds_gives_mean_std_and_count():
  summary = report.summarize_seeds(_results())
  mean, std, count = summary["bort"]["reconstruction/fc1/psnr"]
  np.testing.assert_allclose([mean, std, count], [13.0, np.std([12.0, 13.0, 14.0]), 3])
  np.testing.assert_allclose(summary["sgd"]["pointing_game/2x2/input×gradient"][0], 0.4)


def test_markdown_has_a_row_per_model_and_method_and_evaluates_acceptance(tmp_path):
  path = tmp_path / "r.md"
  text = report.write_markdown(_results(), path, {"num_grids": 5}, None, ["a note"])
  assert path.read_text() == text
  assert "| bort | input×gradient | 0.500 ± 0.000 | — |" in text
  assert "| dbort | fc1 | 14.000 ± 0.816 | 0.100 ± 0.000 |" in text
  assert "- PASS — Bort PSNR > SGD PSNR (fc1): 13.00 vs 8.00 dB" in text
  assert "- PASS — DBort PSNR ≥ Bort PSNR (fc1): 14.00 vs 13.00 dB" in text
  assert "- PASS — Bort ≥ SGD on 3x3/gradient: 0.250 vs 0.200" in text
  assert "a note" in text and json.dumps({"num_grids": 5}) in text


def test_figure_is_written(tmp_path):
  rng = np.random.default_rng(0)
  panels = {"input": rng.uniform(size=(2, 6, 6)), "m x̂ (fc1)": rng.uniform(size=(2, 6, 6)),
            "m saliency": rng.normal(size=(2, 6, 6))}
  report.write_figure(panels, tmp_path / "f.png")
  assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
