"""How tight `bort_jax.stable_gamma` is: its bound against the measured divergence threshold of the Bort step.

    nice -n 10 python -m benchmarks.gamma_stability --out benchmarks/results/gamma_stability.md

Each case draws one kernel (seeded), runs `bort_sgd` / `bort_adamw` with zero task gradients for `--steps` steps
at 161 γ on a geometric grid over [0.5, 8]·γ* (vmapped), takes the first γ whose weights stop being finite or
exceed 1e3 (divergence is not monotone in γ near the threshold, so no plain bisection), refines between it and the
γ before it on a 33-point grid, and reports the largest γ below it that converged (residual ‖MᵀM − αI‖_max, or the
unit norms' for l2-row/col, below 1e-3).
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bort_jax as bj
from bort_jax._src import correction

LEARNING_RATE = 0.1
# (shape, init std, mode, optimizer, momentum, nesterov, alpha); the first two are the README's example.
OPTIMIZERS = (("sgd", 0.0, False), ("sgd", 0.9, False), ("sgd", 0.9, True), ("adamw", 0.0, False))
CASES = ([((256, 128), 0.1, "l2-full", "sgd", 0.9, False, 1.0), ((256, 128), 0.1, "l2-full", "sgd", 0.0, False, 1.0)]
         + [(shape, std, mode, opt, mu, nesterov, 1.0)
            for shape, std in (((64, 32), 0.2), ((48, 48), 0.2), ((32, 64), 0.2), ((3, 3, 8, 16), 0.15))
            for mode in ("l2-full", "l2-row") for opt, mu, nesterov in OPTIMIZERS]
         + [((48, 48), 0.02, "l2-full", "sgd", 0.9, False, 1.0), ((48, 48), 0.02, "l2-full", "sgd", 0.0, False, 1.0),
            ((64, 32), 0.2, "l2-full", "sgd", 0.9, False, "adaptive"),
            ((64, 32), 0.2, "l2-row", "sgd", 0.0, False, "adaptive"),
            ((64, 32), 0.2, "l2-col", "sgd", 0.9, False, 1.0)])


def _optimizer(opt, gamma, mode, alpha, momentum, nesterov):
  if opt == "adamw":
    return bj.bort_adamw(LEARNING_RATE, gamma, mode=mode, alpha=alpha, weight_decay=0.0)
  return bj.bort_sgd(LEARNING_RATE, gamma, momentum=momentum, nesterov=nesterov, mode=mode, alpha=alpha)


def outcomes(params, gammas, steps, opt, mode, alpha, momentum, nesterov):
  """(finite, converged) after `steps` zero-gradient steps, for every γ of `gammas`."""
  def one(gamma):
    tx = _optimizer(opt, gamma, mode, alpha, momentum, nesterov)
    zeros = jax.tree.map(jnp.zeros_like, params)

    def body(_, carry):
      p, s = carry
      u, s = tx.update(zeros, s, p)
      return optax.apply_updates(p, u), s

    kernel = jax.tree.leaves(jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))[0])[0]
    m = kernel.reshape(-1, kernel.shape[-1])
    finite = jnp.all(jnp.isfinite(m)) & (jnp.max(jnp.abs(m)) < 1e3)
    tall = m.shape[1] > m.shape[0]
    if mode == "l2-full":
      gram = m.T @ m if not tall else m @ m.T
      a = jnp.mean(jnp.sqrt(jnp.diag(gram))) ** 2 if alpha == "adaptive" else alpha
      residual = jnp.max(jnp.abs(gram - a * jnp.eye(gram.shape[0])))
    else:
      norms = jnp.sum(m * m, axis=0 if correction.side_for(mode, tall) == "row" else 1)
      a = jnp.mean(jnp.sqrt(norms)) ** 2 if alpha == "adaptive" else alpha
      residual = jnp.max(jnp.abs(norms - a))
    return finite, finite & (residual < 1e-3)

  return map(np.asarray, jax.jit(jax.vmap(one))(jnp.asarray(gammas, jnp.float32)))


def threshold(params, bound, steps, *case):
  """(largest converging γ, smallest diverging γ) around the first divergence above 0.5·γ*; None if none."""
  grid, converged_below = np.geomspace(0.5 * bound, 8.0 * bound, 161), float("nan")
  for _ in range(2):
    finite, converged = outcomes(params, grid, steps, *case)
    diverged = np.flatnonzero(~finite)
    if len(diverged) == 0 or diverged[0] == 0:
      return None
    first = diverged[0]
    below = grid[:first][converged[:first]]
    converged_below = below.max() if len(below) else converged_below
    grid = np.linspace(grid[first - 1], grid[first], 33)
  return converged_below, grid[-1]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results/gamma_stability.md")
  parser.add_argument("--steps", type=int, default=500)
  args = parser.parse_args(argv)
  start = time.time()
  lines = ["# `stable_gamma` against the measured divergence threshold", "",
           f"`python -m benchmarks.gamma_stability`, {args.steps} zero-gradient steps at learning rate "
           f"{LEARNING_RATE}, jax {jax.__version__}; each kernel drawn N(0, std²) with seed 0 (cases of the same "
           "shape and std share it).", "",
           "| shape (Flax) | std | mode | α | optimizer | bound γ* | largest converging γ | smallest diverging γ "
           "| diverging / γ* |", "|---|---|---|---|---|---|---|---|---|"]
  for shape, std, mode, opt, momentum, nesterov, alpha in CASES:
    kernel = jnp.asarray(np.random.default_rng(0).normal(0, std, shape), jnp.float32)
    params = {("Conv_0" if len(shape) == 4 else "Dense_0"): {"kernel": kernel}}
    bound = bj.stable_gamma(params, LEARNING_RATE, momentum=momentum, nesterov=nesterov, optimizer=opt, mode=mode,
                            alpha=alpha).gamma
    found = threshold(params, bound, args.steps, opt, mode, alpha, momentum, nesterov)
    name = "bort_adamw" if opt == "adamw" else f"bort_sgd μ={momentum}" + (" Nesterov" if nesterov else "")
    cells = ("none in [0.5, 8]·γ*", "", "") if found is None else (
        f"{found[0]:.4g}", f"{found[1]:.4g}", f"{found[1] / bound:.2f}")
    lines.append(f"| {shape} | {std} | {mode} | {alpha} | {name} | {bound:.4g} | " + " | ".join(cells) + " |")
    print(lines[-1], flush=True)
  lines += ["", f"{time.time() - start:.0f} s on this machine."]
  pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
