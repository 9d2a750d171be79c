"""2x2 max-pooling with a cheap, exact, twice-differentiable VJP.

``max_pool_2x2`` keeps each window's argmax (the first maximum in corner order)
as an int8 index from the forward pass (written out once with ``store_index``),
and its backward pass is one select.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from fsl_jax.models.cpu.materialized import materialized


def _window_corners(x: jax.Array) -> tuple[jax.Array, ...]:
  """The four corners (dy, dx) = (0,0), (0,1), (1,0), (1,1) of every 2x2 window."""
  _, h, w, _ = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


def _max_pool_forward(x: jax.Array, store_index: bool = False):
  """Max and argmax (0..3, the first maximum in corner order) of each window, by tournament."""
  v0, v1, v2, v3 = _window_corners(x)
  left, right = v0 >= v1, v2 >= v3
  best_left, best_right = jnp.where(left, v0, v1), jnp.where(right, v2, v3)
  first = best_left >= best_right
  pooled = jnp.where(first, best_left, best_right)
  index = jnp.where(first, jnp.where(left, 0, 1), jnp.where(right, 2, 3)).astype(jnp.int8)
  return pooled, (materialized(index) if store_index else index, x.shape)


def _max_pool_backward(store_index: bool, residuals, g: jax.Array):
  """Routes each window's gradient ``g`` [B, H/2, W/2, C] to its argmax corner.

  One select over the windows laid out as [B, H/2, 2, W/2, 2, C]: corner (dy, dx)
  has index 2 * dy + dx, and the result reshapes to [B, H, W, C] in place.
  """
  del store_index  # It only decides, in the forward pass, how the index is kept.
  index, (b, h, w, c) = residuals
  h2, w2 = g.shape[1], g.shape[2]
  shape = (1, 1, 2, 1, 2, 1)
  corner = 2 * jax.lax.broadcasted_iota(index.dtype, shape, 2)
  corner += jax.lax.broadcasted_iota(index.dtype, shape, 4)
  window = (slice(None), slice(None), None, slice(None), None, slice(None))
  dx = jnp.where(index[window] == corner, g[window], jnp.zeros((), g.dtype))
  dx = dx.reshape(b, 2 * h2, 2 * w2, c)
  return (jnp.pad(dx, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0))),)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_2x2(x: jax.Array, store_index: bool = False) -> jax.Array:
  """[B, H, W, C] -> [B, H//2, W//2, C], the max of each 2x2 window (odd sides floored).

  The gradient goes to one element per window, the first maximum in corner
  order, chosen in the forward pass and kept as an int8 index: the backward pass
  is one select, which XLA fuses, instead of ``reduce_window``'s
  select-and-scatter or a gather (2.6x faster than the gather on XLA:CPU, forward
  and backward, 80x28x28x64). It is twice differentiable, as second-order MAML
  needs: the backward pass is linear in ``g``.

  The textbook forms (``reshape`` + ``max``, or ``jnp.maximum`` of the four
  corners) differentiate by comparing each input with the max for equality; on
  XLA:CPU (jax 0.10.2), under ``jit(grad(vmap(...)))`` with the im2col
  convolution, that comparison can see values that XLA recomputed with different
  rounding, and layer-1 gradients came out wrong by 100%
  (tests/test_models.py::test_jit_grad_under_vmap_equals_eager_grad). Here the
  index is computed once, so each window's gradient lands on exactly one element.

  ``store_index`` writes the index out once (``materialized``). Otherwise XLA may
  fuse the tournament into the backward fusions that read the pooled gradient and
  redo it in each: behind a Winograd layer, whose backward pass reads that gradient
  16 times, storing it made matching_omniglot_5w1s 7% faster (0.0434 -> 0.0405 s);
  behind im2col, with one reader, it made MAML on miniImageNet 10% slower (first
  order, 0.58 -> 0.64 s), so conv-4 stores it only for Winograd (``Conv4``).
  """
  return _max_pool_forward(x, store_index)[0]


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)
