"""conv-4's block after the convolution: batch norm, ReLU and (optionally) 2x2 max-pool.

Per channel, batch norm is the affine map ``a * y + b`` with

    a = scale / sqrt(var + eps),    b = bias - mean * a,

where (mean, var) are the batch moments of ``y`` [B, H, W, C] in training and the
running averages at test time. The block is ``relu(a * y + b)``, or with
``max_pool``, ``max_pool(relu(a * y + b))``, which it pools first: an affine map
with ``a >= 0`` and ReLU are both non-decreasing, so they commute with a max,
``max_i relu(a y_i + b) = relu(a max_i y_i + b)``; with ``a < 0`` the max of
``a y_i`` is ``a min_i y_i = -a max_i (-y_i)``. With ``s = sign(scale)`` (taken as
+1 at 0; ``sign(a) = sign(scale)``):

    max_pool(relu(a * y + b)) = relu(s * a * max_pool(s * y) + b)

exactly, values and gradients alike (away from ties inside a window, where
either form routes the gradient to a different but equally valid maximum).

Pooled first, only the moments and the pool read the full-resolution ``y``; the
affine map and ReLU run on [B, H/2, W/2, C], and in the backward pass ``dL/dy``
is one fused pass: the pooled gradient routed to each window's maximum, plus the
moments' terms ``dL/dmean / N + dL/dmean2 * 2 y / N``.

The per-channel vectors (the moments, ``a``, ``b``) and their cotangents are
materialised before any per-pixel use (``_per_channel``); see there for why.

The variables are those of ``flax.linen.BatchNorm`` (params ``scale`` and ``bias``;
batch_stats ``mean`` and ``var``), computed the same way: float32 moments
``E[y]`` and ``max(E[y^2] - E[y]^2, 0)``, and running averages ``m * old + (1 -
m) * batch``. Checkpoints of either form load into the other.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.models.cpu.materialized import materialized
from fsl_jax.models.cpu.max_pool import max_pool_2x2


class BatchNormRelu(nn.Module):
  """[B, H, W, C] -> ``relu(BatchNorm(y))``, or with ``max_pool`` [B, H//2, W//2, C].

  Attributes:
    max_pool: follow with ``max_pool_2x2`` (odd sides floored), pooled first.
    store_pool_index: the pool's ``store_index`` (for Winograd models; see there).
    momentum: running-average decay ``m``, as ``flax.linen.BatchNorm``'s.
    epsilon: added to the variance.
    dtype: dtype of the output (the block's compute dtype); moments, params and
      running averages are float32 (float64 under ``jax.enable_x64``).
  """

  max_pool: bool = False
  store_pool_index: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(
    self,
    y: jax.Array,
    use_running_average: bool,
    moments: tuple[jax.Array, jax.Array] | None = None,
  ) -> jax.Array:
    """``moments``: ``(E[y], E[y^2])`` [C] each, where the caller has them more cheaply
    than by reducing y (the image layer: ``image_conv.image_conv_moments``)."""
    channels = y.shape[-1]
    stat_dtype = jnp.promote_types(y.dtype, jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)

    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      if moments is None:
        y32 = y.astype(stat_dtype)
        axes = tuple(range(y.ndim - 1))
        moments = y32.mean(axes), jnp.square(y32).mean(axes)
      mean, mean2 = _per_channel(*moments)
      var = jnp.maximum(mean2 - jnp.square(mean), 0.0)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
        ra_var.value = m * ra_var.value + (1.0 - m) * var

    a = scale * jax.lax.rsqrt(var + self.epsilon)  # [C]
    b = bias - mean * a
    if self.max_pool:
      sign = jnp.where(scale >= 0, 1.0, -1.0)  # Piecewise constant: no gradient.
      a, b, sign = _per_channel(sign * a, b, sign.astype(y.dtype))
      pooled = max_pool_2x2(sign * y, self.store_pool_index)  # [B, H/2, W/2, C].
      out = nn.relu(a * pooled + b)
    else:
      a, b = _per_channel(a, b)
      out = nn.relu(a * y + b)
    return out.astype(self.dtype or out.dtype)


def _per_channel(*vectors: jax.Array) -> tuple[jax.Array, ...]:
  """The per-channel vectors, computed once, before any per-pixel use; likewise
  their cotangents, at every order of differentiation.

  XLA:CPU otherwise fuses the chain of [C]-sized arithmetic that produced a vector
  into each per-pixel loop that broadcasts it, and re-evaluates it for every pixel.
  In the second-order MAML backward pass (miniImageNet) such chains run to about
  200 operations on [tasks, C], each re-evaluated for every element of a loop
  over [4, 35280, 32]. ``lax.optimization_barrier`` does not prevent this on CPU.
  """
  return tuple(materialized(v) for v in vectors)
