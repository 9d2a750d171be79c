"""An array that XLA computes once, instead of re-evaluating it inside each consumer.

XLA:CPU fuses a cheap elementwise producer into every loop that reads it, and then
evaluates it again for each element that loop visits. Two places in conv-4 lose by
that (``lax.optimization_barrier`` does not prevent it on CPU):

* batch norm's per-channel vectors, whose chains of [C]-sized arithmetic would be
  re-evaluated for every pixel (``batch_norm_relu._per_channel``);
* the max-pool's argmax, whose tournament would be recomputed by every backward
  fusion that reads the pooled gradient, 16 times over behind a Winograd layer
  (``max_pool.max_pool_2x2(..., store_index=True)``).

The output of a reduction is not fused into its consumers, so ``materialized(v)``
is ``v`` written as the sum over an axis of ``[v, 0]``. It is the identity, a
linear map that is its own transpose, and it is declared so (``linear_map``):
its tangents and cotangents, of every order, are ``materialized`` too. (JAX's own
transpose of that sum would be a broadcast and a slice, which XLA removes; a
tangent written as another reduction, ``sum_k m_k broadcast(dv)_k``, lets XLA
move its broadcast into the producer's reduction and compute that twice.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fsl_jax.models.cpu.linear_map import linear_map


def _sum_with_zeros(v: jax.Array) -> jax.Array:
  return jnp.stack([v, jnp.zeros_like(v)]).sum(0, dtype=v.dtype)


def materialized(v: jax.Array) -> jax.Array:
  """``v`` (any dtype), computed once; its tangents and cotangents likewise."""
  return linear_map(_sum_with_zeros, lambda ct: (_sum_with_zeros(ct),), v)
