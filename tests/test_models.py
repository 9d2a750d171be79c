"""conv-4: every convolution formulation computes the same function, and shapes are right."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conv_checks import assert_matches_xla_conv_to_second_order_under_vmap

from fsl_jax.models.cpu.conv4 import CpuConv4, conv3x3
from fsl_jax.models.cpu.max_pool import max_pool_2x2
from fsl_jax.models.cpu.winograd import winograd_pays


@pytest.mark.parametrize("c_in", [1, 3, 8])
def test_conv_formulations_agree_with_a_numpy_convolution(c_in):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 6, c_in)).astype(np.float32)
  k = rng.normal(size=(3, 3, c_in, 5)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((2, 7, 6, 5), np.float32)
  for dy in range(3):
    for dx in range(3):
      expected += np.einsum("bhwc,co->bhwo", padded[:, dy : dy + 7, dx : dx + 6], k[dy, dx])
  for impl in ("xla", "im2col"):
    np.testing.assert_allclose(conv3x3(x, k, impl), expected, rtol=1e-5, atol=1e-5)


def test_conv_gradients_agree_between_formulations():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 8, 8, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
  grads = {
    impl: jax.grad(lambda x, k, impl=impl: jnp.sum(jnp.sin(conv3x3(x, k, impl))), (0, 1))(x, k)
    for impl in ("xla", "im2col")
  }
  for a, b in zip(grads["xla"], grads["im2col"], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride, side", [(1, 8), (1, 7), (2, 8), (2, 7)])
def test_im2col_matches_xla_conv_to_second_order_under_vmap(stride, side):
  """im2col's derivatives come from row_products' VJPs; lax.conv's from JAX's rules."""
  assert_matches_xla_conv_to_second_order_under_vmap(
    lambda x, k: conv3x3(x, k, "im2col", stride), side, stride
  )


def test_reshape_max_pool_equals_flax_max_pool_including_odd_sides():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, 7, 3)), jnp.float32)
  expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  assert max_pool_2x2(x).shape == (2, 3, 3, 3)
  np.testing.assert_array_equal(max_pool_2x2(x), expected)


@pytest.mark.parametrize(
  "image_shape, filters, dim", [((28, 28, 1), 64, 64), ((84, 84, 3), 32, 32 * 5 * 5)]
)
def test_embedding_shapes(image_shape, filters, dim):
  model = CpuConv4(filters=filters, pixel_mean=(0.5,) * image_shape[-1], pixel_std=(0.25,) * 3)
  images = jnp.zeros((4, *image_shape), jnp.uint8)
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  assert model.apply(variables, images, train=False).shape == (4, dim)
  assert set(variables) == {"params", "batch_stats"}


def test_whole_model_agrees_across_formulations_in_train_and_eval_mode():
  images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (6, 28, 28, 1)), jnp.uint8)
  models = {impl: CpuConv4(conv_impl=impl) for impl in ("xla", "im2col", "winograd")}
  variables = models["xla"].init(jax.random.PRNGKey(0), images, train=False)
  for train in (True, False):
    outputs = {
      impl: m.apply(variables, images, train=train, mutable=["batch_stats"])[0]
      for impl, m in models.items()
    }
    for impl in ("im2col", "winograd"):
      np.testing.assert_allclose(outputs["xla"], outputs[impl], rtol=1e-4, atol=1e-4)


def test_linear_head_gives_n_way_logits():
  model = CpuConv4(num_outputs=5)
  images = jnp.zeros((3, 28, 28, 1), jnp.uint8)
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  assert model.apply(variables, images, train=False).shape == (3, 5)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["xla", "im2col"])
def test_jit_grad_under_vmap_equals_eager_grad(impl):
  """Regression: with reshape+max pooling, XLA:CPU got layer-1 gradients wrong here."""
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 12, 8, 8, 1)), jnp.uint8)
  model = CpuConv4(filters=4, num_blocks=2, conv_impl=impl)
  variables = model.init(jax.random.PRNGKey(0), images[0], train=False)

  def loss(params):
    def one(x):
      variables_ = {"params": params, "batch_stats": variables["batch_stats"]}
      y, _ = model.apply(variables_, x, train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(y))

    return jax.vmap(one)(images).sum()

  eager = jax.grad(loss)(variables["params"])
  jitted = jax.jit(jax.grad(loss))(variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3), eager, jitted)


@pytest.mark.parametrize("impl", ["xla", "im2col", "winograd"])
def test_make_model_honours_every_config_model_field(impl):
  from configs import common
  from fsl_jax.models import Conv4, make_model

  config = common.get_base_config().model
  config.filters, config.conv_impl, config.num_blocks, config.downsample = 5, impl, 2, "stride"
  config.pixel_mean, config.pixel_std = (0.5,), (0.25,)
  model = make_model(config, num_outputs=3)
  # "xla" is the reference model; the CPU formulations are CpuConv4.
  assert isinstance(model, Conv4 if impl == "xla" else CpuConv4)
  assert getattr(model, "conv_impl", "xla") == impl
  assert (model.filters, model.num_blocks, model.downsample) == (5, 2, "stride")
  assert (tuple(model.pixel_mean), tuple(model.pixel_std), model.num_outputs) == (
    (0.5,),
    (0.25,),
    3,
  )


@pytest.mark.parametrize("store_index", [False, True])
def test_max_pool_matches_a_gather_at_the_first_argmax_including_ties_and_second_order(
  store_index,
):
  def gather_pool(x):  # The straightforward definition: gather each window at its argmax.
    b, h, w, c = x.shape
    win = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    win = win.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)
    index = jnp.argmax(win, axis=-1, keepdims=True)
    return jnp.take_along_axis(win, index, axis=-1)[..., 0]

  pool_2x2 = lambda x: max_pool_2x2(x, store_index)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 6, 5))
  x = x.at[0, 0, 0, :].set(x[0, 1, 1, :]).at[1, 2, 2, :].set(0.0).at[1, 3, 3, :].set(0.0)  # Ties.
  for pool in (pool_2x2, gather_pool):
    assert pool(x).shape == (3, 3, 3, 5)
  np.testing.assert_array_equal(pool_2x2(x), gather_pool(x))
  first = lambda p: jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(3.0 * p(x)))))
  np.testing.assert_array_equal(first(pool_2x2)(x), first(gather_pool)(x))

  def second(p):  # d/dx of |d/dy sum(sin(p(y) * y'))|^2, as second-order MAML needs.
    inner = lambda y: jnp.sum(jnp.sin(p(y) * y[:, :3, :3]))
    return jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(inner)(x) ** 2)))

  np.testing.assert_allclose(second(pool_2x2)(x), second(gather_pool)(x), rtol=1e-5, atol=1e-6)


def _window_comparisons_in_backward_fusions(hlo: str) -> int:
  """Per-pixel ``>=`` comparisons (the pool's argmax tournament) in the backward pass's fusions."""
  bodies = {}
  for computation in re.split(r"\n(?=\S)", hlo):
    name = re.match(r"%(\S+) ", computation)
    if name:
      bodies[name.group(1)] = computation
  entry = hlo[hlo.index("\nENTRY") :]
  count = 0
  for fusion in re.finditer(r" fusion\(.*?calls=%([\w.\-]+).*?op_name=\"([^\"]*)\"", entry):
    if "transpose(" in fusion.group(2):
      body = bodies[fusion.group(1)]
      count += len(re.findall(r"= pred\[\d+(?:,\d+){3,}\]\S* compare\(.*direction=GE", body))
  return count


@pytest.mark.slow
def test_backward_pass_reads_the_stored_argmax_instead_of_recomputing_it():
  """The pool's argmax is computed once, in the forward pass. Were XLA free to fuse its
  tournament into the backward consumers, each of Winograd's 16 backward transforms
  would redo it (71 comparisons in matching_omniglot_5w1s's train step before the fix)."""
  images = jnp.zeros((41, 28, 28, 1), jnp.uint8)
  assert winograd_pays((41, 14, 14, 64), stride=1)  # Layer 2: 41 * 7 * 7 tiles.
  model = CpuConv4(conv_impl="winograd")
  variables = model.init(jax.random.PRNGKey(0), images, train=True)

  def loss(params):
    out, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      images,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.sum(out**2)

  hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
  assert _window_comparisons_in_backward_fusions(hlo) == 0


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["im2col"])  # "xla" shares every cast; it costs 12 s more.
def test_bfloat16_compute_keeps_float32_params_and_outputs_and_matches_float32(impl):
  images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (6, 28, 28, 1)), jnp.uint8)
  models = {
    d: CpuConv4(filters=16, conv_impl=impl, compute_dtype=d) for d in ("float32", "bfloat16")
  }
  variables = models["float32"].init(jax.random.PRNGKey(0), images, train=False)

  def loss(params, dtype):
    y, _ = models[dtype].apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      images,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.mean(y**2), y

  outs = {
    d: jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(variables["params"], d)
    for d in models
  }
  (_, y16), g16 = outs["bfloat16"]
  (_, y32), g32 = outs["float32"]
  assert y16.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g16))
  # bfloat16 keeps 8 bits of mantissa: relative error of a few 1e-3 per op.
  np.testing.assert_allclose(y16, y32, rtol=0.05, atol=0.05)
  # Rounding can move a max-pool's argmax, so gradients agree in direction, not to 1e-3.
  for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), strict=True):
    a, b = np.ravel(a), np.ravel(b)
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.95  # Measured: >= 0.967.
  # The convolutions really run in bfloat16.
  text = jax.jit(lambda p: loss(p, "bfloat16")[0]).lower(variables["params"]).as_text()
  op = "convolution" if impl == "xla" else "dot_general"
  assert any(op in line and "bf16" in line for line in text.splitlines())


def test_unknown_compute_dtype_is_an_error():
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    CpuConv4(compute_dtype="float16").init(
      jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1), jnp.uint8), train=False
    )


@pytest.mark.parametrize("key, value", [("downsample", "avg_pool"), ("compute_dtype", "float16")])
def test_make_model_names_the_config_key_of_an_unknown_value(key, value):
  from configs import common
  from fsl_jax.errors import ConfigError
  from fsl_jax.models import make_model

  config = common.get_base_config().model
  config[key] = value
  with pytest.raises(ConfigError, match=f"config.model.{key} must be one of .*{value}"):
    make_model(config)
