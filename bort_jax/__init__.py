"""bort_jax: Bort and DBort as composable optax gradient transformations.

Bort (Zhang et al., ICLR 2023) bounds and orthogonalises weight matrices from inside the optimizer, which makes
networks invertible and their features explainable; DBort adds a data-aware term (in the linear case it
converges to PCA). Kernels are read in the Flax orientation ``M = kernel.reshape(-1, out) = Wᵀ``.
"""

import importlib.metadata

from bort_jax._src.alias import bort_adamw
from bort_jax._src.alias import bort_lamb
from bort_jax._src.alias import bort_sgd
from bort_jax._src.alias import torch_momentum
from bort_jax._src.capture import capture_linen_io
from bort_jax._src.correction import MODES
from bort_jax._src.correction import bort_correction
from bort_jax._src.correction import bort_penalty
from bort_jax._src.dbort import LayerIO
from bort_jax._src.dbort import add_dbort_term
from bort_jax._src.dbort import conv_io
from bort_jax._src.dbort import dbort_loss
from bort_jax._src.dbort import dense_io
from bort_jax._src.diagnostics import GapStats
from bort_jax._src.diagnostics import gap_summary
from bort_jax._src.diagnostics import matrix_gap
from bort_jax._src.diagnostics import orthogonality_gap
from bort_jax._src.linen_views import linen_views
from bort_jax._src.masking import kernel_mask
from bort_jax._src.nnx_views import nnx_views
from bort_jax._src.plan import ViewGuessWarning
from bort_jax._src.plan import describe
from bort_jax._src.projection import orthogonalize
from bort_jax._src.projection import polar_newton_schulz
from bort_jax._src.projection import project_row_norms
from bort_jax._src.stability import GammaBound
from bort_jax._src.stability import stable_gamma
from bort_jax._src.transform import BortCorrectionState
from bort_jax._src.transform import add_bort_correction
from bort_jax._src.view_inference import default_view
from bort_jax._src.views import KernelView
from bort_jax._src.views import from_matrix
from bort_jax._src.views import to_matrix

__version__ = importlib.metadata.version("bort_jax")

__all__ = (
    "BortCorrectionState",
    "GammaBound",
    "GapStats",
    "KernelView",
    "LayerIO",
    "MODES",
    "ViewGuessWarning",
    "add_bort_correction",
    "add_dbort_term",
    "bort_adamw",
    "bort_correction",
    "bort_lamb",
    "bort_penalty",
    "bort_sgd",
    "capture_linen_io",
    "conv_io",
    "dbort_loss",
    "default_view",
    "dense_io",
    "describe",
    "from_matrix",
    "gap_summary",
    "kernel_mask",
    "linen_views",
    "matrix_gap",
    "nnx_views",
    "orthogonality_gap",
    "orthogonalize",
    "polar_newton_schulz",
    "project_row_norms",
    "stable_gamma",
    "to_matrix",
    "torch_momentum",
)
