"""Model definitions for the views corpus (``test_views_corpus.py``), written after public projects' code.

Each builder returns the trees a user would hand to Bort (:class:`Way`) and, written out by hand, the correct
matrix view of every kernel (:class:`Spec`): which kernel axes index separate matrices, which are fan-in, which
are output units. Widths are tiny; Linen trees come from ``jax.eval_shape`` (values are filled in by the test).
"""

import functools
from typing import Any
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Sequence
from typing import Tuple
from typing import Union

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import bort_jax as bj


class Spec(NamedTuple):
  """Expected view. ``split`` > 1: axis 0 first splits into (split, -1) and the axes index the split kernel."""

  batch: Tuple[int, ...]
  fan_in: Tuple[int, ...]
  out: Tuple[int, ...]
  split: int = 1

  def __str__(self):
    split = f" split {self.split}" if self.split > 1 else ""
    return f"batch {self.batch} in {self.fan_in} out {self.out}{split}"


DENSE = Spec((), (0,), (1,))
CONV = Spec((), (0, 1, 2), (3,))  # (kh, kw, in, out)
CONV_LOCAL = Spec((0, 1), (2,), (3,))  # (h, w, kh·kw·in, out): one matrix per output position
QKV = Spec((), (0,), (1, 2))  # (embed, heads, head_dim)
OUT = Spec((), (0, 1), (2,))  # (heads, head_dim, embed)
TORCH_LINEAR = Spec((), (1,), (0,))  # (out, in)
TORCH_CONV = Spec((), (1, 2, 3), (0,))  # (out, in, kh, kw)
TORCH_QKV = Spec((0,), (2,), (1,), split=3)  # (3·E, E): q, k, v


def stacked(spec: Spec, axis: int = 0) -> Spec:
  """``spec`` of a kernel with a stacked-layers axis inserted at ``axis``."""
  shift = lambda axes: tuple(a + (a >= axis) for a in axes)
  return Spec(tuple(sorted((axis,) + shift(spec.batch))), shift(spec.fan_in), shift(spec.out), spec.split)


class Way(NamedTuple):
  """One way a user passes the model: the params tree, extra ``add_bort_correction`` kwargs, and which views
  must then be exact with no warning because the tree or the declared views hold the information: all
  (``True``), none (``False``), or the kernels whose path fullmatches a regex."""

  name: str
  params: Any
  kwargs: Dict[str, Any]
  strict: Union[bool, str]


class Built(NamedTuple):
  ways: List[Way]
  expect: List[Tuple[str, Spec]]  # (regex fullmatched on "a/b/kernel", view); other leaves stay unconstrained


def mesh():
  """A 1×1 ("data", "model") mesh: NNX needs one to create variables with sharding metadata."""
  return jax.set_mesh(jax.make_mesh((1, 1), ("data", "model")))


def linen_ways(module, inputs: Sequence[Any], strict_boxed: Union[bool, str], unboxed: bool = True,
               strict_views: Union[bool, str] = True) -> List[Way]:
  """The params as ``init`` returns them (boxes kept), unboxed, and with ``bj.linen_views`` when it exists."""
  params = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
  boxed = any(isinstance(x, nn.meta.AxisMetadata) for x in jax.tree.leaves(
      params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)))
  ways = [Way("linen", params, {}, strict_boxed)]
  if boxed and unboxed:
    ways.append(Way("linen unboxed", nn.meta.unbox(params), {}, False))
  if hasattr(bj, "linen_views"):
    ways.append(Way("linen_views", params, {"views": lambda: bj.linen_views(module, *inputs)}, strict_views))
  return ways


def nnx_ways(model, strict_state: Union[bool, str]) -> List[Way]:
  state = nnx.state(model, nnx.Param)
  return [Way("nnx state", state, {}, strict_state),
          Way("nnx_views", state, {"views": lambda: bj.nnx_views(model)}, True)]


class Wrap(nn.Module):
  """The top module that holds ``inner`` as ``name`` (lm1b's TransformerLM, MaxText's Transformer)."""

  inner: Any
  name_: str

  @nn.compact
  def __call__(self, x):
    return self.inner(name=self.name_)(x)


# 1, 2. flax examples/imagenet/models.py: ResNet, ResNet18Local (conv=nn.ConvLocal).


class ResNetBlock(nn.Module):
  filters: int
  conv: Any
  norm: Any
  strides: Tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
    y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters, (3, 3))(y))
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ImagenetResNet(nn.Module):
  stage_sizes: Sequence[int]
  num_classes: int = 10
  num_filters: int = 4
  conv: Any = nn.Conv

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(self.conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
    x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
    x = nn.relu(norm(name="bn_init")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = ResNetBlock(self.num_filters * 2**i, conv=conv, norm=norm, strides=strides)(x)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def build_imagenet_resnet(local: bool = False) -> Built:
  module = ImagenetResNet((2, 2), conv=nn.ConvLocal if local else nn.Conv)
  conv = CONV_LOCAL if local else CONV
  expect = [(r"(conv_init|ResNetBlock_\d+/(Conv(Local)?_\d+|conv_proj))/kernel", conv), (r"Dense_0/kernel", DENSE)]
  return Built(linen_ways(module, [jnp.zeros((1, 16, 16, 3))], strict_boxed=False), expect)


# 3. flax "Scale up on multiple devices" guide: nn.with_partitioning with mesh axis names.


class ShardingGuideNet(nn.Module):
  @nn.compact
  def __call__(self, x):  # (B, 4, 4, 32)
    part = lambda names, init=nn.initializers.xavier_normal(): nn.with_partitioning(init, names)
    x = nn.Conv(16, (3, 3), kernel_init=part((None, None, "model", None)))(x)
    x = x.reshape(x.shape[0], -1, 16)
    x = nn.relu(nn.Dense(32, kernel_init=part((None, "model")))(x))
    x = nn.Dense(16, kernel_init=part(("model", None)))(x)
    x = nn.Dense(16, kernel_init=part(("data", "model")))(x)
    return nn.Einsum((2, 16, 8), "btd,hdk->bthk", use_bias=False, kernel_init=part(("model", None, None)))(x)


def build_sharding_guide() -> Built:
  expect = [(r"Conv_0/kernel", CONV), (r"Dense_\d/kernel", DENSE), (r"Einsum_0/kernel", Spec((), (1,), (0, 2)))]
  strict = r"(Conv|Dense)_\d/kernel"  # auto names; Einsum_0's einsum string is not in the tree
  return Built(linen_ways(ShardingGuideNet(), [jnp.zeros((1, 4, 4, 32))], strict_boxed=strict), expect)


# 4. flax examples/lm1b/models.py: logical names ("embed", "kv") on 3-D attention kernels.


class Lm1bMlpBlock(nn.Module):
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.xavier_uniform()
    y = nn.relu(nn.Dense(self.mlp_dim, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")))(x))
    return nn.Dense(x.shape[-1], kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")))(y)


class Lm1bBlock(nn.Module):
  dense_general: bool  # attention written with nn.DenseGeneral (q_proj, ..., o_proj) and lm1b's kernel_init

  @nn.compact
  def __call__(self, x):
    init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "kv"))
    y = nn.LayerNorm(scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)))(x)
    if self.dense_general:
      dense = lambda features, name, axis=-1: nn.DenseGeneral(features, axis, kernel_init=init, use_bias=False,
                                                              name=name)
      q, k, v = (dense((2, 4), name)(y) for name in ("q_proj", "k_proj", "v_proj"))
      weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
      y = dense(x.shape[-1], "o_proj", (-2, -1))(jnp.einsum("bhqk,bkhd->bqhd", weights, v))
    else:
      y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, kernel_init=init, use_bias=False,
                                          deterministic=True)(y, y)
    return x + Lm1bMlpBlock(16)(nn.LayerNorm()(x + y))


class Lm1bDecoder(nn.Module):
  """The decoder of lm1b's ``TransformerLM`` (which names it ``decoder``)."""

  dense_general: bool = False

  @nn.compact
  def __call__(self, tokens):
    init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed"))
    x = nn.Embed(32, 8, embedding_init=init)(tokens)
    for layer in range(2):
      x = Lm1bBlock(self.dense_general, name=f"encoderdecoderblock_{layer}")(x)
    init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "vocab"))
    return nn.Dense(32, kernel_init=init, name="logitdense")(nn.LayerNorm(name="encoderdecoder_norm")(x))


def build_lm1b(dense_general: bool) -> Built:
  block = r"decoder/encoderdecoderblock_\d/"
  expect = [(block + r"(MultiHeadDotProductAttention_0/(query|key|value)|[qkv]_proj)/kernel", QKV),
            (block + r"(MultiHeadDotProductAttention_0/out|o_proj)/kernel", OUT),
            (block + r"Lm1bMlpBlock_0/Dense_[01]/kernel", DENSE), (r"decoder/logitdense/kernel", DENSE)]
  module = Wrap(functools.partial(Lm1bDecoder, dense_general), "decoder")
  # nn.DenseGeneral names the flattened (fan_in, out) kernel: two names do not say where fan-in ends in 3 axes.
  strict = r".*/(MultiHeadDotProductAttention_0/\w+|Dense_\d|logitdense)/kernel"
  return Built(linen_ways(module, [jnp.zeros((1, 5), jnp.int32)], strict_boxed=strict), expect)


# 5, 6. big_vision models/vit.py: unscanned (encoderblock_i) and scanned (nn.scan, no metadata).


class BvMlpBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.gelu(nn.Dense(16, kernel_init=nn.initializers.xavier_uniform())(x))
    return nn.Dense(x.shape[-1], kernel_init=nn.initializers.xavier_uniform())(y)


class BvEncoder1DBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _=None):
    y = nn.MultiHeadDotProductAttention(num_heads=2, kernel_init=nn.initializers.xavier_uniform(),
                                        deterministic=True)(nn.LayerNorm()(x), nn.LayerNorm()(x))
    x = x + y
    return x + BvMlpBlock()(nn.LayerNorm()(x)), None


class BvEncoder(nn.Module):
  scan: bool
  depth: int = 2  # == num_heads, as in ViT-B/16 (12 and 12)

  @nn.compact
  def __call__(self, x):
    if self.scan:
      blocks = nn.scan(BvEncoder1DBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=self.depth)
      x, _ = blocks(name="encoderblock")(x, None)
    else:
      for layer in range(self.depth):
        x, _ = BvEncoder1DBlock(name=f"encoderblock_{layer}")(x)
    return nn.LayerNorm(name="encoder_norm")(x)


class BvViT(nn.Module):
  scan: bool = False

  @nn.compact
  def __call__(self, image):
    x = nn.Conv(8, (4, 4), strides=(4, 4), padding="VALID", name="embedding")(image)
    x = x.reshape(x.shape[0], -1, 8)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, 8))
    x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)), x], axis=1)
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], 8))
    x = BvEncoder(self.scan, name="Transformer")(x)
    return nn.Dense(10, kernel_init=nn.initializers.zeros, name="head")(x[:, 0])


def build_big_vision_vit(scan: bool) -> Built:
  block = r"Transformer/encoderblock" + ("" if scan else r"_\d")
  s = (lambda spec: stacked(spec)) if scan else (lambda spec: spec)
  expect = [(r"embedding/kernel", CONV), (block + r"/MultiHeadDotProductAttention_0/(query|key|value)/kernel", s(QKV)),
            (block + r"/MultiHeadDotProductAttention_0/out/kernel", s(OUT)),
            (block + r"/BvMlpBlock_0/Dense_[01]/kernel", s(DENSE)), (r"head/kernel", DENSE)]
  # Scanned, the out kernel is (layers, heads, head_dim, embed) = (2, 2, 4, 8): by shape alone the stacked axis
  # could be either 2 (as in ViT-B/16: 12 layers, 12 heads), so linen_views leaves it to a warned guess.
  strict_views = True if not scan else r"(?!.*/out/kernel).*"
  return Built(linen_ways(BvViT(scan=scan), [jnp.zeros((1, 8, 8, 3))], strict_boxed=False, strict_views=strict_views),
               expect)


# 7, 8. MaxText (layers/linears.py DenseGeneral, attentions.py, decoders.py): nn.scan over decoder layers
# with metadata_params={nn.PARTITION_NAME: scan_name} and variable_axes={"params": param_scan_axis}.


class MtDenseGeneral(nn.Module):
  features: Tuple[int, ...]
  kernel_axes: Tuple[str, ...]
  axis: Tuple[int, ...] = (-1,)

  @nn.compact
  def __call__(self, x):
    axis = tuple(a % x.ndim for a in self.axis)
    shape = tuple(x.shape[a] for a in axis) + tuple(self.features)
    init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.kernel_axes)
    kernel = self.param("kernel", init, shape, jnp.float32)
    return jax.lax.dot_general(x, kernel, ((axis, tuple(range(len(axis)))), ((), ())))


class MtAttention(nn.Module):
  fused_qkv: bool
  heads: int = 2
  head_dim: int = 4

  @nn.compact
  def __call__(self, x):
    h, d = self.heads, self.head_dim
    if self.fused_qkv:
      qkv = MtDenseGeneral((3, h, d), ("embed", "qkv", "heads", "kv"), name="qkv_proj")(x)
      q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    else:
      q = MtDenseGeneral((h, d), ("embed", "q_heads", "kv"), name="query")(x)
      k = MtDenseGeneral((h, d), ("embed", "kv_heads", "kv"), name="key")(x)
      v = MtDenseGeneral((h, d), ("embed", "kv_heads", "kv"), name="value")(x)
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return MtDenseGeneral((x.shape[-1],), ("heads", "kv", "embed"), axis=(-2, -1), name="out")(o)


class MtDecoderLayer(nn.Module):
  fused_qkv: bool

  @nn.compact
  def __call__(self, x, _):
    x = x + MtAttention(self.fused_qkv, name="self_attention")(nn.RMSNorm(name="pre_self_attention_norm")(x))
    y = MtDenseGeneral((2, 16), ("embed", "num_activations", "mlp"), name="wi")(nn.RMSNorm(name="post_norm")(x))
    y = nn.silu(y[..., 0, :]) * y[..., 1, :]
    return x + MtDenseGeneral((x.shape[-1],), ("mlp", "embed"), name="wo")(y), None


class MtDecoder(nn.Module):
  scan_axis: int
  scan_name: str
  fused_qkv: bool

  @nn.compact
  def __call__(self, tokens):
    init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed"))
    x = nn.Embed(32, 8, embedding_init=init, name="token_embedder")(tokens)
    layers = nn.scan(MtDecoderLayer, variable_axes={"params": self.scan_axis}, split_rngs={"params": True},
                     length=5, metadata_params={nn.PARTITION_NAME: self.scan_name})
    x, _ = layers(self.fused_qkv, name="layers")(x, None)
    return MtDenseGeneral((32,), ("embed", "vocab"), name="logits_dense")(nn.RMSNorm(name="decoder_norm")(x))


def build_maxtext(scan_axis: int, scan_name: str, fused_qkv: bool) -> Built:
  s = lambda spec: stacked(spec, scan_axis)
  layer = r"decoder/layers/"
  expect = [(layer + r"self_attention/(query|key|value)/kernel", s(QKV)),
            (layer + r"self_attention/qkv_proj/kernel", s(Spec((1,), (0,), (2, 3)))),  # (embed, 3, heads, kv)
            (layer + r"self_attention/out/kernel", s(OUT)),
            (layer + r"wi/kernel", s(Spec((1,), (0,), (2,)))),  # (embed, num_activations, mlp): gate and up
            (layer + r"wo/kernel", s(DENSE)), (r"decoder/logits_dense/kernel", DENSE)]
  module = Wrap(functools.partial(MtDecoder, scan_axis, scan_name, fused_qkv), "decoder")
  ways = linen_ways(module, [jnp.zeros((1, 5), jnp.int32)], strict_boxed=True, unboxed=scan_name == "layers")
  return Built(ways, expect)


# 9. gemma (flax examples/gemma/modules.py, google-deepmind/gemma): nnx.Einsum projections, separate or fused.


class GemmaAttention(nnx.Module):
  def __init__(self, kind: str, *, rngs: nnx.Rngs, n: int = 4, k: int = 2, d: int = 8, h: int = 4):
    if kind == "separate":
      self.q_einsum = nnx.Einsum("BTD,NDH->BTNH", (n, d, h), rngs=rngs)
      self.k_einsum = nnx.Einsum("BSD,KDH->BSKH", (k, d, h), rngs=rngs)
      self.v_einsum = nnx.Einsum("BSD,KDH->BSKH", (k, d, h), rngs=rngs)
    elif kind == "mha":  # num_kv_heads == num_heads: one qkv_einsum
      self.qkv_einsum = nnx.Einsum("BTD,SNDH->SBTNH", (3, n, d, h), rngs=rngs)
    else:  # grouped-query: q_einsum and a fused kv_einsum
      self.q_einsum = nnx.Einsum("BTD,NDH->BTNH", (n, d, h), rngs=rngs)
      self.kv_einsum = nnx.Einsum("BSD,CKDH->CBSKH", (2, k, d, h), rngs=rngs)
    self.attn_vec_einsum = nnx.Einsum("BTNH,NHD->BTD", (n, h, d), rngs=rngs)


class GemmaBlock(nnx.Module):
  def __init__(self, kind: str, *, rngs: nnx.Rngs):
    self.pre_attention_norm = nnx.RMSNorm(8, rngs=rngs)
    self.attn = GemmaAttention(kind, rngs=rngs)
    self.gate_proj = nnx.Linear(8, 16, use_bias=False, rngs=rngs)
    self.up_proj = nnx.Linear(8, 16, use_bias=False, rngs=rngs)
    self.down_proj = nnx.Linear(16, 8, use_bias=False, rngs=rngs)


class Gemma(nnx.Module):
  def __init__(self, kinds: Sequence[str], *, rngs: nnx.Rngs):
    self.input_embedding = nnx.Param(jax.random.normal(rngs.params(), (32, 8)))
    self.layers = nnx.List([GemmaBlock(kind, rngs=rngs) for kind in kinds])


def build_gemma(kinds: Sequence[str]) -> Built:
  attn = r"layers/\d/attn/"
  expect = [(attn + r"q_einsum/kernel", Spec((), (1,), (0, 2))), (attn + r"[kv]_einsum/kernel", Spec((), (1,), (0, 2))),
            (attn + r"(qkv|kv)_einsum/kernel", Spec((0,), (2,), (1, 3))),  # (3 or 2, heads, D, H): one matrix each
            (attn + r"attn_vec_einsum/kernel", OUT), (r"layers/\d/(gate|up|down)_proj/kernel", DENSE)]
  return Built(nnx_ways(nnx.eval_shape(lambda: Gemma(kinds, rngs=nnx.Rngs(0))), strict_state=False), expect)


# 10, 11. flax NNX guides: scan over layers (nnx.vmap-created stack applied with nnx.scan); sharding metadata.


class NnxBlock(nnx.Module):
  def __init__(self, dim: int, sharded: bool, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    part = (lambda spec: nnx.with_partitioning(init, spec)) if sharded else (lambda spec: init)
    self.linear = nnx.Linear(dim, 2 * dim, kernel_init=part(P(None, "model")), rngs=rngs)
    self.out = nnx.Linear(2 * dim, dim, kernel_init=part(P("model", None)), rngs=rngs)
    self.norm = nnx.LayerNorm(dim, rngs=rngs)

  def __call__(self, x):
    return x + self.out(nnx.relu(self.linear(self.norm(x))))


class NnxScanStack(nnx.Module):
  def __init__(self, sharded: bool, *, rngs: nnx.Rngs, depth: int = 3, dim: int = 4):
    metadata = {nnx.PARTITION_NAME: "layers"} if sharded else {}

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=metadata)
    def create(rngs):
      return NnxBlock(dim, sharded, rngs=rngs)

    self.layers = create(rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, block):
      return block(x)

    return forward(x, self.layers)


def build_nnx_scan(sharded: bool) -> Built:
  with mesh():
    model = nnx.eval_shape(lambda: NnxScanStack(sharded, rngs=nnx.Rngs(0)))
  return Built(nnx_ways(model, strict_state=sharded), [(r"layers/(linear|out)/kernel", stacked(DENSE))])


class NnxShardedNet(nnx.Module):
  """Un-stacked layers whose sharding is a ``PartitionSpec`` (``kernel_metadata`` or ``nnx.with_partitioning``)."""

  def __init__(self, *, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.conv = nnx.Conv(8, 16, (3, 3), kernel_init=nnx.with_partitioning(init, P(None, None, "model", None)),
                         rngs=rngs)
    self.proj = nnx.Linear(16, 32, kernel_metadata={"out_sharding": P(None, "model")}, rngs=rngs)
    self.fc = nnx.Linear(32, 16, kernel_init=nnx.with_partitioning(init, ("model", None)), rngs=rngs)
    self.q = nnx.LinearGeneral(16, (2, 8), kernel_init=nnx.with_partitioning(init, P(None, "model", None)), rngs=rngs)
    self.o = nnx.LinearGeneral((2, 8), 16, axis=(-2, -1),
                               kernel_init=nnx.with_partitioning(init, P("model", None, None)), rngs=rngs)


def build_nnx_sharded() -> Built:
  with mesh():
    model = nnx.eval_shape(lambda: NnxShardedNet(rngs=nnx.Rngs(0)))
  expect = [(r"conv/kernel", CONV), (r"(proj|fc)/kernel", DENSE), (r"q/kernel", QKV), (r"o/kernel", OUT)]
  return Built(nnx_ways(model, strict_state=r"(proj|fc)/kernel"), expect)  # mesh names say nothing of roles
