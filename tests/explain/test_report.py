"""Report pieces: evaluation protocols wired as their papers define them, seed aggregation, tables with the
protocol in each caption, figure files; the benchmark's claims section and its per-run cache."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import explain_tables
from examples import explain_protocol


def _results():
  results = []
  for seed, shift in enumerate((0.0, 1.0, 2.0)):
    for model, psnr, point in (("sgd", 7.0, 0.4), ("bort", 12.0, 0.5), ("dbort", 13.0, 0.45)):
      results.append({"model": model, "seed": seed, "metrics": {
          "accuracy": 0.9,
          "reconstruction": {"fc1": {"psnr": psnr + shift, "mse": 0.1}},
          "pointing_game": {"2x2": {"gradient": point, "input×gradient": point}, "3x3": {"gradient": point / 2}},
          "pointing_game_grids": {"2x2": 500, "3x3": 480 + seed},
      }})
  return results


def test_summarize_seeds_gives_mean_std_and_count():
  summary = explain_tables.summarize_seeds(_results())
  mean, std, count = summary["bort"]["reconstruction/fc1/psnr"]
  np.testing.assert_allclose([mean, std, count], [13.0, np.std([12.0, 13.0, 14.0]), 3])
  np.testing.assert_allclose(summary["sgd"]["pointing_game/2x2/input×gradient"][0], 0.4)


def test_a_seed_without_grids_is_left_out_of_the_mean_and_the_cell_says_so(tmp_path):
  results = _results()
  for r in results:
    if r["model"] == "bort" and r["seed"] == 0:
      r["metrics"]["pointing_game"]["3x3"]["gradient"] = float("nan")
      r["metrics"]["pointing_game_grids"]["3x3"] = 0
    if r["model"] == "dbort":
      r["metrics"]["pointing_game"]["3x3"]["gradient"] = float("nan")
  summary = explain_tables.summarize_seeds(results)
  assert summary["bort"]["pointing_game/3x3/gradient"] == (0.25, 0.0, 2)
  assert summary["dbort"]["pointing_game/3x3/gradient"][2] == 0
  text = explain_tables.write_markdown(results, tmp_path / "r.md", {})
  assert "| bort | gradient | 0.500 ± 0.000 | 0.250 ± 0.000 (2 of 3 seeds) |" in text
  assert "| dbort | gradient | 0.450 ± 0.000 | n/a |" in text
  assert "bort 500, 500, 500 / 0, 481, 482" in text


def test_markdown_has_a_row_per_model_and_method_and_the_protocol_in_each_caption(tmp_path):
  path = tmp_path / "r.md"
  config = {"num_grids": 5, "ig_steps": 8, "boundary_epsilons": [0.5, 2.0], "num_big": 10}
  text = explain_tables.write_markdown(_results(), path, config, None, ["a note"], title="A title",
                               data_note="some data", sections=["## Extra", "- line"])
  assert path.read_text() == text
  assert text.startswith("# A title\n")
  assert "| bort | input×gradient | 0.500 ± 0.000 | — |" in text
  assert "| dbort | fc1 | 14.000 ± 0.816 | 0.100 ± 0.000 |" in text
  assert "a note" in text and json.dumps(config, sort_keys=True) in text
  assert text.rstrip().endswith("## Extra\n- line")
  assert "Grids built per seed (2×2 / 3×3): sgd 500, 500, 500 / 480, 481, 482;" in text
  headings = [line for line in text.splitlines() if line.startswith("## ") and line != "## Extra"]
  assert len(headings) == 3 and all(h.endswith("— some data") for h in headings)
  pointing = next(h for h in headings if "pointing game" in h)
  assert "B-cos protocol" in pointing and "up to 5 grids" in pointing and "every cell" in pointing
  assert "no smoothing" in pointing and "sigmoid(top logit) > 0.5" in pointing
  assert "PASS" not in text and "acceptance" not in text.lower()   # the claims are the benchmark's


def test_captions_state_the_boundary_rise_and_trapezoid_conventions():
  captions = explain_tables.default_captions({"ig_steps": 8, "boundary_epsilons": [0.5, 1.0, 6.0], "smooth": 3})
  assert "cw_epsilon = 6" in captions["completeness"] and "{0.5, 1, 6}" in captions["completeness"]
  assert "trapezoid" in captions["completeness"] and "(8−1)/8" in captions["completeness"]
  assert "random start" in captions["completeness"] and "predicted class" in captions["completeness"]
  assert "RISE" in captions["deletion_insertion"] and "training mean" in captions["deletion_insertion"]
  assert "blur" in captions["deletion_insertion"] and "top predicted class" in captions["deletion_insertion"]
  assert "3×3 box smoothing" in captions["pointing_game"]
  assert "cw_epsilon = 2" in explain_tables.default_captions({"boundary_epsilons": [1.0, 2.0],
                                                      "cw_epsilon": 2.0})["completeness"]


def test_pointing_game_explains_and_scores_every_cell():
  # Cell images are constant at (class + 1) / 10; the oracle map marks the pixels of the target's value, so every
  # scored cell gets 1, a uniform map gets 1/g², and the oracle sees each (grid, cell) exactly once.
  g, side = 2, 4
  cell_labels = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]])
  tiles = (cell_labels[..., None, None] + 1) / 10 * np.ones((side, side))
  grids = tiles.reshape(3, g, g, side, side).transpose(0, 1, 3, 2, 4).reshape(3, g * side, g * side, 1)
  seen = []

  def oracle(x, t):
    seen.append(np.asarray(t))
    return (np.abs(x[..., 0] - (np.asarray(t)[:, None, None] + 1) / 10) < 1e-6).astype(np.float32)

  scores = explain_protocol.pointing_game({"oracle": oracle, "uniform": lambda x, t: np.ones(x.shape[:3])},
                                grids.astype(np.float32), cell_labels, g)
  np.testing.assert_allclose([scores["oracle"], scores["uniform"]], [1.0, 0.25])
  np.testing.assert_array_equal(np.concatenate(seen), cell_labels.reshape(-1))
  assert np.isnan(explain_protocol.pointing_game({"m": oracle}, grids[:0], cell_labels[:0], g)["m"])


def _tiny_model(seed=0, channels=16, classes=10):
  """Bias-free conv(3×3) → ReLU → 1×1 conv → global average pool: reads images of any size. Zero-mean unit-norm
  kernels and a head centred over channels keep the predicted classes varied on uniform noise."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  kernel = jax.random.normal(k1, (9, channels))
  kernel = kernel - kernel.mean(0)
  head = jax.random.normal(k2, (channels, classes))
  params = {"conv": (kernel / jnp.linalg.norm(kernel, axis=0)).reshape(3, 3, 1, channels),
            "head": 20 * (head - head.mean(0))}
  conv = lambda p, x: jax.nn.relu(jax.lax.conv_general_dilated(x, p["conv"], (1, 1), "SAME",
                                                               dimension_numbers=("NHWC", "HWIO", "NHWC")))
  head_fn = lambda p, h: (h @ p["head"]).mean((1, 2))
  return explain_protocol.ModelFns(apply_fn=lambda p, x: head_fn(p, conv(p, x)), features_fns={"conv1": conv},
                         head_fn=head_fn, kernels_fn=lambda p: {"conv1": p["conv"]}), params


def test_evaluate_runs_every_protocol_on_a_tiny_model():
  fns, params = _tiny_model()
  x = np.random.default_rng(0).uniform(size=(60, 8, 8, 1)).astype(np.float32)
  y = np.array(fns.apply_fn(params, x).argmax(-1), np.int32)     # the model's own labels ...
  y[:10] = np.arange(10)                                         # ... but every class present
  with pytest.warns(UserWarning, match="too few confident, correctly classified"):   # 3×3 needs all 10 classes
    out = explain_protocol.evaluate(fns, params, x, y, x, y, num_grids=4, num_eval=6, num_big=4, ig_steps=4,
                          epsilons=(0.5, 2.0))
  assert 0.8 < out["accuracy"] < 1.0
  assert out["pointing_game_grids"] == {"2x2": 3, "3x3": 0} and np.isnan(out["pointing_game"]["3x3"]["gradient"])
  assert 0.0 <= out["pointing_game"]["2x2"]["gradient"] <= 1.0
  assert set(out["deletion_insertion"]) == {"gradient", "input×gradient", "IG (4 steps)",
                                            "backtracking (top 10%)", "BSM", "BIG (4 steps)"}
  for aucs in out["deletion_insertion"].values():
    assert 0.0 <= aucs["deletion"] <= 1.0 and 0.0 <= aucs["insertion"] <= 1.0
  assert 0.0 <= out["boundary_found"] <= 1.0 and 0.0 < out["boundary_l2"] <= 2.0 + 1e-4
  assert out["completeness_rel_error"]["IG (4 steps)"] < 1e-3
  assert np.isfinite(out["completeness_rel_error"]["BIG (4 steps)"])
  assert set(out["adversarial"]) == {"explainable (20 steps)", "PGD-L2 ε=3 (20 steps)"}
  json.dumps(out)


def test_figure_panels_reconstruct_each_requested_depth_and_show_the_saliency():
  fns, params = _tiny_model()
  x = np.random.default_rng(1).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  native = fns._replace(features_fns={}, kernels_fn=None, head_fn=None,           # B-cos-like: no depths
                         explain_fn=lambda p, images, target: jnp.ones(images.shape))
  panels = explain_protocol.figure_panels({"m": (fns, params), "bcos": (native, params)}, x, np.array([0, 1, 2]),
                                depths=("conv1",))
  assert list(panels) == ["input", "m c·x̂ (conv1)", "m backtracking", "bcos B-cos W(x)⊙x"]
  with pytest.raises(ValueError, match=r"depths \['conv9'\] are not accepted: no model has them; accepted "
                                       r"values: \['conv1'\]"):
    explain_protocol.figure_panels({"m": (fns, params)}, x, np.array([0, 1, 2]), depths=("conv1", "conv9"))
  # For a ReLU conv J(x)ᵀ f(x) is the transposed convolution of the features; the panel is its least-squares
  # multiple of x (so the 1/α scale drops out).
  linear = lambda v: jax.lax.conv_general_dilated(v, params["conv"], (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x_hat = np.asarray(jax.linear_transpose(linear, x)(jax.nn.relu(linear(x)))[0])
  c = np.einsum("nhwc,nhwc->n", x_hat, x) / np.einsum("nhwc,nhwc->n", x_hat, x_hat)
  np.testing.assert_allclose(panels["m c·x̂ (conv1)"], (c[:, None, None, None] * x_hat)[..., 0], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_array_equal(panels["input"], x[..., 0])
  assert panels["m backtracking"].shape == (3, 8, 8)


def test_figure_is_written(tmp_path):
  rng = np.random.default_rng(0)
  panels = {"input": rng.uniform(size=(2, 6, 6)), "m x̂ (fc1)": rng.uniform(size=(2, 6, 6, 3)),
            "m saliency": rng.normal(size=(2, 6, 6))}
  explain_protocol.write_figure(panels, tmp_path / "f.png", title="two\nlines")
  assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# The benchmark's pieces (benchmarks/explain_acceptance.py, benchmarks/explain_report.py).

def test_claims_section_checks_bort_against_sgd_and_dbort():
  from benchmarks import explain_acceptance
  lines = explain_acceptance.claims_section(explain_tables.summarize_seeds(_results()))
  assert lines[0] == explain_acceptance.CLAIMS_TITLE
  assert "- PASS — Bort PSNR > SGD PSNR (fc1): 13.00 vs 8.00 dB" in lines
  assert "- PASS — DBort PSNR ≥ Bort PSNR (fc1): 14.00 vs 13.00 dB" in lines
  assert "- PASS — Bort ≥ SGD on 3x3/gradient: 0.250 vs 0.200" in lines
  results = [r for r in _results() if r["model"] != "sgd"]
  for r in results:
    r["metrics"]["pointing_game"]["3x3"]["gradient"] = float("nan")
  lines = explain_acceptance.claims_section(explain_tables.summarize_seeds(results))
  assert "- NOT MEASURED — Bort ≥ SGD on 3x3/gradient: nan vs nan" in lines
  assert "- NOT MEASURED — Bort PSNR > SGD PSNR (fc1): 13.00 vs nan dB" in lines


def _report_argv(tmp_path):
  """A report on 256 MNIST training images (the embedded subset), tiny nets, a few images per metric."""
  with np.load(pathlib.Path(explain_protocol.__file__).parent / "assets" / "mnist_small.npz") as d:
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "mnist.npz", x_train=d["x_train"][:256], y_train=d["y_train"][:256],
             x_test=d["x_test"][:200], y_test=d["y_test"][:200])
  return ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
          "--arch", "cnn", "--widths", "4", "4", "--strides", "2", "1", "--seeds", "0", "--kinds", "sgd", "bort",
          "--epochs", "2", "--batch-size", "64", "--num-grids", "2", "--num-eval", "4", "--num-big", "2",
          "--ig-steps", "2", "--boundary-epsilons", "1.0"]


def test_report_trains_with_the_example_trainer_resumes_it_and_reuses_finished_runs(tmp_path, capsys):
  pytest.importorskip("flax")
  from benchmarks import explain_report
  from examples import train
  argv = _report_argv(tmp_path)
  args = explain_report.parse_args(argv)
  args.image_shape = (28, 28, 1)
  bort_dir = tmp_path / "cache" / "mnist_cnn" / "bort_seed0"
  # Interrupted after 6 of 8 steps: the trainer's checkpoint of epoch 1 (step 4) is what the report continues from.
  cut = explain_report.run_config("bort", 0, args)
  cut.stop_after_steps = 6
  assert train.train_and_evaluate(cut, str(bort_dir), data_dir=args.data_dir)[1]["status"] == "stopped"
  epoch_one = (bort_dir / "metrics.jsonl").read_text()

  explain_report.main(argv)
  out = capsys.readouterr().out
  assert "bort_seed0: continuing from its last checkpoint" in out and "epoch 1:" not in out.split("bort_seed0")[1]
  assert (bort_dir / "metrics.jsonl").read_text().startswith(epoch_one)   # epoch 1 was not trained again
  for kind in ("sgd", "bort"):
    results = json.loads((bort_dir.parent / f"{kind}_seed0" / "results.json").read_text())
    assert results["status"] == "completed" and results["step"] == 8 and results["model"] == "explain_cnn"
  report = json.loads((tmp_path / "out" / "explain_mnist_cnn.json").read_text())
  assert [(r["model"], r["seed"]) for r in report["results"]] == [("sgd", 0), ("bort", 0)]
  assert "train_seconds" in report["results"][1]["metrics"] and report["config"]["epochs"] == 2
  assert (tmp_path / "out" / "explain_mnist_cnn.md").read_text().startswith("# Explainability on MNIST (CNN)")

  saved = {p: p.read_bytes() for p in bort_dir.parent.glob("*/*.json*") if p.name != "config.json"}
  checkpoints = sorted(p.name for p in bort_dir.glob("checkpoints/*"))
  explain_report.main(argv)
  out = capsys.readouterr().out
  assert "sgd_seed0: trained (cached" in out and "bort_seed0: trained (cached" in out
  assert "sgd seed 0: cached" in out and "bort seed 0: cached" in out and "epoch 1:" not in out
  assert {p: p.read_bytes() for p in saved} == saved                     # results, metrics and evaluations kept
  assert sorted(p.name for p in bort_dir.glob("checkpoints/*")) == checkpoints


def test_report_trains_again_a_run_saved_with_other_settings(tmp_path):
  pytest.importorskip("flax")
  from benchmarks import explain_report
  args = explain_report.parse_args(_report_argv(tmp_path))
  args.image_shape = (28, 28, 1)
  config = explain_report.run_config("bort", 0, args)
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(json.dumps(config.to_dict() | {"learning_rate": 1.0,
                                                                                "stop_after_steps": 3}))
  assert explain_report._changed_fields(config, tmp_path / "run") == ["learning_rate"]
  assert explain_report._changed_fields(config, tmp_path / "elsewhere") == []
  protocol = explain_report.protocol(vars(args) | {"seeds": [0], "out": "x"})
  assert "seeds" not in protocol and "out" not in protocol and protocol["alpha"] == "adaptive"
  explain_report.save_result(tmp_path, protocol, {"accuracy": float("nan")})
  assert np.isnan(explain_report.cached_result(tmp_path, protocol)["accuracy"])
  assert explain_report.cached_result(tmp_path, protocol | {"num_grids": 9}) is None
