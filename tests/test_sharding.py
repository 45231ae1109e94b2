"""A Bort-SGD run sharded over 4 fake CPU devices equals the single-device run."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import bort_jax as bj

    assert jax.device_count() == 4, jax.devices()
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"conv": {"kernel": jax.random.normal(k[0], (3, 3, 8, 16)) / 8, "bias": jnp.zeros(16)},
              "fc": {"kernel": jax.random.normal(k[1], (64, 8)) / 8, "bias": jnp.zeros(8)}}
    grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
    tx = bj.bort_sgd(0.05, 0.5, momentum=0.9, alpha="adaptive", mode="l1-full")

    def run(p):
      def body(_, carry):
        p, s = carry
        u, s = tx.update(grads, s, p)
        return optax.apply_updates(p, u), s
      return jax.lax.fori_loop(0, 10, body, (p, tx.init(p)))[0]

    single = jax.jit(run)(jax.device_put(params, jax.devices()[0]))
    mesh = Mesh(np.array(jax.devices()), ("model",))
    # Output units sharded across devices: the Gram needs a cross-device reduction.
    spec = {"conv": {"kernel": P(None, None, None, "model"), "bias": P("model")},
            "fc": {"kernel": P(None, "model"), "bias": P("model")}}
    sharded_params = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), spec))
    sharded = jax.jit(run)(sharded_params)
    assert len(sharded["fc"]["kernel"].sharding.device_set) == 4
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    print("SHARDED_EQUALS_SINGLE")
""")


def test_four_device_sharded_run_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "SHARDED_EQUALS_SINGLE" in result.stdout
