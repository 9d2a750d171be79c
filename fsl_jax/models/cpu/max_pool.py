"""2x2 max-pooling whose derivatives, of every order and direction, are one select.

``max_pool_2x2`` keeps each window's argmax (the first maximum in corner order)
as an int8 index from the forward pass (written out once with ``store_index``);
its JVP picks each window's tangent at that index, and the transpose JAX derives
from it, the backward pass, is one select.
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
  return pooled, materialized(index) if store_index else index


def _route_to_index(t: jax.Array, index: jax.Array) -> jax.Array:
  """Each window's element at ``index``: t [B, H, W, C] -> [B, H//2, W//2, C], linear in t.

  Laid out as [B, H/2, 2, W/2, 2, C], corner (dy, dx) has index 2 * dy + dx; one
  select and a sum over the window's two axes. Its transpose, which JAX derives,
  is the max-pool's backward pass: the pooled cotangent broadcast over each
  window, one select, and a reshape back to [B, H, W, C] (padded on odd sides).
  """
  b, h, w, c = t.shape
  h2, w2 = h // 2, w // 2
  windows = t[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
  shape = (1, 1, 2, 1, 2, 1)
  corner = 2 * jax.lax.broadcasted_iota(index.dtype, shape, 2)
  corner += jax.lax.broadcasted_iota(index.dtype, shape, 4)
  window = (slice(None), slice(None), None, slice(None), None, slice(None))
  picked = jnp.where(index[window] == corner, windows, jnp.zeros((), t.dtype))
  return picked.sum(axis=(2, 4))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool_2x2(x: jax.Array, store_index: bool = False) -> jax.Array:
  """[B, H, W, C] -> [B, H//2, W//2, C], the max of each 2x2 window (odd sides floored).

  The derivative goes through one element per window, the first maximum in corner
  order, chosen in the forward pass and kept as an int8 index. The JVP rule is

      d pooled = dx[argmax]    (``_route_to_index``, linear in dx),

  so forward mode, reverse mode (JAX transposes the rule into one select, which
  XLA fuses, instead of ``reduce_window``'s select-and-scatter) and every higher
  order compose.

  The textbook forms (``reshape`` + ``max``, or ``jnp.maximum`` of the four
  corners) differentiate by comparing each input with the max for equality; on
  XLA:CPU, under ``jit(grad(vmap(...)))`` with the im2col convolution, that
  comparison can see values that XLA recomputed with different rounding, and
  layer-1 gradients come out wrong
  (tests/test_models.py::test_jit_grad_under_vmap_equals_eager_grad). Here the
  index is computed once, so each window's derivative comes from exactly one
  element.

  ``store_index`` writes the index out once (``materialized``). Otherwise XLA may
  fuse the tournament into the backward fusions that read the pooled gradient and
  redo it in each: behind a Winograd layer, whose backward pass reads that
  gradient 16 times, storing it pays; behind im2col, with one reader, it is an
  extra pass with nothing saved, so conv-4 stores it only for Winograd
  (``CpuConv4``; docs/performance.md has the measurements).
  """
  return _max_pool_forward(x, store_index)[0]


@max_pool_2x2.defjvp
def _max_pool_jvp(store_index: bool, primals, tangents):
  """The primal through ``max_pool_2x2`` itself, so that outer derivatives of it use
  this rule too (and never differentiate the tournament's comparisons)."""
  (x,), (dx,) = primals, tangents
  index = _max_pool_forward(x, store_index)[1]  # Integer: no derivative.
  return max_pool_2x2(x, store_index), _route_to_index(dx, index)
