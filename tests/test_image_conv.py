"""The image layer computed inside its pool: the same convolution, moments and model."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conv_checks import assert_matches_xla_conv_to_second_order_under_vmap

from fsl_jax.models.cpu.conv4 import CpuConv4, conv3x3
from fsl_jax.models.cpu.image_conv import image_conv, image_conv_moments, image_conv_pays


def test_image_conv_matches_xla_conv_to_second_order_under_vmap():
  """Its VJP (dK = P^T dY on channel-major patches, dX through the patches' adjoint)
  and that VJP's own derivatives, against lax.conv, odd side included."""
  assert_matches_xla_conv_to_second_order_under_vmap(image_conv, side=7)


@pytest.mark.parametrize("c_in", [1, 3])
def test_moments_from_the_patches_equal_the_moments_of_the_output_with_gradients(c_in):
  rng = np.random.default_rng(c_in)
  with jax.enable_x64():
    x = jnp.asarray(rng.normal(size=(3, 9, 8, c_in)))
    k = jnp.asarray(rng.normal(size=(3, 3, c_in, 6)))

    def direct(x, k):
      y = conv3x3(x, k, "xla")
      return y.mean((0, 1, 2)), jnp.square(y).mean((0, 1, 2))

    for got, want in zip(image_conv_moments(x, k), direct(x, k), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-12)
    weights = jnp.asarray(rng.normal(size=(2, 6)))
    scalar = lambda f: lambda x, k: jnp.sum(jnp.stack(f(x, k)) * weights)
    for got, want in zip(
      jax.grad(scalar(image_conv_moments), (0, 1))(x, k),
      jax.grad(scalar(direct), (0, 1))(x, k),
      strict=True,
    ):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_only_grayscale_stride_one_image_layers_use_it():
  assert image_conv_pays((80, 28, 28, 1), 1)
  assert not image_conv_pays((80, 84, 84, 3), 1)  # 27 multiply-adds an output: slower.
  assert not image_conv_pays((80, 28, 28, 1), 2)


def _loss_and_grads(model, variables, images):
  def value(params):
    variables_ = {"params": params, "batch_stats": variables["batch_stats"]}
    out, updates = model.apply(variables_, images, train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(out)), updates

  return jax.jit(jax.value_and_grad(value, has_aux=True))


def test_winograd_model_matches_im2col_in_values_statistics_and_gradients():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1)), jnp.uint8)
  with jax.enable_x64():
    models = {
      impl: CpuConv4(filters=8, num_blocks=2, conv_impl=impl) for impl in ("im2col", "winograd")
    }
    variables = models["im2col"].init(jax.random.PRNGKey(0), images, train=False)
    results = {
      impl: _loss_and_grads(m, variables, images)(variables["params"]) for impl, m in models.items()
    }
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
      results["im2col"],
      results["winograd"],
    )


def test_winograd_model_never_writes_the_image_layers_output_in_the_forward_pass():
  """No forward operation of the train step outputs the [B, 28, 28, F] convolution."""
  images = jnp.zeros((6, 28, 28, 1), jnp.uint8)
  full_resolution = re.compile(r"= f32\[[\d,]*28,28,8\]")

  def forward_full_resolution_ops(impl):
    model = CpuConv4(filters=8, num_blocks=2, conv_impl=impl)
    variables = model.init(jax.random.PRNGKey(0), images, train=False)
    step = _loss_and_grads(model, variables, images)
    hlo = step.lower(variables["params"]).compile().as_text()
    entry = hlo[hlo.index("\nENTRY") :].splitlines()
    return [line for line in entry if full_resolution.search(line) and "transpose(" not in line]

  assert forward_full_resolution_ops("winograd") == []
  assert forward_full_resolution_ops("im2col")  # im2col writes it: the check can fail.
