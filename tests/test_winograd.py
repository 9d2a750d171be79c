"""Winograd F(2x2, 3x3): the same convolution as lax.conv, to second order, and its dispatch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conv_checks import assert_matches_xla_conv_to_second_order_under_vmap

from fsl_jax.models import default_conv_impl
from fsl_jax.models.cpu import conv4, winograd
from fsl_jax.models.cpu.conv4 import conv3x3
from fsl_jax.models.cpu.winograd import WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_TILES, winograd_conv


def numpy_conv(x, k):
  """'SAME' stride-1 3x3 convolution by its definition, in float64."""
  _, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((*x.shape[:3], k.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += np.einsum("bhwc,co->bhwo", padded[:, dy : dy + h, dx : dx + w], k[dy, dx])
  return out


@pytest.mark.parametrize("side_h, side_w", [(1, 1), (2, 3), (7, 6), (8, 8), (5, 9)])
def test_winograd_equals_the_definition_for_every_side(side_h, side_w):
  """Odd sides are padded to whole 2x2 tiles and cropped back; exact in float64."""
  rng = np.random.default_rng(side_h * 10 + side_w)
  x = rng.normal(size=(2, side_h, side_w, 5))
  k = rng.normal(size=(3, 3, 5, 4))
  with jax.enable_x64():
    got = np.asarray(winograd_conv(jnp.asarray(x), jnp.asarray(k)))
  np.testing.assert_allclose(got, numpy_conv(x, k), rtol=1e-12, atol=1e-12)


def test_winograd_in_float32_is_within_rounding_of_the_definition():
  rng = np.random.default_rng(0)
  x, k = rng.normal(size=(4, 14, 14, 64)), rng.normal(size=(3, 3, 64, 64)) / 24
  got = winograd_conv(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32))
  want = numpy_conv(x, k)
  assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5


def test_kernel_transform_is_g_k_g_transposed_and_its_adjoint_the_transpose():
  """U[p] = (G k G^T)[row, col] with Lavin & Gray's G, and G^T dU G its exact adjoint."""
  rng = np.random.default_rng(1)
  k, du = rng.normal(size=(3, 3, 5, 4)), rng.normal(size=(16, 5, 4))
  g = np.asarray(winograd.WINOGRAD_G)
  with jax.enable_x64():
    u = np.stack(winograd._kernel_tiles(jnp.asarray(k)))
    dk = np.asarray(winograd._kernel_tiles_adjoint(list(jnp.asarray(du))))
  np.testing.assert_allclose(
    u, np.einsum("pi,ijco,qj->pqco", g, k, g).reshape(16, 5, 4), rtol=1e-14
  )
  want = np.einsum("pi,pqco,qj->ijco", g, du.reshape(4, 4, 5, 4), g)
  np.testing.assert_allclose(dk, want, rtol=1e-13, atol=1e-13)
  # Adjoint: <U(k), dU> = <k, U^T(dU)>.
  np.testing.assert_allclose(np.sum(u * du), np.sum(k * dk), rtol=1e-12)


def test_hand_written_vjp_matches_xla_conv_to_second_order_under_vmap():
  """An odd side, so the padded tiles' gradients are cut back too."""
  assert_matches_xla_conv_to_second_order_under_vmap(winograd_conv, side=7)


def test_winograd_impl_dispatches_image_thin_strided_and_small_layers(monkeypatch):
  """Grayscale image layers go to image_conv; colour image layers (C_in < 16),
  strided layers and small maps to im2col."""
  calls = []
  monkeypatch.setattr(conv4, "winograd_conv", lambda x, k: calls.append("winograd") or x)
  monkeypatch.setattr(conv4, "image_conv", lambda x, k: calls.append("image") or x)
  monkeypatch.setattr(conv4, "im2col_conv", lambda x, k, s: calls.append(f"im2col/{s}") or x)
  c = WINOGRAD_MIN_CHANNELS
  big = WINOGRAD_MIN_TILES // 9 + 1  # [big, 6, 6, C] has 9 * big >= WINOGRAD_MIN_TILES tiles.
  wide, thin, small = jnp.zeros((big, 6, 6, c)), jnp.zeros((big, 6, 6, 3)), jnp.zeros((1, 6, 6, c))
  gray = jnp.zeros((big, 6, 6, 1))
  conv3x3(gray, jnp.zeros((3, 3, 1, 8)), "winograd")
  conv3x3(gray, jnp.zeros((3, 3, 1, 8)), "winograd", stride=2)
  conv3x3(thin, jnp.zeros((3, 3, 3, 8)), "winograd")
  conv3x3(wide, jnp.zeros((3, 3, c, 8)), "winograd", stride=2)
  conv3x3(small, jnp.zeros((3, 3, c, 8)), "winograd")
  conv3x3(wide, jnp.zeros((3, 3, c, 8)), "winograd")
  assert calls == ["image", "im2col/2", "im2col/1", "im2col/2", "im2col/1", "winograd"]


def test_auto_picks_winograd_for_shared_weights_and_im2col_for_maml_on_cpu():
  assert default_conv_impl("cpu") == "winograd"
  assert default_conv_impl("cpu", per_task_weights=True) == "im2col"
  assert default_conv_impl("gpu") == default_conv_impl("tpu", per_task_weights=True) == "xla"
