"""Recording layer outputs: with ``capture=True`` a model sows the pre-activation y = x M (+ b) of every
kernel it applies as ``nnx.Intermediate`` named ``preact`` inside that layer, so its path sits next to the
layer's ``kernel`` (``conv1/preact`` beside ``conv1/kernel``). DBort's data-aware term (the trainer) and the
explainability suite read them with ``logits, sown = nnx.capture(model, nnx.Intermediate)(x)`` (flax 0.12
deprecates sowing outside ``nnx.capture``).
"""

from flax import nnx
import jax


def record(layer: nnx.Module, y: jax.Array, capture: bool) -> jax.Array:
  """Returns ``y``, the output of ``layer``; sows it as ``layer``'s ``preact`` when ``capture``."""
  if capture:
    layer.sow(nnx.Intermediate, "preact", y)
  return y
