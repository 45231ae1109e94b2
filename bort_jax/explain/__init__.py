"""Explainability suite: reconstruction, backtracking, explainable adversarial samples, baselines, metrics.

Pure, jit/vmap-able functions over ``apply_fn(params, x) -> logits`` or a layer's
``features_fn(params, x) -> features``; images are NHWC floats.
"""

from bort_jax.explain.reconstruction import depth_scales
from bort_jax.explain.reconstruction import kernel_alpha
from bort_jax.explain.reconstruction import reconstruct
from bort_jax.explain.reconstruction import reconstruction_by_depth
from bort_jax.explain.reconstruction import reconstruction_errors
from bort_jax.explain.reconstruction import transpose_apply
from bort_jax.explain.attributions import boundary_integrated_gradients
from bort_jax.explain.attributions import boundary_saliency
from bort_jax.explain.attributions import boundary_search
from bort_jax.explain.attributions import gradient
from bort_jax.explain.attributions import input_x_gradient
from bort_jax.explain.attributions import integrated_gradients
from bort_jax.explain.attributions import target_logit
from bort_jax.explain.backtrack import backtrack
from bort_jax.explain.backtrack import top_k_mask
from bort_jax.explain.bcos import BcosConv
from bort_jax.explain.bcos import BcosDense
from bort_jax.explain.bcos import BcosCNN
from bort_jax.explain.bcos import BcosMLP
from bort_jax.explain.bcos import bcos_apply_fns
from bort_jax.explain.bcos import bcos_contributions
from bort_jax.explain.bcos import encode_input
from bort_jax.explain.adversarial import AttackResult
from bort_jax.explain.adversarial import attack_result
from bort_jax.explain.adversarial import class_prototypes
from bort_jax.explain.adversarial import explainable_adversarial
from bort_jax.explain.adversarial import pgd_attack
from bort_jax.explain.adversarial import summarize
from bort_jax.explain.metrics import curve_auc
from bort_jax.explain.metrics import make_grids
from bort_jax.explain.metrics import perturbation_curve
from bort_jax.explain.metrics import pixel_map
from bort_jax.explain.metrics import pointing_game_score
from bort_jax.explain.canonization import canonize
from bort_jax.explain.canonization import fold_batchnorm
from bort_jax.explain.canonization import fold_batchnorm_params
