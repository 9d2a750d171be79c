"""The 'SAME' stride-1 3x3 convolution by Winograd's minimal filtering F(2x2, 3x3).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016), eq. 8. The
output is cut into 2x2 tiles, T = B * ceil(H/2) * ceil(W/2) of them; tile (i, j)
reads the 4x4 window d of the zero-padded input that starts at (2i - 1, 2j - 1).
With

  B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
  G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
  A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

  V = B^T d B         the input tiles,  [4, 4] per tile and input channel
  U = G k G^T         the kernel,       [4, 4] per channel pair
  M[p] = V[p] @ U[p]  for each of the 16 positions p: [T, C_in] @ [C_in, C_out]
  y = A^T M A         the 2x2 output tile

which equals the direct convolution in exact arithmetic (float64: 1e-14; float32:
about 1e-6 relative). Against im2col it does 16 * C_in * C_out multiplies per four
outputs instead of 36 (2.25x fewer) on an input 4x its size instead of 9x.

B^T and A^T are applied by adds on strided slices, one axis at a time, and G by
adds on the kernel's [C_in, C_out] slices. Each transform is a ``linear_map``
with its adjoint written out (an interleave, not the pads and scatters JAX would
derive), and the 16 products are ``row_products``, so the kernel gradient
``dU[p] = V[p]^T dM[p]`` contracts V's rows in place, where XLA:CPU would first
copy V to [16, C_in, T]. Everything else is JAX's own differentiation, so the
convolution composes with every transformation: forward and reverse mode at any
order, ``vmap``, ``jit`` and ``checkpoint``. The 16 positions are kept as separate
[T, C] arrays, so no stack or sliced copy feeds the 16 products.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fsl_jax.models.cpu.linear_map import linear_map
from fsl_jax.models.cpu.row_products import matmul

WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# Below this many input channels (the image layer: 1 or 3) the 16 products are too
# thin to pay for the transforms; conv4 uses im2col there.
WINOGRAD_MIN_CHANNELS = 16
# Nor below this many 2x2 tiles, B * ceil(H/2) * ceil(W/2): with few tiles the 16
# products are too short to pay for the transforms and im2col's one product wins
# (docs/performance.md has the measurements).
WINOGRAD_MIN_TILES = 2000


def winograd_pays(x_shape: Sequence[int], stride: int) -> bool:
  """Whether Winograd beats im2col for a 3x3 convolution of input ``x_shape`` [B, H, W, C]."""
  b, h, w, c = x_shape
  tiles = b * _num_tiles(h) * _num_tiles(w)
  return stride == 1 and c >= WINOGRAD_MIN_CHANNELS and tiles >= WINOGRAD_MIN_TILES


def _num_tiles(side: int) -> int:
  return -(-side // 2)


def _input_transform_1d(padded: jax.Array, axis: int, tiles: int) -> list[jax.Array]:
  """B^T along ``axis`` (length 2 * tiles + 2): the four rows of B^T d, each ``tiles`` long.

  Tile t covers rows 2t .. 2t + 3 of ``padded``.
  """

  def rows(first: int) -> jax.Array:
    index = [slice(None)] * padded.ndim
    index[axis] = slice(first, first + 2 * tiles, 2)
    return padded[tuple(index)]

  d0, d1, d2, d3 = rows(0), rows(1), rows(2), rows(3)
  return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _input_transform_1d_adjoint(r: Sequence[jax.Array], axis: int) -> jax.Array:
  """The adjoint of ``_input_transform_1d``: four rows [.., tiles, ..] -> [.., 2*tiles+2, ..].

  B r per tile gives rows d0..d3 of tile t at 2t..2t+3; tiles overlap by two rows,
  so even row 2t gets d0[t] + d2[t-1] and odd row 2t+1 gets d1[t] + d3[t-1].
  """
  d0, d1, d2, d3 = r[0], r[1] - r[2] + r[3], r[1] + r[2] - r[0], -r[3]

  def shift(a: jax.Array, before: int) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (before, 1 - before)
    return jnp.pad(a, widths)

  even, odd = shift(d0, 0) + shift(d2, 1), shift(d1, 0) + shift(d3, 1)
  shape = list(even.shape)
  shape[axis] *= 2
  return jnp.stack([even, odd], axis=axis + 1).reshape(shape)


def _output_transform_1d(m: Sequence[jax.Array]) -> list[jax.Array]:
  """A^T applied to four rows -> two."""
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _output_transform_1d_adjoint(y0: jax.Array, y1: jax.Array) -> list[jax.Array]:
  """A applied to two rows -> four."""
  return [y0, y0 + y1, y0 - y1, -y1]


def _input_tiles(x: jax.Array) -> list[jax.Array]:
  """[B, H, W, C] -> V = B^T d B of every tile: 16 arrays [T, C], position p = 4 * row + col."""
  b, h, w, c = x.shape
  tiles_h, tiles_w = _num_tiles(h), _num_tiles(w)
  padded = jnp.pad(x, ((0, 0), (1, 2 * tiles_h + 1 - h), (1, 2 * tiles_w + 1 - w), (0, 0)))
  rows = _input_transform_1d(padded, 1, tiles_h)
  tiles = b * tiles_h * tiles_w
  return [col.reshape(tiles, c) for row in rows for col in _input_transform_1d(row, 2, tiles_w)]


def _input_tiles_adjoint(dv: Sequence[jax.Array], x_shape: Sequence[int]) -> jax.Array:
  """The adjoint of ``_input_tiles``: 16 arrays [T, C] -> [B, H, W, C]."""
  b, h, w, c = x_shape
  dv = [d.reshape(b, _num_tiles(h), _num_tiles(w), c) for d in dv]
  cols = [_input_transform_1d_adjoint(dv[4 * p : 4 * p + 4], axis=2) for p in range(4)]
  return _input_transform_1d_adjoint(cols, axis=1)[:, 1 : 1 + h, 1 : 1 + w]


def _output_tiles(m: Sequence[jax.Array], y_shape: Sequence[int]) -> jax.Array:
  """Y = A^T M A of every tile, interleaved back: 16 arrays [T, C] -> [B, H, W, C]."""
  b, h, w, c = y_shape
  tiles_h, tiles_w = _num_tiles(h), _num_tiles(w)
  m = [t.reshape(b, tiles_h, tiles_w, c) for t in m]
  # A^T down each column q of the 4x4 positions, then A^T along each resulting row a.
  columns = [_output_transform_1d([m[4 * p + q] for p in range(4)]) for q in range(4)]
  y = [_output_transform_1d([columns[q][a] for q in range(4)]) for a in range(2)]
  # y[a][e] is output pixel (2i + a, 2j + e) of tile (i, j).
  y = jnp.stack([jnp.stack(y[a], axis=3) for a in range(2)], axis=2)
  return y.reshape(b, 2 * tiles_h, 2 * tiles_w, c)[:, :h, :w]


def _output_tiles_adjoint(dy: jax.Array) -> list[jax.Array]:
  """The adjoint of ``_output_tiles``: [B, H, W, C] -> 16 arrays [T, C]."""
  b, h, w, c = dy.shape
  tiles_h, tiles_w = _num_tiles(h), _num_tiles(w)
  dy = jnp.pad(dy, ((0, 0), (0, 2 * tiles_h - h), (0, 2 * tiles_w - w), (0, 0)))
  dy = dy.reshape(b, tiles_h, 2, tiles_w, 2, c)
  rows = _output_transform_1d_adjoint(dy[:, :, 0], dy[:, :, 1])  # Each [B, th, tw, 2, C].
  tiles = b * tiles_h * tiles_w
  return [
    col.reshape(tiles, c)
    for row in rows
    for col in _output_transform_1d_adjoint(row[..., 0, :], row[..., 1, :])
  ]


def _kernel_transform_1d(k: Sequence[jax.Array]) -> list[jax.Array]:
  """G applied to three rows -> four: ``[k0, (k0 + k1 + k2) / 2, (k0 - k1 + k2) / 2, k2]``."""
  even = 0.5 * (k[0] + k[2])
  return [k[0], even + 0.5 * k[1], even - 0.5 * k[1], k[2]]


def _kernel_transform_1d_adjoint(d: Sequence[jax.Array]) -> list[jax.Array]:
  """G^T applied to four rows -> three."""
  even = 0.5 * (d[1] + d[2])
  return [d[0] + even, 0.5 * (d[1] - d[2]), even + d[3]]


def _kernel_tiles(kernel: jax.Array) -> list[jax.Array]:
  """U = G k G^T: [3, 3, C_in, C_out] -> 16 arrays [C_in, C_out], position p = 4 * row + col.

  Written as adds on the [C_in, C_out] slices: as an einsum with G, XLA:CPU runs
  it as two thin matmuls, which cost more than the adds on so small a kernel.
  """
  rows = _kernel_transform_1d([kernel[i] for i in range(3)])  # Each [3, C_in, C_out].
  return [u for row in rows for u in _kernel_transform_1d([row[j] for j in range(3)])]


def _kernel_tiles_adjoint(du: Sequence[jax.Array]) -> jax.Array:
  """G^T dU G: 16 arrays [C_in, C_out] -> [3, 3, C_in, C_out]."""
  rows = [jnp.stack(_kernel_transform_1d_adjoint(du[4 * p : 4 * p + 4])) for p in range(4)]
  return jnp.stack(_kernel_transform_1d_adjoint(rows))


def winograd_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``conv3x3(x, kernel, stride=1)`` by F(2x2, 3x3); see the module docstring.

  Args:
    x: [B, H, W, C_in], any H, W >= 1 (odd sides are padded to whole tiles).
    kernel: [3, 3, C_in, C_out].

  Returns:
    [B, H, W, C_out].
  """
  y_shape = (*x.shape[:3], kernel.shape[-1])
  v = linear_map(_input_tiles, lambda *dv: (_input_tiles_adjoint(dv, x.shape),), x)
  u = linear_map(_kernel_tiles, lambda *du: (_kernel_tiles_adjoint(du),), kernel)
  m = [matmul(v[p], u[p]) for p in range(16)]
  return linear_map(lambda m: _output_tiles(m, y_shape), lambda dy: (_output_tiles_adjoint(dy),), m)
