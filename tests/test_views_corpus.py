"""Issue #17: every kernel's view is exact, or a ``ViewGuessWarning`` names its path — on a corpus of real models.

The models (``views_corpus_models.py``) follow public projects' code; each comes with the correct matrix view of
every kernel written out by hand. For each way a user passes a model (Linen params as ``init`` returns them,
NNX state with and without ``bj.nnx_views``, PyTorch ``state_dict`` with ``layout="torch"``), the transform's Δ
(l2-full, γ = α = 1) is compared with a NumPy float64 Δ = M Mᵀ M − M of each true per-layer matrix, and each
kernel is classed exact / warned (not exact, but a warning names it) / wrong. ``python -m tests.test_views_corpus``
prints the corpus table.
"""

import functools
import re
from typing import Any
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Tuple
from typing import Union
import warnings
import zlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax as bj

try:
  import views_corpus_models as corpus  # under pytest (tests/ is on sys.path)
except ImportError:  # python -m tests.test_views_corpus
  from tests import views_corpus_models as corpus

Spec = corpus.Spec
TOLERANCE = 1e-4


def key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flat_leaves(tree: Any, layout: str = "flax") -> List[Tuple[str, Any]]:
  """``[("a/b/kernel", array)]`` with boxes and NNX variables looked through (their ``value`` dropped from
  the path) and torch's dotted keys split, as paths are written in messages."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [key_name(k) for k in path]
    if len(names) > 1 and names[-1] in ("value", "raw_value"):
      names = names[:-1]
    if layout == "torch":
      names = [part for name in names for part in name.split(".")]
    out.append(("/".join(names), leaf))
  return out


def reference_delta(kernel: np.ndarray, spec: Spec, alpha: float = 1.0) -> np.ndarray:
  """Δ = M Mᵀ M − α M of each matrix M (fan_in × out) of ``kernel`` under ``spec``, in float64."""
  k = np.asarray(kernel, np.float64)
  if spec.split > 1:
    k = k.reshape((spec.split, k.shape[0] // spec.split) + k.shape[1:])
  order = spec.batch + spec.fan_in + spec.out
  t = np.transpose(k, order)
  batch = t.shape[:len(spec.batch)]
  m = t.reshape(batch + (int(np.prod([k.shape[a] for a in spec.fan_in])), int(np.prod([k.shape[a] for a in spec.out]))))
  d = m @ np.swapaxes(m, -1, -2) @ m - alpha * m
  return np.transpose(d.reshape(t.shape), np.argsort(order)).reshape(kernel.shape)


def fill(tree: Any, expect, layout: str) -> Any:
  """Deterministic random values (seeded by path): N(0, 1/fan_in) for expected kernels so that M Mᵀ M and M
  are the same size and a wrong view changes Δ."""
  paths = iter([p for p, _ in flat_leaves(tree, layout)])

  def one(leaf):
    path = next(paths)
    spec = expected_spec(expect, path)
    shape = tuple(leaf.shape)
    values = np.random.default_rng(zlib.crc32(path.encode())).normal(size=shape)
    if spec is not None:
      split = (spec.split, shape[0] // spec.split) + shape[1:] if spec.split > 1 else shape
      values /= np.sqrt(np.prod([split[a] for a in spec.fan_in]))
    return values.astype(np.float32)

  return jax.tree.map(one, tree)


# PyTorch state_dicts (torchvision ResNet, nn.MultiheadAttention, timm VisionTransformer): flat dicts of arrays
# with torch's names and (out, in, ...) shapes, passed with layout="torch".


def torch_resnet_mha() -> Tuple[dict, list]:
  shapes = {"conv1.weight": (8, 3, 7, 7), "bn1.weight": (8,), "bn1.bias": (8,), "bn1.running_mean": (8,)}
  for name, (cin, cout) in {"layer1.0": (8, 8), "layer2.0": (8, 16)}.items():
    shapes.update({f"{name}.conv1.weight": (cout, cin, 3, 3), f"{name}.bn1.weight": (cout,),
                   f"{name}.conv2.weight": (cout, cout, 3, 3), f"{name}.bn2.weight": (cout,)})
  shapes.update({"layer2.0.downsample.0.weight": (16, 8, 1, 1), "layer2.0.downsample.1.weight": (16,),
                 "fc.weight": (10, 16), "fc.bias": (10,), "token_embedding.weight": (32, 16),
                 "attn.in_proj_weight": (48, 16), "attn.in_proj_bias": (48,), "attn.out_proj.weight": (16, 16),
                 "attn.out_proj.bias": (16,)})
  expect = [(r"(conv1|layer\d/0/conv\d|layer2/0/downsample/0)/weight", corpus.TORCH_CONV),
            (r"(fc|attn/out_proj)/weight", corpus.TORCH_LINEAR), (r"attn/in_proj_weight", corpus.TORCH_QKV)]
  return shapes, expect


def torch_timm_vit() -> Tuple[dict, list]:
  shapes = {"cls_token": (1, 1, 16), "pos_embed": (1, 5, 16), "patch_embed.proj.weight": (16, 3, 4, 4),
            "patch_embed.proj.bias": (16,), "head.weight": (10, 16)}
  for i in range(2):  # timm's Attention: qkv = nn.Linear(dim, 3 * dim), output reshaped (..., 3, heads, head_dim)
    shapes.update({f"blocks.{i}.norm1.weight": (16,), f"blocks.{i}.attn.qkv.weight": (48, 16),
                   f"blocks.{i}.attn.proj.weight": (16, 16), f"blocks.{i}.mlp.fc1.weight": (32, 16),
                   f"blocks.{i}.mlp.fc2.weight": (16, 32)})
  expect = [(r"patch_embed/proj/weight", corpus.TORCH_CONV), (r"blocks/\d/attn/qkv/weight", corpus.TORCH_QKV),
            (r"(head|blocks/\d/(attn/proj|mlp/fc[12]))/weight", corpus.TORCH_LINEAR)]
  return shapes, expect


def build_torch(shapes_and_expect) -> corpus.Built:
  shapes, expect = shapes_and_expect
  params = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
  return corpus.Built([corpus.Way("torch", params, {"layout": "torch"}, True)], expect)


def build_example(name: str, **kwargs) -> corpus.Built:
  """The project's own models (examples/models), tiny widths."""
  from examples import models  # pylint: disable=import-outside-toplevel

  model = nnx.eval_shape(lambda: models.create_model(name, num_classes=10, rngs=nnx.Rngs(0), **kwargs))
  expect = [(r"(convs/\d+|stem_conv|blocks/\d+/(conv\d|shortcut/layers/0)|patch_embed)/kernel", corpus.CONV),
            (r"(head|hidden/\d+|blocks/\d+/mlp_(in|out))/kernel", corpus.DENSE),
            (r"blocks/\d+/attention/(query|key|value)/kernel", corpus.QKV),
            (r"blocks/\d+/attention/out/kernel", corpus.OUT)]
  return corpus.Built(corpus.nnx_ways(model, strict_state=False), expect)


c = corpus
CASES = [  # (name, builder); the numbers are issue #17's list
    ("imagenet_resnet", lambda: c.build_imagenet_resnet(False)),  # 1
    ("imagenet_resnet18_local", lambda: c.build_imagenet_resnet(True)),  # 2
    ("sharding_guide", c.build_sharding_guide),  # 3
    ("lm1b", lambda: c.build_lm1b(False)),  # 4
    ("lm1b_dense_general", lambda: c.build_lm1b(True)),  # 4, the same kernel_init on nn.DenseGeneral
    ("big_vision_vit", lambda: c.build_big_vision_vit(False)),  # 5
    ("big_vision_vit_scan", lambda: c.build_big_vision_vit(True)),  # 6
    ("maxtext_scan0_layers", lambda: c.build_maxtext(0, "layers", False)),  # 7
    *[(f"maxtext_scan1_{name}", functools.partial(c.build_maxtext, 1, name, True))  # 8
      for name in ("layers", "dense_layers", "moe_layers", "layers_outside_pipeline")],
    ("gemma_nnx_separate", lambda: c.build_gemma(["separate"])),  # 9
    ("gemma_nnx_fused", lambda: c.build_gemma(["mha", "gqa"])),  # 9
    ("nnx_scan_layers", lambda: c.build_nnx_scan(False)),  # 10
    ("nnx_scan_layers_sharded", lambda: c.build_nnx_scan(True)),  # 10
    ("nnx_partition_spec", c.build_nnx_sharded),  # 11
    ("torch_resnet_mha", lambda: build_torch(torch_resnet_mha())),  # 12
    ("torch_timm_vit", lambda: build_torch(torch_timm_vit())),  # 12
    ("example_vgg16", lambda: build_example("vgg16", widths=(4, 4, 8, 8, 8))),
    ("example_resnet18", lambda: build_example("resnet18", widths=(4, 4, 8, 8), stage_sizes=(1, 1, 1, 1))),
    ("example_vit_tiny", lambda: build_example("vit_tiny", dim=8, depth=2, num_heads=2)),
]


def expected_spec(expect: list, path: str) -> Optional[Spec]:
  """The hand-written view of the leaf at ``path``; ``None``: not a kernel."""
  for pattern, spec in expect:
    if re.fullmatch(pattern, path):
      return spec
  return None


class KernelResult(NamedTuple):
  path: str
  shape: Tuple[int, ...]
  expected: Optional[Spec]  # None: not a kernel, yet constrained
  library: str  # the library's matrix from describe, and its status
  error: float  # max |Δ − reference| / max(1, max |reference|)
  warned: bool
  verdict: str  # exact, warned, wrong; unexpected: constrained but not a kernel


class WayResult(NamedTuple):
  case: str
  way: str
  strict: Union[bool, str]  # as corpus.Way.strict
  kernels: List[KernelResult]
  crash: str  # "": none
  warnings: List[str]

  def is_strict(self, path: str) -> bool:
    return self.strict if isinstance(self.strict, bool) else re.fullmatch(self.strict, path) is not None

  def count(self, verdict: str) -> int:
    return sum(k.verdict == verdict for k in self.kernels)

  @property
  def failures(self) -> List[str]:
    """Why this way breaks the rule (or, for a strict way, is not exact and silent)."""
    out = [f"crash: {self.crash}"] if self.crash and not self.crash.startswith("refused") else []
    out += [f"refused: {self.crash}"] if self.strict and self.crash.startswith("refused") else []
    for k in self.kernels:
      if k.verdict == "unexpected":
        out.append(f"{k.path}: constrained ({k.library}) but not a conv/dense/attention kernel")
      elif k.verdict == "wrong" or (self.is_strict(k.path) and (k.verdict != "exact" or k.warned)):
        known = " where the view is known" if k.verdict != "wrong" else ""
        out.append(f"{k.path}: {k.verdict}{' with a warning' if k.warned else ''}{known} (expected {k.expected}, "
                   f"library {k.library})")
    return out


def names_path(message: str, path: str) -> bool:
  return re.search(r"(?<![\w/])" + re.escape(path) + r"(?![\w/])", message) is not None


def library_views(params, kwargs) -> dict:
  """``{path: "matrix; status"}`` from ``bj.describe``."""
  return {row[0]: f"{row[2]}; {row[5]}" for row in bj.describe(params, **kwargs) if row[2]}


def run_way(case: str, way: corpus.Way, expect) -> WayResult:
  layout = way.kwargs.get("layout", "flax")
  params = fill(way.params, expect, layout)
  kwargs = {k: v() if callable(v) else v for k, v in way.kwargs.items()}
  with warnings.catch_warnings(record=True) as records:
    warnings.simplefilter("always")
    try:
      tx = bj.add_bort_correction(1.0, alpha=1.0, **kwargs)
      zeros = jax.tree.map(np.zeros_like, params)
      updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    except ValueError as e:
      if "view" not in str(e).lower():
        return WayResult(case, way.name, way.strict, [], f"{type(e).__name__}: {e}", [])
      return WayResult(case, way.name, way.strict, [], f"refused: {e}", [])
    except Exception as e:  # pylint: disable=broad-except
      return WayResult(case, way.name, way.strict, [], f"{type(e).__name__}: {e}", [])
  try:
    described, crash = library_views(params, kwargs), ""
  except Exception as e:  # pylint: disable=broad-except
    described, crash = {}, f"describe: {type(e).__name__}: {e}"
  messages = [str(r.message) for r in records if issubclass(r.category, bj.ViewGuessWarning)]
  kernels = []
  for (path, kernel), (_, update) in zip(flat_leaves(params, layout), flat_leaves(updates, layout)):
    spec = expected_spec(expect, path)
    update = np.asarray(update, np.float64)
    if spec is None:
      if np.abs(update).max(initial=0.0) > 0:
        kernels.append(KernelResult(path, kernel.shape, None, described.get(path, "?"), np.inf, False, "unexpected"))
      continue
    reference = reference_delta(np.asarray(kernel), spec)
    error = float(np.abs(update - reference).max() / max(1.0, np.abs(reference).max()))
    warned = any(names_path(m, path) for m in messages)
    verdict = "exact" if error <= TOLERANCE else ("warned" if warned else "wrong")
    kernels.append(KernelResult(path, tuple(kernel.shape), spec, described.get(path, "not constrained"), error,
                                warned, verdict))
  return WayResult(case, way.name, way.strict, kernels, crash, messages)


@functools.lru_cache(maxsize=None)
def case_results(name: str) -> Tuple[WayResult, ...]:
  built = dict(CASES)[name]()
  return tuple(run_way(name, way, built.expect) for way in built.ways)


def corpus_table() -> str:
  """One row per (model, way): kernels, how many are exact / warned / wrong / unexpected, pass or FAIL."""
  header = ("model", "way", "kernels", "exact", "warned", "wrong", "unexpected", "result", "note")
  rows = [header]
  for name, _ in CASES:
    for r in case_results(name):
      noisy = sum(k.verdict == "exact" and k.warned for k in r.kernels)
      note = r.crash[:70] if r.crash else (f"{noisy} exact but warned" if noisy else "")
      total = sum(k.expected is not None for k in r.kernels)
      rows.append((name, r.way + {True: " *", False: ""}.get(r.strict, " (*)"), str(total) if r.kernels else "-",
                   *(str(r.count(v)) for v in ("exact", "warned", "wrong", "unexpected")),
                   "FAIL" if r.failures else "ok", note))
  widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  footer = "* strict: the views are known, so they must be exact and silent; (*) strict for some kernels"
  return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:] + [footer])


def test_reference_orientation_matches_a_plain_dense_kernel():
  kernel = np.random.default_rng(0).normal(size=(6, 4)) / np.sqrt(6)
  params = {"Dense_0": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.zeros(4)}}
  tx = bj.add_bort_correction(1.0, alpha=1.0)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  m = kernel  # Flax orientation: M = kernel (fan_in × out) = Wᵀ
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], m @ m.T @ m - m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(reference_delta(kernel, corpus.DENSE), m @ m.T @ m - m)
  np.testing.assert_array_equal(updates["Dense_0"]["bias"], 0.0)


def test_reference_is_per_matrix():
  k = np.random.default_rng(1).normal(size=(3, 4, 5))
  d = reference_delta(k, Spec((0,), (1,), (2,)))
  for i in range(3):
    np.testing.assert_allclose(d[i], k[i] @ k[i].T @ k[i] - k[i])
  torch = np.random.default_rng(2).normal(size=(6, 2))  # (3·E, E), E = 2
  d = reference_delta(torch, corpus.TORCH_QKV)
  for i in range(3):
    w = torch[2 * i:2 * i + 2]  # torch (out, in); M = Wᵀ
    np.testing.assert_allclose(d[2 * i:2 * i + 2], (w.T @ w @ w.T - w.T).T)


def test_harness_classes_exact_wrong_and_unexpected():
  params = {"Dense_0": {"kernel": np.zeros((3, 4, 5), np.float32)}, "Dense_1": {"kernel": np.zeros((4, 5), np.float32)},
            "head": {"kernel": np.zeros((5, 2), np.float32)}}
  views = [(r"Dense_0/kernel", bj.KernelView((0, 1), (2,)))]  # declared, so silent, but flattens 3 stacked layers
  expect = [(r"Dense_0/kernel", Spec((0,), (1,), (2,))), (r"Dense_1/kernel", corpus.DENSE)]
  result = run_way("harness", corpus.Way("plain", params, {"views": views}, False), expect)
  verdicts = {k.path: k.verdict for k in result.kernels}
  assert verdicts == {"Dense_0/kernel": "wrong", "Dense_1/kernel": "exact", "head/kernel": "unexpected"}
  assert len(result.failures) == 2


@pytest.mark.parametrize("name", [name for name, _ in CASES])
def test_every_kernel_view_is_exact_or_warned(name):
  results = case_results(name)
  failures = [f"[{r.way}] {f}" for r in results for f in r.failures]
  assert not failures, "\n".join(failures)
  for r in results:
    assert r.crash or r.kernels, f"[{r.way}] no kernel compared"


def test_corpus_table():
  table = corpus_table()
  print("\n" + table)
  assert all(name in table for name, _ in CASES)


if __name__ == "__main__":
  print(corpus_table())
