"""conv-4's image layer (one input channel) without writing its output to memory.

The first convolution maps grayscale images x [B, H, W, 1] to F channels: its
output y [B, H, W, F] is F times the size of x ([80, 28, 28, 64] float32 for 80
Omniglot images at F = 64), and every pass over it is memory traffic.
Batch norm and the max-pool need only two things of y:

* its per-channel moments, which the 3x3 patches give exactly. With P [N, 9C]
  the patches (N = B*H*W), K [9C, F] the kernel and y = P K,

      E[y] = p K,    E[y^2]_f = K_f^T S K_f,    p = mean_n P_n [9C],  S = P^T P / N [9C, 9C],

  (``image_conv_moments``), so the moments read the patches (9C numbers per
  pixel) instead of y (F per pixel);
* its values inside the pool's loop. ``image_conv`` computes y as nine
  multiply-adds per output, an elementwise expression of x that XLA fuses into
  the pool (which stores only the pooled values and the int8 argmax), so y is
  never written.

Its JVP rule writes the kernel's term as a product with the patches laid out
channel-major, dY = P^T dK with P [9C, N], so that its transpose, the kernel
gradient, is one plain product dK = P dY (the [N, 9C] form would contract rows,
which XLA:CPU runs in Eigen). The input's term is ``image_conv`` of the tangent;
conv-4 never differentiates with respect to its image, and the symbolic zero
skips it. With three colour channels (27 multiply-adds per output) im2col is
faster, hence ``image_conv_pays``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from fsl_jax.models.cpu.row_products import matmul_tn


def image_conv_pays(x_shape: Sequence[int], stride: int) -> bool:
  """Whether ``image_conv`` beats im2col for a 3x3 convolution of input ``x_shape`` [B, H, W, C]."""
  return stride == 1 and x_shape[-1] == 1


def _taps(x: jax.Array) -> list[jax.Array]:
  """The nine 'SAME' 3x3 taps of x [B, H, W, C]: x zero-padded and shifted by (dy, dx)."""
  _, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]


def _patches(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> patches, channel-major, [9C, B*H*W]: row (dy*3 + dx)*C + c, as
  ``kernel.reshape(9C, F)``, and column the pixel."""
  c = x.shape[-1]
  taps = jnp.stack(_taps(x))  # [9, B, H, W, C]
  return jnp.moveaxis(taps, -1, 1).reshape(9 * c, -1)


def image_conv_moments(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(E[y], E[y^2]) per channel, [F] each, of y = conv3x3(x, kernel), from the patches' Gram matrix.

  Args:
    x: [B, H, W, C], C small (the image).
    kernel: [3, 3, C, F].

  Returns:
    ``p K`` and ``diag(K^T S K)`` (module docstring), in float32 at least;
    differentiable to any order by plain autodiff.
  """
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  patches = _patches(x.astype(dtype))  # [9C, N]
  n = patches.shape[1]
  k = kernel.astype(dtype).reshape(-1, kernel.shape[-1])  # [9C, F]
  gram = jax.lax.dot_general(patches, patches, (((1,), (1,)), ((), ()))) / n  # [9C, 9C]
  return patches.mean(axis=1) @ k, jnp.sum(k * (gram @ k), axis=0)


@jax.custom_jvp
def image_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``conv3x3(x, kernel, stride=1)`` as nine multiply-adds per output, which XLA fuses
  into the consumer (conv-4's pool) instead of writing it out.

  Args:
    x: [B, H, W, C], C small (the image).
    kernel: [3, 3, C, F].

  Returns:
    [B, H, W, F], ``y = sum_{dy,dx,c} x_pad[b, i+dy, j+dx, c] k[dy, dx, c, :]``.
  """
  c, f = kernel.shape[2:]
  k = kernel.reshape(9, c, f)
  y = jnp.zeros((*x.shape[:3], f), jnp.result_type(x, kernel))
  for t, tap in enumerate(_taps(x)):
    for ci in range(c):
      y = y + tap[..., ci : ci + 1] * k[t, ci]
  return y


@image_conv.defjvp
def _image_conv_jvp(primals, tangents):
  """dy = image_conv(dx, K) + P^T dK, the kernel's term a product on channel-major
  patches P [9C, N] (``row_products.matmul_tn``), whose transpose is dK = P dY."""
  (x, kernel), (dx, dkernel) = primals, tangents
  f = kernel.shape[-1]
  terms = []
  if not isinstance(dx, SymbolicZero):
    terms.append(image_conv(dx, kernel))
  if not isinstance(dkernel, SymbolicZero):
    dk = matmul_tn(_patches(x), dkernel.reshape(-1, f))  # [N, F]
    terms.append(dk.reshape(*x.shape[:3], f))
  if not terms:
    return image_conv(x, kernel), jnp.zeros((*x.shape[:3], f), jnp.result_type(x, kernel))
  return image_conv(x, kernel), sum(terms[1:], terms[0])


image_conv.defjvp(_image_conv_jvp, symbolic_zeros=True)
