"""Batch norm, ReLU and 2x2 max-pool as one block, pooled before the affine map.

conv-4's block ends in ``max_pool(relu(bn(y)))``. Per channel, batch norm is the
affine map ``a * y + b`` with

    a = scale / sqrt(var + eps),    b = bias - mean * a,

where (mean, var) are the batch moments of ``y`` in training and the running
averages at test time. An affine map with ``a >= 0`` and ReLU are both
non-decreasing, so they commute with a max: ``max_i relu(a y_i + b) =
relu(a max_i y_i + b)``. With ``a < 0`` the max of ``a y_i`` is ``a min_i y_i =
-a max_i (-y_i)``. With ``s = sign(scale)`` (taken as +1 at 0; ``sign(a) =
sign(scale)``):

    max_pool(relu(bn(y))) = relu(s * a * max_pool(s * y) + b)

exactly, values and gradients alike (away from ties inside a window, where
either form routes the gradient to a different but equally valid maximum).

Only the moments and the pool read the full-resolution ``y`` [B, H, W, C]; the
affine map and ReLU run on the pooled [B, H/2, W/2, C], and in the backward pass
``dL/dy`` is one fused pass: the pooled gradient routed to each window's maximum,
plus the moments' terms ``dL/dmean / N + dL/dmean2 * 2 y / N``. On XLA:CPU this
halves the passes over the block's largest tensor.

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

from fsl_jax.models.max_pool import max_pool_2x2


class BatchNormReluMaxPool(nn.Module):
  """[B, H, W, C] -> [B, H//2, W//2, C]: ``max_pool_2x2(relu(BatchNorm(y)))``.

  Attributes:
    momentum: running-average decay ``m``, as ``flax.linen.BatchNorm``'s.
    epsilon: added to the variance.
    dtype: dtype of the output (the block's compute dtype); moments, params and
      running averages are float32 (float64 under ``jax.enable_x64``).
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, y: jax.Array, use_running_average: bool) -> jax.Array:
    channels = y.shape[-1]
    stat_dtype = jnp.promote_types(y.dtype, jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)

    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      y32 = y.astype(stat_dtype)
      axes = tuple(range(y.ndim - 1))
      mean = y32.mean(axes)
      var = jnp.maximum(jnp.square(y32).mean(axes) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
        ra_var.value = m * ra_var.value + (1.0 - m) * var

    a = scale * jax.lax.rsqrt(var + self.epsilon)  # [C]
    b = bias - mean * a
    sign = jnp.where(scale >= 0, 1.0, -1.0).astype(y.dtype)  # Constant: no gradient.
    pooled = max_pool_2x2(sign * y)  # [B, H/2, W/2, C], the max of s * y per window.
    out = nn.relu(sign.astype(a.dtype) * a * pooled + b)
    return out.astype(self.dtype or out.dtype)
