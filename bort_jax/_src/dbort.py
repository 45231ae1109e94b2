"""DBort: the data-aware term, as a loss helper and as a transformation fed with layer activations.

The reference adds an auxiliary term to the training loss that rewards output energy under the Bort
constraint: ``loss = CE − λ · mean(y²)^β`` (λ = 1e-3, β = 0.1 on MNIST/CIFAR). With orthonormal rows and
a linear layer, maximising the output energy is PCA: the rows converge to the top principal subspace.

Two equivalent ways to use it:

* :func:`dbort_loss` — add it to your loss and let ``jax.grad`` do the rest (the term then also reaches
  earlier layers through ``y``).
* :func:`add_dbort_term` — a ``GradientTransformationExtraArgs`` that receives each layer's input and output
  (``dbort_activations={path: LayerIO}``) and adds the closed-form gradient to that layer's kernel (and bias):
  it is the gradient of :func:`dbort_loss` with every layer's input held fixed, so a training loop can keep
  its loss untouched and the term stays local to the constrained layers.

Layer-wise gradient, for ``y = x M + b`` and ``s = mean(y²)`` over the ``n`` entries of ``y``:
``∂/∂M [−λ s^β] = −λ β s^(β−1) (2/n) xᵀ y`` and ``∂/∂b = −λ β s^(β−1) (2/n) Σ y``.
"""

import math
from typing import Any
from typing import Mapping
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import optax

from bort_jax._src import plan as plan_lib
from bort_jax._src import validation
from bort_jax._src import views as views_lib


class LayerIO(NamedTuple):
  """A layer's input in its kernel's matrix view, ``(N, fan_in)``, and its output ``(N, out)``."""

  inputs: jax.Array
  outputs: jax.Array


def _check_lam_beta(lam, beta):
  validation.check_positive("lam", lam)
  validation.check_positive("beta", beta)


def dbort_loss(outputs: Any, lam: float = 1e-3, beta: float = 0.1) -> jax.Array:
  """DBort auxiliary loss ``−λ Σ_layers mean(y_ℓ²)^β`` over a pytree of layer outputs.

  Args:
    outputs: a pytree of arrays, one per layer (e.g. pre-activations captured with ``nnx.sow``).
    lam: λ > 0.
    beta: β > 0.

  Returns:
    A float32 scalar to add to the task loss.

  Example:
    >>> import jax.numpy as jnp, bort_jax as bj
    >>> bj.dbort_loss({"fc1": jnp.full((4, 3), 2.0)}, lam=1e-3, beta=0.5)  # −1e-3 · mean(4)^0.5
    Array(-0.002, dtype=float32)
  """
  _check_lam_beta(lam, beta)
  energies = [jnp.mean(jnp.square(y.astype(jnp.float32))) for y in jax.tree_util.tree_leaves(outputs)]
  if not energies:
    raise ValueError("outputs must contain at least one array.")
  return -lam * sum(e ** beta for e in energies)


def dense_io(inputs: jax.Array, outputs: jax.Array) -> LayerIO:
  """:class:`LayerIO` of a dense layer: ``(..., fan_in)`` inputs and ``(..., out)`` outputs, flattened."""
  return LayerIO(inputs.reshape(-1, inputs.shape[-1]), outputs.reshape(-1, outputs.shape[-1]))


def conv_io(
    inputs: jax.Array,
    outputs: jax.Array,
    kernel_size: Sequence[int],
    strides: Union[int, Sequence[int]] = 1,
    padding: Union[str, Sequence[tuple]] = "SAME",
) -> LayerIO:
  """:class:`LayerIO` of an NHWC convolution: im2col patches ordered like the Flax kernel ``(*window, in)``."""
  spatial = len(kernel_size)
  strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
  lhs_spec = "N" + "HWD"[:spatial] + "C"
  rhs_spec = "HWD"[:spatial] + "IO"
  patches = jax.lax.conv_general_dilated_patches(
      inputs, tuple(kernel_size), strides, padding, dimension_numbers=(lhs_spec, rhs_spec, lhs_spec))
  channels = inputs.shape[-1]
  # Patches come out channel-major (in, *window); the Flax kernel flattens as (*window, in).
  patches = patches.reshape(patches.shape[:-1] + (channels,) + tuple(kernel_size))
  patches = jnp.moveaxis(patches, spatial + 1, -1)
  return LayerIO(patches.reshape(-1, channels * math.prod(kernel_size)),
                 outputs.reshape(-1, outputs.shape[-1]))


def dbort_kernel_gradient(io: LayerIO, lam: float, beta: float):
  """Closed-form gradient of ``−λ mean(y²)^β`` with respect to the matrix view and the bias."""
  x = io.inputs.astype(jnp.float32)
  y = io.outputs.astype(jnp.float32)
  energy = jnp.mean(jnp.square(y))
  coefficient = -lam * beta * energy ** (beta - 1.0) * 2.0 / y.size
  return coefficient * (x.T @ y), coefficient * jnp.sum(y, axis=0)


def _check_io(path: str, io: Any, matrix_shape) -> None:
  """A ValueError naming the kernel when its LayerIO does not fit its matrix view ``(fan_in, out)``."""
  if len(matrix_shape) != 2:
    raise ValueError(f"dbort_activations[{path!r}]: the kernel is a batch of {matrix_shape[:-2]} matrices (stacked "
                     "layers or fused projections); DBort takes one matrix per kernel: unstack those layers.")
  fan_in, out = matrix_shape
  inputs, outputs = getattr(io, "inputs", None), getattr(io, "outputs", None)
  shapes = tuple(getattr(a, "shape", None) for a in (inputs, outputs))
  if (None in shapes or len(shapes[0]) != 2 or len(shapes[1]) != 2 or shapes[0][1] != fan_in
      or shapes[1][1] != out or shapes[0][0] != shapes[1][0]):
    raise ValueError(f"dbort_activations[{path!r}] must be a LayerIO with inputs (n, {fan_in}) and outputs "
                     f"(n, {out}) in the kernel's matrix view, got {type(io).__name__} with shapes {shapes}; build "
                     "it with bort_jax.dense_io(x, y) or bort_jax.conv_io(x, y, kernel_size, strides, padding).")


def add_dbort_term(
    lam: float = 1e-3,
    beta: float = 0.1,
    *,
    layout: str = "flax",
    views: Optional[views_lib.ViewRules] = None,
) -> optax.GradientTransformationExtraArgs:
  """Adds the layer-local DBort gradient from activations passed as the extra arg ``dbort_activations``.

  ``update(updates, state, params, dbort_activations={"Dense_0/kernel": LayerIO(x, y), ...})``: keys are
  kernel paths as :func:`bort_jax.describe` lists them; a sibling ``bias`` leaf gets its gradient too.
  Steps without activations leave the updates unchanged. Place it before momentum / Adam in a chain, as a
  gradient term.

  References:
    Zhang et al., ICLR 2023 (Bort), and the DBort extension in the authors' reference code (exps/pca.py).

  Example:
    >>> import jax.numpy as jnp, optax, bort_jax as bj
    >>> params = {"fc": {"kernel": jnp.eye(2)}}
    >>> tx = optax.chain(bj.add_dbort_term(lam=1.0, beta=1.0), optax.sgd(1.0))
    >>> x = jnp.array([[1.0, 0.0]]); y = x @ params["fc"]["kernel"]
    >>> u, _ = tx.update({"fc": {"kernel": jnp.zeros((2, 2))}}, tx.init(params), params,
    ...                  dbort_activations={"fc/kernel": bj.dense_io(x, y)})
    >>> u["fc"]["kernel"][0, 0]  # −lr · ∂(−mean(y²))/∂W: grows the weight the data excites
    Array(1., dtype=float32)
    >>> float(jnp.abs(u["fc"]["kernel"][1]).max())  # the input that is never active: no change
    0.0
  """
  _check_lam_beta(lam, beta)
  views_lib.check_layout(layout)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, dbort_activations: Optional[Mapping[str, LayerIO]] = None, **extra):
    del extra
    validation.require_params("add_dbort_term", params, "update(updates, state, params, dbort_activations=...)")
    if not dbort_activations:
      return updates, state
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    index = {views_lib.path_str(path): i for i, (path, _) in enumerate(leaves_with_path)}
    update_leaves = treedef.flatten_up_to(updates)
    kernel_views = {item.path: item.view for item in plan_lib.plan_kernels(params, None, None, layout, views)[0]}
    for path, io in dbort_activations.items():
      if path not in kernel_views:
        raise ValueError(f"dbort_activations key {path!r} is not a kernel path; known: {sorted(kernel_views)}.")
      kernel = leaves_with_path[index[path]][1]
      names = tuple(path.split("/"))
      view = kernel_views[path]
      _check_io(path, io, view.matrix_shape(kernel.shape))
      grad_m, grad_b = dbort_kernel_gradient(io, lam, beta)
      grad_kernel = views_lib.from_matrix(grad_m, view, kernel.shape)
      i = index[path]
      update_leaves[i] = (update_leaves[i] + grad_kernel).astype(update_leaves[i].dtype)
      bias_path = "/".join(names[:-1] + ("bias",))
      if bias_path in index:
        j = index[bias_path]
        update_leaves[j] = (update_leaves[j] + grad_b.reshape(update_leaves[j].shape)).astype(update_leaves[j].dtype)
    return jax.tree_util.tree_unflatten(treedef, update_leaves), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
