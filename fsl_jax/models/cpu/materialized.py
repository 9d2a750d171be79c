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
is ``v`` written as a reduction:

    materialized(v) = sum_k m_k * broadcast(v)_k,    m = [1, 0].

It is plain JAX and linear, so every derivative of any order and direction is
again such a reduction: its JVP is ``materialized(dv)``, and its transpose, which
JAX derives, is ``ct -> broadcast -> * m -> sum over k`` (the transpose of a
broadcast is a sum), the same form. The cotangent is therefore materialised too,
with no hand-written rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def materialized(v: jax.Array) -> jax.Array:
  """``v`` (any dtype), computed once; its tangents and cotangents likewise."""
  mask = jnp.asarray([1, 0], v.dtype).reshape((2,) + (1,) * v.ndim)
  return jnp.sum(jnp.broadcast_to(v, (2, *v.shape)) * mask, axis=0, dtype=v.dtype)
