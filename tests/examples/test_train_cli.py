"""The CLI `python -m examples.main`: config overrides, up-front rejection, files written, --resume."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO = "examples/configs/mnist_small_demo.py"


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-m", "examples.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_bad_override_is_rejected_before_training(tmp_path):
  proc = _main("--config", DEMO, "--workdir", str(tmp_path / "run"), "--config.optimizer=adam")
  assert proc.returncode != 0
  assert "config.optimizer='adam' is not accepted; accepted values: 'sgd', 'bort_sgd'" in proc.stderr
  assert not (tmp_path / "run").exists()


def _epoch_lines(stdout: str) -> list[str]:
  return [line for line in stdout.splitlines() if line.startswith("epoch ")]


def test_tiny_demo_writes_results_resumes_and_trains_the_baseline(tmp_path):
  workdir = tmp_path / "run"
  tiny = ["--config.model=mlp", "--config.train_limit=256", "--config.batch_size=64",
          "--config.num_epochs=2", "--config.warmup_epochs=0.5", "--config.progress_bar=False"]
  proc = _main("--config", DEMO, "--workdir", str(workdir), *tiny, "--config.stop_after_steps=5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "continue with --resume" in proc.stdout
  assert "Bort constrains these kernels (bort_jax.describe):\npath " in proc.stdout
  assert not (workdir / "explain.png").exists()  # only a finished run draws the explainability figure
  assert not (workdir / "baseline_sgd").exists()  # nor trains its baseline
  first_epochs = _epoch_lines(proc.stdout)
  proc = _main("--config", DEMO, "--workdir", str(workdir), *tiny, "--resume")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["completed"] and results["step"] == 8 and results["optimizer"] == "bort_sgd"
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert set(records[-1]["orthogonality_gap"]) == {f"layers/{i}/kernel" for i in range(3)}
  assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
  assert json.loads((workdir / "config.json").read_text())["model"] == "mlp"
  # The demo asks for its SGD baseline: the same config, trained in a sibling workdir, drawn beside Bort.
  baseline = json.loads((workdir / "baseline_sgd" / "results.json").read_text())
  assert baseline["completed"] and baseline["step"] == 8 and baseline["optimizer"] == "sgd"
  assert json.loads((workdir / "baseline_sgd" / "config.json").read_text())["explain_baseline"] == ""
  assert (workdir / "explain.png").read_bytes()[:4] == b"\x89PNG"  # reconstructions + backtracking saliency
  assert f"{workdir}/explain.png" in proc.stdout
  epochs = first_epochs + _epoch_lines(proc.stdout)
  assert len(epochs) == 4 and all(len(line) <= 120 for line in epochs), epochs  # Bort 1, 2; SGD 1, 2
  assert all("mean offdiag gap" in line for line in epochs)
