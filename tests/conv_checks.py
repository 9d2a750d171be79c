"""A convolution formulation against lax.conv: values and derivatives to second order."""

import jax
import jax.numpy as jnp
import numpy as np

from fsl_jax.models.cpu.conv4 import conv3x3


def assert_matches_xla_conv_to_second_order_under_vmap(conv, side: int, stride: int = 1):
  """``conv(x, k)`` against ``conv3x3(x, k, "xla", stride)`` in float64, to 1e-10.

  Per-task kernels under vmap (as MAML): first derivatives, and a derivative
  through one gradient step (as second-order MAML), with respect to x and k.
  """
  rng = np.random.default_rng(7)
  with jax.enable_x64():
    x = jnp.asarray(rng.normal(size=(3, 2, side, side, 4)))  # [tasks, B, H, W, C].
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4, 5)))  # [tasks, 3, 3, C, C_out].

    def loss(conv):
      per_task = lambda x, k: jnp.sum(jnp.sin(conv(x, k)) ** 2)
      return lambda x, k: jnp.sum(jax.vmap(per_task)(x, k))

    def meta(conv):
      def outer(x, k):
        gx, gk = jax.grad(loss(conv), (0, 1))(x, k)
        return loss(conv)(x - 0.1 * gx, k - 0.1 * gk)

      return outer

    reference = lambda x, k: conv3x3(x, k, "xla", stride)
    for fn in (loss, meta):
      want = jax.jit(jax.grad(fn(reference), (0, 1)))(x, k)
      got = jax.jit(jax.grad(fn(conv), (0, 1)))(x, k)
      for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
