"""Which axes of a kernel are fan-in, output units, stacked layers or fused projections — from what the tree says.

Evidence, strongest first: a ``views=`` rule (a :class:`KernelView` is used as given; a number or positions of
stacked axes leave the rest to this module); flax logical axis names this module can interpret; the layer kind
read from Linen's automatic module names (``Dense_0``, ``Conv_0``, ``ConvLocal_0``), from attention projection
names (``query``/``key``/``value``/``out``) or from the PyTorch ``(out, in, ...)`` layout. A 2-D kernel is
``(in, out)`` whatever its name. Anything else is a guess, returned with ``certain=False`` so that the plan warns
(:func:`bort_jax.nnx_views` and :func:`bort_jax.linen_views` read the kind from the model instead).

Names that say how an axis is *sharded* (mesh axes such as ``"model"``, ``"data"``, ``"fsdp"``) are not names of
what the axis *is*: only the names below change a view, and an axis-name list whose length is not the kernel's
rank is ignored (flax accepts such lists).
"""

import re
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

from bort_jax._src.views import TORCH_QKV
from bort_jax._src.views import KernelView
from bort_jax._src.views import check_layout

# Logical axis names (flax ``with_logical_partitioning``, MaxText, flax lm1b) this module interprets.
STACKED_AXIS_PATTERN = re.compile(r"(?i)(.*_)?(layers?|stack|stacked|scan|scanned|blocks?|repeats?|stages?)(_.*)?")
FUSED_AXIS_NAMES = ("qkv", "num_activations", "fused", "exp", "expert", "experts", "num_experts")
EMBED_AXIS_PATTERN = re.compile(r"(?i)(embed|embedding|emb|d_model)(_.*)?")
FEATURE_AXIS_NAMES = ("mlp", "heads", "q_heads", "kv_heads", "kv", "joined_kv", "head_dim", "kv_head_dim", "vocab",
                      "mlp_no_fsdp", "q_lora", "kv_lora")
ATTENTION_INPUT_PROJECTIONS = ("query", "key", "value")
ATTENTION_OUTPUT_PROJECTION = "out"

_ATTENTION_MODULE = re.compile(r"(?i).*(attention|attn|mha).*")  # Linen/NNX attention modules and their names
TORCH_FUSED_QKV = ("qkv", "to_qkv", "qkv_proj")  # timm / vit-pytorch fused nn.Linear(dim, 3·dim)
_CONV_LOCAL = re.compile(r"(?i).*conv_?local.*")
_CONV_NAMED = re.compile(r"(?i).*conv.*")
_LINEN_AUTO = {"dense": re.compile(r"Dense_\d+"), "conv": re.compile(r"Conv(Transpose)?_\d+"),
               "conv_local": re.compile(r"ConvLocal_\d+")}

Stacked = Union[None, int, Tuple[int, ...]]


class ViewGuess(NamedTuple):
  """A view, whether it is certain, why not (``reason``) and where it came from (``source``, for describe)."""

  view: KernelView
  certain: bool
  reason: str
  source: str


def axis_role(name: Optional[str]) -> Optional[str]:
  """``"stacked"``, ``"fused"``, ``"embed"``, ``"feature"`` or None (a mesh axis name, None or unknown)."""
  if not isinstance(name, str):
    return None
  if name in FUSED_AXIS_NAMES:
    return "fused"
  if name in FEATURE_AXIS_NAMES:
    return "feature"
  if EMBED_AXIS_PATTERN.fullmatch(name):
    return "embed"
  if STACKED_AXIS_PATTERN.fullmatch(name):
    return "stacked"
  return None


def stacked_positions(stacked: Stacked, ndim: int, path: str) -> Tuple[int, ...]:
  """``views=`` shorthand -> positions: an int n means the n leading axes; a tuple lists positions."""
  positions = tuple(range(stacked)) if isinstance(stacked, int) else tuple(stacked)
  if any(not 0 <= a < ndim for a in positions) or len(set(positions)) != len(positions):
    raise ValueError(f"views rule gives stacked axes {stacked!r} for {path}, which has {ndim} axes; give a number "
                     f"of leading axes or distinct positions in 0..{ndim - 1}.")
  return positions


def _layer_kind(module: str, parent: str) -> Tuple[Optional[str], int]:
  """``(kind, rank of its own kernel or 0 for any)`` from a module name that says it for sure.

  ``query``/``key``/``value``/``out`` are attention projections only inside a module named like attention
  (``MultiHeadDotProductAttention_0``, ``SelfAttention_0``, ``attn``): a stacked Linear named ``out`` is not one.
  """
  if _LINEN_AUTO["dense"].fullmatch(module):
    return "Dense (Linen automatic name)", 2
  if _LINEN_AUTO["conv_local"].fullmatch(module) or _CONV_LOCAL.fullmatch(module):
    return "ConvLocal", 0
  if _LINEN_AUTO["conv"].fullmatch(module):
    return "Conv (Linen automatic name)", 0
  if module in ATTENTION_INPUT_PROJECTIONS + (ATTENTION_OUTPUT_PROJECTION,) and _ATTENTION_MODULE.fullmatch(parent):
    return f"attention {module} projection", 3
  return None, 0


def _kind_view(kind: str, module: str, axes: Tuple[int, ...]) -> Tuple[Tuple[int, ...], ...]:
  """``(in_axes, out_axes, extra batch axes)`` of a kernel of a known kind over its own ``axes``."""
  if kind == "ConvLocal":
    return axes[-2:-1], axes[-1:], axes[:-2]
  if module == ATTENTION_OUTPUT_PROJECTION:
    return axes[:2], axes[2:], ()
  if module in ATTENTION_INPUT_PROJECTIONS:
    return axes[:1], axes[1:], ()
  return axes[:-1], axes[-1:], ()


def infer_view(names: Sequence[str], ndim: int, layout: str = "flax", stacked: Stacked = None,
               axis_names: Optional[Sequence[Optional[str]]] = None) -> ViewGuess:
  """The view of a kernel from its path ``names``, rank, declared ``stacked`` axes and logical ``axis_names``.

  Flax: Dense ``(in, out)``; Conv ``(*window, in, out)``; ConvLocal ``(*positions, in·window, out)`` (one matrix
  per position); attention ``query/key/value`` ``(embed, heads, head_dim)`` and ``out`` ``(heads, head_dim,
  embed)``; axes named as fused projections (``qkv``, ``num_activations``) or experts are a batch of separate
  matrices, as stacked layers are; other axes named ``embed*`` split from the rest. Torch: ``(out, in,
  *window)``; ``in_proj_weight`` as three ``(E, E)``. Anything else flattens all but the last axis into fan-in
  and is marked uncertain.
  """
  check_layout(layout)
  path = "/".join(names)
  module = names[-2] if len(names) >= 2 else ""
  notes = []
  if axis_names is not None and len(axis_names) != ndim:
    notes.append(f"axis names {tuple(axis_names)} ignored ({len(axis_names)} names for {ndim} axes)")
    axis_names = None
  roles = tuple(axis_role(n) for n in axis_names) if axis_names is not None else (None,) * ndim
  named = ", ".join(str(n) for n in axis_names) if axis_names is not None else ""

  def guess(in_axes, out_axes, batch, certain, source, reason=""):
    if notes:
      source = f"{source}; {'; '.join(notes)}"
    return ViewGuess(KernelView(tuple(in_axes), tuple(out_axes), tuple(batch)), certain, reason, source)

  if layout == "torch" and ndim == 2 and names and (names[-1] == TORCH_QKV or (
      names[-1] == "weight" and module in TORCH_FUSED_QKV)):
    return ViewGuess(KernelView(in_axes=(2,), out_axes=(1,), batch_axes=(0,), leading_split=3), True, "",
                     f"torch fused {names[-1] if names[-1] == TORCH_QKV else module}: q, k, v as three matrices")
  if stacked is not None:
    batch, batch_source = stacked_positions(stacked, ndim, path), "views= stacked axes"
  else:
    batch = tuple(a for a, r in enumerate(roles) if r in ("stacked", "fused"))
    batch_source = f"axis names ({named})" if batch else ""
  rest = tuple(a for a in range(ndim) if a not in batch)
  if len(rest) < 2:
    raise ValueError(f"kernel {path} has {len(rest)} non-stacked axes; a matrix view needs at least 2.")
  source = lambda what: ", ".join(s for s in (batch_source, what) if s)

  if layout == "torch":
    return guess(rest[1:], rest[:1], batch, True, source("torch layout (out, in, ...)"))
  if len(rest) == 2:
    return guess(rest[:1], rest[1:], batch, True, source("2-D kernel (in, out)"))
  embed = tuple(a for a in rest if roles[a] == "embed")
  # Only when every axis is named for what it is: an unnamed one (None, a mesh axis, or nn.scan's PARTITION_NAME
  # None) may be a stacked layer, which the split would silently fold into the outputs.
  if embed and len(embed) < len(rest) and all(roles[a] is not None for a in rest):
    others = tuple(a for a in rest if a not in embed)
    in_axes, out_axes = (others, embed) if embed[-1] == rest[-1] and embed[0] != rest[0] else (embed, others)
    return guess(in_axes, out_axes, batch, True, source(f"axis names ({named})"))
  kind, rank = _layer_kind(module, names[-3] if len(names) >= 3 else "")
  if kind is not None and rank and len(rest) > rank:
    extra = len(rest) - rank
    unnamed = tuple(a for a in rest if roles[a] is None)
    if axis_names is not None and len(unnamed) == extra:  # the kernel's own axes carry known names
      own = tuple(a for a in rest if a not in unnamed)
      in_axes, out_axes, more = _kind_view(kind, module, own)
      return guess(in_axes, out_axes, batch + unnamed + more, True,
                   source(f"{kind}; unnamed axes beyond its {rank} taken as stacked layers"))
    own = rest[extra:]
    in_axes, out_axes, more = _kind_view(kind, module, own)
    return guess(in_axes, out_axes, batch + rest[:extra] + more, False, source(f"{kind}, leading axes stacked"),
                 f"the {kind} kernel has {rank} axes; the leading {extra} of its {ndim} were taken as stacked layers")
  if kind is not None:
    in_axes, out_axes, more = _kind_view(kind, module, rest)
    return guess(in_axes, out_axes, batch + more, True, source(kind))
  if module in ATTENTION_INPUT_PROJECTIONS + (ATTENTION_OUTPUT_PROJECTION,):  # len(rest) >= 3 here
    in_axes, out_axes, _ = _kind_view("attention", module, rest[-3:])
    parent = names[-3] if len(names) >= 3 else ""
    reason = (f"{module!r} is named like an attention projection but its parent {parent!r} is not named like "
              "attention; read as an attention projection, any leading axes as stacked layers")
    return guess(in_axes, out_axes, batch + rest[:-3], False, source("guess: attention projection by name"), reason)
  if _CONV_NAMED.fullmatch(module):
    reason = (f"{module!r} is named like a convolution, but a locally connected layer (ConvLocal: one matrix per "
              "position) has the same rank; all but the last axis were flattened into fan-in as for nn.Conv")
    return guess(rest[:-1], rest[-1:], batch, False, source("guess: convolution by name"), reason)
  reason = f"{len(rest)} axes of a layer of unknown kind; all but the last were flattened into fan-in"
  return guess(rest[:-1], rest[-1:], batch, False, source("guess: unknown layer kind"), reason)


def default_view(names: Union[str, Sequence[str]], ndim: int, layout: str = "flax",
                 num_batch_axes: Stacked = 0) -> KernelView:
  """The view :func:`infer_view` gives a kernel at path ``names`` (a tuple, or a ``"module/kernel"`` string) with
  ``ndim`` axes, of which ``num_batch_axes`` are stacked layers (a number of leading axes, or their positions)."""
  if isinstance(names, str):
    names = tuple(names.split("/"))
  if isinstance(ndim, bool) or not isinstance(ndim, int):
    raise ValueError(f"default_view needs ndim, the kernel's number of axes (kernel.ndim), got "
                     f"{type(ndim).__name__} {getattr(ndim, 'shape', ndim)!r} for {'/'.join(names)}.")
  if not all(isinstance(n, str) for n in names):
    raise ValueError(f"default_view needs names as a tuple of strings (path.split('/')), got {names!r}.")
  return infer_view(tuple(names), ndim, layout, num_batch_axes or None).view
