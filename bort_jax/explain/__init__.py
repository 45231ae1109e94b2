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
