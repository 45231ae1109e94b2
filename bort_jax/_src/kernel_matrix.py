"""Matrix algebra on kernels without reshaping them: sharding-aware and exact where it matters.

A :class:`KernelMatrix` is a kernel transposed to ``(*batch, *fan_in, *out)`` axes. Its Gram, unit norms and
products are ``dot_general``/reductions over axis groups, never a reshape, because merging a sharded axis
with its neighbours is not expressible under an Explicit mesh (``(3, 3, 8@x, 16) -> (72, 16)`` is refused).

Sharding. Under an Explicit mesh the input's ``PartitionSpec`` is read from its type and every product names
its output sharding: a Gram's rows are sharded like the kernel's unit axes and its columns are whole, keeping
the batch axes' sharding; a product with a Gram keeps the kernel's sharding. A Gram that contracts over the
sharded axes is then a local partial Gram plus one all-reduce. A Gram whose *unit* axes are sharded needs the
kernel whole over those axes: :func:`gather_units` gathers it once, and from that copy each device forms only
its rows of the Gram and its slice of ``W·(Gram − αI)`` (1/n of the FLOPs, not the whole product on every
device). :func:`contracting_side` picks the side that moves fewer bytes where the mode leaves the choice.
Under Auto meshes or without a mesh the partitioner decides. Measured on 8 fake CPU devices:
``benchmarks/collective_bytes.py``.

Precision. TPUs run float32 matmuls with bfloat16 inputs at default precision, recent GPUs with TF32. Near the
constraint ``WᵀW − αI`` is a small difference of large numbers, so the Gram is computed at ``precision``
(``HIGHEST`` by default) and the residual is formed before the second product: ``Δ = W·(WᵀW − αI)``, never
``WWᵀW − αW``. The second product then only needs the residual's own relative accuracy.
"""

import dataclasses
import math
from typing import Literal
from typing import Optional
from typing import Tuple
from typing import Union

import jax
import jax.numpy as jnp

PRECISIONS = ("highest", "high", "default")
Precision = Union[None, Literal["highest", "high", "default"], jax.lax.Precision]
SIDES = ("row", "col")


def check_precision(precision: Precision) -> Optional[jax.lax.Precision]:
  """``"highest"``/``"high"``/``"default"``/``None`` or a ``jax.lax.Precision`` -> ``jax.lax.Precision``."""
  if isinstance(precision, jax.lax.Precision):
    return precision
  if precision is None:
    return None
  if isinstance(precision, str) and precision.lower() in PRECISIONS:
    return {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH,
            "default": jax.lax.Precision.DEFAULT}[precision.lower()]
  raise ValueError(f"precision must be one of {PRECISIONS}, None or a jax.lax.Precision, got {precision!r}.")


def explicit_spec(x: jax.Array) -> Optional[Tuple]:
  """The per-axis ``PartitionSpec`` entries of ``x`` when it lives on an Explicit mesh, else ``None``."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  axis_types = getattr(mesh, "axis_types", ())
  if not any(t == jax.sharding.AxisType.Explicit for t in axis_types):
    return None
  spec = tuple(sharding.spec)
  return spec + (None,) * (x.ndim - len(spec))


@dataclasses.dataclass(frozen=True)
class KernelMatrix:
  """A kernel as a (batch of) matrices: ``x`` has axes ``(*batch, *fan_in, *out)``.

  Attributes:
    x: the transposed kernel.
    num_batch: number of leading batch (stacked-layer) axes.
    num_in: number of fan-in axes after them; the rest are output axes.
    sharded_as: the kernel's ``PartitionSpec`` entries when ``x`` is a copy gathered by :func:`gather_units`
      (Grams and products are then sharded as the kernel was), else ``None``: read from ``x``.
  """

  x: jax.Array
  num_batch: int
  num_in: int
  sharded_as: Optional[Tuple] = None

  @classmethod
  def from_matrix(cls, m: jax.Array) -> "KernelMatrix":
    """A plain ``(..., fan_in, out)`` matrix: every leading axis is a batch axis."""
    return cls(m, m.ndim - 2, 1)

  @property
  def batch_axes(self) -> Tuple[int, ...]:
    return tuple(range(self.num_batch))

  @property
  def in_axes(self) -> Tuple[int, ...]:
    return tuple(range(self.num_batch, self.num_batch + self.num_in))

  @property
  def out_axes(self) -> Tuple[int, ...]:
    return tuple(range(self.num_batch + self.num_in, self.x.ndim))

  @property
  def fan_in(self) -> int:
    return math.prod(self.x.shape[a] for a in self.in_axes)

  @property
  def out(self) -> int:
    return math.prod(self.x.shape[a] for a in self.out_axes)

  @property
  def is_tall(self) -> bool:
    """More output units than fan-in: the rows of W cannot be orthonormal."""
    return self.out > self.fan_in

  @property
  def spec(self) -> Optional[Tuple]:
    return self.sharded_as if self.sharded_as is not None else explicit_spec(self.x)

  def unit_axes(self, side: str) -> Tuple[int, ...]:
    """Axes indexing the units of ``side``: output units (``"row"``) or fan-in coordinates (``"col"``)."""
    return self.out_axes if side == "row" else self.in_axes

  def contracted_axes(self, side: str) -> Tuple[int, ...]:
    return self.in_axes if side == "row" else self.out_axes

  def is_sharded(self, axes: Tuple[int, ...]) -> bool:
    spec = self.spec
    return spec is not None and any(spec[a] is not None for a in axes)

  def with_x(self, x: jax.Array) -> "KernelMatrix":
    """The same view of another kernel ``x``, sharded as ``x`` is."""
    return dataclasses.replace(self, x=x, sharded_as=None)


def contracting_side(k: KernelMatrix) -> str:
  """Side whose Gram both the l2-full correction and the polar iteration may use (they are equal).

  A kernel sharded on one side only contracts over its sharded axes (a local partial Gram + one all-reduce,
  no gather) when that Gram has no more entries than the kernel; otherwise moving the kernel once (an
  all-gather) is cheaper than all-reducing the larger Gram, so the smaller Gram is formed. Unsharded
  kernels, and kernels sharded on both sides, use the smaller Gram. Ties go to the all-reduce: on a ring it
  moves up to twice the bytes of a gather of the same size, but it never materialises the whole kernel on
  one device, which is what FSDP is for (``benchmarks/results/collective_bytes.md`` has the bytes).
  """
  smaller = "col" if k.is_tall else "row"
  in_sharded, out_sharded = k.is_sharded(k.in_axes), k.is_sharded(k.out_axes)
  if in_sharded == out_sharded:
    return smaller
  side = "col" if out_sharded else "row"
  units = k.fan_in if side == "col" else k.out
  return side if units * units <= k.fan_in * k.out else smaller


def unit_sq_norms(k: KernelMatrix, side: str, keepdims: bool = False) -> jax.Array:
  """Squared norms of the units of ``side``: shape ``(*batch, *units)`` (or broadcastable to ``x``)."""
  return jnp.sum(jnp.square(k.x.astype(jnp.float32)), axis=k.contracted_axes(side), keepdims=keepdims)


def _units_whole(k: KernelMatrix, side: str) -> jax.Array:
  """``k.x`` in float32, gathered over the unit axes of ``side`` when they are sharded (else as it is)."""
  x = k.x.astype(jnp.float32)
  if not k.is_sharded(k.unit_axes(side)):
    return x
  units = set(k.unit_axes(side))
  whole = tuple(None if a in units else s for a, s in enumerate(k.spec))
  return x if explicit_spec(x) == whole else jax.sharding.reshard(x, jax.sharding.PartitionSpec(*whole))


def gather_units(k: KernelMatrix, side: str) -> KernelMatrix:
  """``k`` with its unit axes of ``side`` whole on every device (one all-gather) for :func:`gram` and
  :func:`times` to share; their results keep ``k``'s sharding. Without it each reshards ``k`` itself and the
  single gather rests on XLA merging the two (it does on jax 0.10.2's CPU backend)."""
  if not k.is_sharded(k.unit_axes(side)):
    return k
  return dataclasses.replace(k, x=_units_whole(k, side), sharded_as=k.spec)


def _gram_sharding(k: KernelMatrix, side: str):
  """Rows sharded like the kernel's unit axes (each device forms its own rows), columns whole."""
  spec = k.spec
  if spec is None:
    return None
  return jax.sharding.PartitionSpec(*(spec[a] for a in k.batch_axes + k.unit_axes(side)),
                                    *(None,) * len(k.unit_axes(side)))


def gram(k: KernelMatrix, side: str, precision: Precision = "highest") -> jax.Array:
  """WWᵀ (``side="row"``: output units) or WᵀW (``"col"``), float32, shape ``(*batch, *units, *units)``."""
  x = _units_whole(k, side)  # once for both operands (XLA would gather each operand separately)
  contract = k.contracted_axes(side)
  dims = ((contract, contract), (k.batch_axes, k.batch_axes))
  return jax.lax.dot_general(x, x, dims, precision=check_precision(precision),
                             preferred_element_type=jnp.float32, out_sharding=_gram_sharding(k, side))


def identity(k: KernelMatrix, side: str) -> jax.Array:
  """The identity over the units of ``side``, shaped ``(*units, *units)`` like a Gram's trailing axes."""
  units = tuple(k.x.shape[a] for a in k.unit_axes(side))
  return jnp.eye(math.prod(units), dtype=jnp.float32).reshape(units + units)


def expand(batch_values: jax.Array, num_axes: int) -> jax.Array:
  """``(*batch)`` values broadcastable against an array with ``num_axes`` more trailing axes."""
  return batch_values.reshape(batch_values.shape + (1,) * num_axes)


def times(k: KernelMatrix, r: jax.Array, side: str, precision: Precision = None) -> jax.Array:
  """``W·r`` for a row-side ``r`` (out × out), ``r·W`` for a col-side one, with ``x``'s axes and sharding.

  ``r`` must be symmetric (a Gram − αI, its sign, I − Gram): it is contracted over its columns. In the Flax
  orientation ``x = Wᵀ``: row side is ``x·rᵀ`` (contract ``x``'s out axes), col side ``r·x``. The result's
  units are ``r``'s rows, which :func:`gram` shards like the kernel's units: with the unit axes whole
  (:func:`gather_units`), each device multiplies by its own rows and forms its own slice, nothing gathered.
  """
  x = _units_whole(k, side)
  nb, units = k.num_batch, len(k.unit_axes(side))
  r_columns = tuple(range(nb + units, nb + 2 * units))
  out_sharding = None if k.spec is None else jax.sharding.PartitionSpec(*k.spec)
  batch = (k.batch_axes, k.batch_axes)
  if side == "row":
    dims = ((k.out_axes, r_columns), batch)
    return jax.lax.dot_general(x, r, dims, precision=check_precision(precision),
                               preferred_element_type=jnp.float32, out_sharding=out_sharding)
  dims = ((r_columns, k.in_axes), batch)
  return jax.lax.dot_general(r, x, dims, precision=check_precision(precision),
                             preferred_element_type=jnp.float32, out_sharding=out_sharding)
