"""An array that XLA computes once, instead of re-evaluating it inside each consumer.

XLA:CPU fuses a cheap elementwise producer into every loop that reads it, and then
evaluates it again for each element that loop visits. Two places in conv-4 lose by
that (``lax.optimization_barrier`` does not prevent it on CPU):

* batch norm's per-channel vectors, whose chains of [C]-sized arithmetic were
  re-evaluated for every pixel (``batch_norm_relu._per_channel``);
* the max-pool's argmax, whose tournament was recomputed by every backward fusion
  that reads the pooled gradient, 16 times over behind a Winograd layer
  (``max_pool.max_pool_2x2(..., store_index=True)``).

The output of a reduction is not fused into its consumers, so ``materialized(v)``
is ``v`` written as the sum over an axis of ``[v, 0]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def materialized(v: jax.Array) -> jax.Array:
  """``v`` (any dtype), computed once; its cotangent passes through the same."""
  return jnp.stack([v, jnp.zeros_like(v)]).sum(0, dtype=v.dtype)


def _materialized_fwd(v):
  return materialized(v), None


def _materialized_bwd(_, g):
  return (materialized(g),)


materialized.defvjp(_materialized_fwd, _materialized_bwd)
