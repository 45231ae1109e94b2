"""Explainability suite: reconstruction, backtracking, explainable adversarial samples, baselines, metrics.

Pure, jit/vmap-able functions over ``apply_fn(params, x) -> logits`` or a layer's
``features_fn(params, x) -> features``; images are NHWC floats. Importing this package needs only jax, optax and
numpy. The Flax NNX pieces — the B-cos layers and networks (:mod:`bort_jax.explain.bcos`) and BatchNorm folding
(:mod:`bort_jax.explain.canonization`) — are loaded on first use and need the ``bort_jax[flax]`` extra.
"""

import importlib

from bort_jax.explain.adversarial import AttackResult
from bort_jax.explain.adversarial import attack_result
from bort_jax.explain.adversarial import class_prototypes
from bort_jax.explain.adversarial import clip_l2_perturbation
from bort_jax.explain.adversarial import cw_l2_attack
from bort_jax.explain.adversarial import explainable_adversarial
from bort_jax.explain.adversarial import pgd_attack
from bort_jax.explain.adversarial import summarize
from bort_jax.explain.adversarial import uniform_ball_start
from bort_jax.explain.attributions import BOUNDARY_EPSILONS
from bort_jax.explain.attributions import boundary_integrated_gradients
from bort_jax.explain.attributions import boundary_saliency
from bort_jax.explain.attributions import boundary_search
from bort_jax.explain.attributions import gradient
from bort_jax.explain.attributions import input_x_gradient
from bort_jax.explain.attributions import integrated_gradients
from bort_jax.explain.attributions import path_points
from bort_jax.explain.attributions import predicted_class
from bort_jax.explain.attributions import target_logit
from bort_jax.explain.backtrack import backtrack
from bort_jax.explain.backtrack import top_k_mask
from bort_jax.explain.metrics import box_smooth
from bort_jax.explain.metrics import curve_auc
from bort_jax.explain.metrics import gaussian_kernel
from bort_jax.explain.metrics import grid_cells
from bort_jax.explain.metrics import grid_indices
from bort_jax.explain.metrics import make_grids
from bort_jax.explain.metrics import perturbation_counts
from bort_jax.explain.metrics import perturbation_curve
from bort_jax.explain.metrics import pixel_map
from bort_jax.explain.metrics import pointing_game_score
from bort_jax.explain.metrics import rise_blur
from bort_jax.explain.reconstruction import depth_scales
from bort_jax.explain.reconstruction import kernel_alpha
from bort_jax.explain.reconstruction import reconstruct
from bort_jax.explain.reconstruction import reconstruction_by_depth
from bort_jax.explain.reconstruction import reconstruction_errors
from bort_jax.explain.reconstruction import transpose_apply

# Names from modules that import flax.nnx, resolved on first access (module ``__getattr__``, PEP 562).
_FLAX_NAMES = {
    "BcosConv": "bcos",
    "BcosDense": "bcos",
    "BcosCNN": "bcos",
    "BcosMLP": "bcos",
    "bcos_apply_fns": "bcos",
    "bcos_bce_loss": "bcos",
    "bcos_contributions": "bcos",
    "bcos_transform": "bcos",
    "default_logit_bias": "bcos",
    "encode_input": "bcos",
    "canonize": "canonization",
    "fold_batchnorm": "canonization",
    "fold_batchnorm_params": "canonization",
}

__all__ = [
    # reconstruction and backtracking
    "reconstruct", "reconstruction_by_depth", "reconstruction_errors", "transpose_apply", "depth_scales",
    "kernel_alpha", "backtrack", "top_k_mask",
    # attributions
    "gradient", "input_x_gradient", "integrated_gradients", "path_points", "target_logit", "predicted_class",
    "boundary_search", "boundary_saliency", "boundary_integrated_gradients", "BOUNDARY_EPSILONS",
    # adversarial samples
    "explainable_adversarial", "class_prototypes", "pgd_attack", "cw_l2_attack", "uniform_ball_start",
    "clip_l2_perturbation", "AttackResult", "attack_result", "summarize",
    # metrics
    "make_grids", "grid_indices", "grid_cells", "pointing_game_score", "box_smooth", "perturbation_curve",
    "perturbation_counts", "rise_blur", "gaussian_kernel", "curve_auc", "pixel_map",
    # Flax NNX (bort_jax[flax]): B-cos networks and BatchNorm folding
    *_FLAX_NAMES,
]


def __getattr__(name: str):
  module = _FLAX_NAMES.get(name)
  if module is None:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  try:
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
  except ImportError as error:
    if error.name is not None and error.name != "flax" and not error.name.startswith("flax."):
      raise
    raise ImportError(f"bort_jax.explain.{name} needs Flax: pip install 'bort_jax[flax]' ({error})") from error
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_FLAX_NAMES))
