"""BatchNormRelu against flax's BatchNorm, ReLU and max-pool applied in order."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models.cpu.batch_norm_relu import BatchNormRelu
from fsl_jax.models.cpu.max_pool import max_pool_2x2


class Reference(nn.Module):
  """The textbook block: normalise, rectify, then pool."""

  pool: bool = True

  @nn.compact
  def __call__(self, y, use_running_average):
    bn = nn.BatchNorm(use_running_average, momentum=0.9, epsilon=1e-5, name="bn")
    out = nn.relu(bn(y))
    return max_pool_2x2(out) if self.pool else out


class Fused(nn.Module):
  pool: bool = True

  @nn.compact
  def __call__(self, y, use_running_average):
    block = BatchNormRelu(max_pool=self.pool, momentum=0.9, epsilon=1e-5, name="bn")
    return block(y, use_running_average)


def _variables(rng, channels):
  """Scales of both signs, nonzero biases, running stats away from their init."""
  scale = rng.normal(size=channels)
  scale[0], scale[1] = -abs(scale[0]), abs(scale[1])
  bias = rng.normal(size=channels)
  bias[0] = 0.5  # With its negative scale, channel 0 stays partly above 0.
  return {
    "params": {"bn": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}},
    "batch_stats": {
      "bn": {
        "mean": jnp.asarray(rng.normal(size=channels)),
        "var": jnp.asarray(rng.uniform(0.5, 2.0, size=channels)),
      }
    },
  }


def test_variables_are_flax_batch_norms():
  y = jnp.zeros((2, 4, 4, 3))
  ref = Reference().init(jax.random.PRNGKey(0), y, False)
  fused = Fused().init(jax.random.PRNGKey(0), y, False)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ref) == jax.tree.map(
    lambda a: (a.shape, a.dtype), fused
  )
  jax.tree.map(np.testing.assert_array_equal, ref, fused)


@pytest.mark.parametrize("side,pool", [((6, 6), True), ((7, 5), True), ((5, 5), False)])
def test_values_running_averages_and_gradients_match_the_reference(side, pool):
  rng = np.random.default_rng(0)
  with jax.enable_x64():
    y = jnp.asarray(rng.normal(size=(3, *side, 6)) * 2.0 + 0.5)
    variables = _variables(rng, 6)
    for train in (True, False):

      def run(module, params, y, train=train):
        out = module.apply(
          {"params": params, "batch_stats": variables["batch_stats"]},
          y,
          not train,
          mutable=["batch_stats"],
        )
        return out

      modules = (Reference(pool), Fused(pool))
      (want, want_stats), (got, got_stats) = (run(m, variables["params"], y) for m in modules)
      assert got.shape == want.shape == ((3, side[0] // 2, side[1] // 2, 6) if pool else y.shape)
      # Some outputs must be rectified to 0 and some not, so both ReLU branches are checked.
      assert 0 < int(jnp.sum(want == 0)) < want.size
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), got_stats, want_stats)

      loss = lambda m: lambda p, y: jnp.sum(jnp.sin(3.0 * run(m, p, y)[0]))
      want_grad = jax.jit(jax.grad(loss(modules[0]), (0, 1)))(variables["params"], y)
      got_grad = jax.jit(jax.grad(loss(modules[1]), (0, 1)))(variables["params"], y)
      jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got_grad, want_grad
      )
      # Gradients reach scale and bias of the channels with negative scales too.
      assert float(jnp.abs(got_grad[0]["bn"]["scale"][0])) > 1e-3


@pytest.mark.parametrize("pool", [True, False])
def test_second_order_under_vmap_matches_the_reference(pool):
  """A gradient step on per-task params, differentiated through (second-order MAML)."""
  rng = np.random.default_rng(1)
  with jax.enable_x64():
    y = jnp.asarray(rng.normal(size=(2, 3, 6, 6, 4)))  # [tasks, B, H, W, C]
    params = jax.tree.map(lambda a: jnp.stack([a, -a]), _variables(rng, 4)["params"])

    def meta(module):
      def task_loss(p, y):
        out = module.apply(
          {"params": p, "batch_stats": _zeros(4)}, y, False, mutable=["batch_stats"]
        )
        return jnp.sum(jnp.sin(2.0 * out[0]) * y[:, : out[0].shape[1], : out[0].shape[2]])

      def outer(p, y):
        g, gy = jax.grad(task_loss, (0, 1))(p, y)
        stepped = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
        return task_loss(stepped, y - 0.1 * gy)

      return jax.jit(jax.grad(lambda p, y: jnp.sum(jax.vmap(outer)(p, y)), (0, 1)))

    want, got = meta(Reference(pool))(params, y), meta(Fused(pool))(params, y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11), got, want)


def _zeros(channels):
  return {"bn": {"mean": jnp.zeros(channels), "var": jnp.ones(channels)}}


def test_bfloat16_output_is_float32_moments_rounded_once():
  rng = np.random.default_rng(2)
  y = jnp.asarray(rng.normal(size=(4, 8, 8, 5)), jnp.bfloat16)
  variables = jax.tree.map(lambda a: a.astype(jnp.float32), _variables(rng, 5))
  block = BatchNormRelu(max_pool=True, dtype=jnp.bfloat16)
  out, _ = block.apply(
    {"params": variables["params"]["bn"], "batch_stats": variables["batch_stats"]["bn"]},
    y,
    False,
    mutable=["batch_stats"],
  )
  want, _ = Reference().apply(variables, y.astype(jnp.float32), False, mutable=["batch_stats"])
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=1e-2, atol=1e-2)


def test_at_scale_zero_the_scale_gradient_is_the_right_hand_derivative():
  """At scale 0 the block is constant in y and not differentiable in scale: every
  window ties. The fused block takes sign +1 there, so it returns the derivative
  from the right, which a one-sided finite difference confirms."""
  rng = np.random.default_rng(3)
  with jax.enable_x64():
    y = jnp.asarray(rng.normal(size=(3, 6, 6, 2)))
    variables = _variables(rng, 2)
    variables["params"]["bn"]["scale"] = jnp.array([0.0, 1.0])
    variables["params"]["bn"]["bias"] = jnp.array([0.3, 0.2])  # ReLU active at scale 0.

    def loss(scale0):
      params = {"bn": {"scale": jnp.array([scale0, 1.0]), "bias": jnp.array([0.3, 0.2])}}
      out = Fused().apply({"params": params, "batch_stats": variables["batch_stats"]}, y, True)
      return jnp.sum(jnp.sin(3.0 * out))

    h = 1e-7
    right = (loss(h) - loss(0.0)) / h
    left = (loss(0.0) - loss(-h)) / h
    assert abs(right - left) > 1e-2  # A real kink, so the check below can fail.
    np.testing.assert_allclose(jax.grad(loss)(0.0), right, rtol=1e-5)


def _per_channel_ops_in_per_pixel_fusions(hlo: str, tasks: int, channels: int) -> int:
  """The most [tasks, C]-shaped operations in any fused loop that also has per-pixel ones."""
  worst = 0
  for computation in re.split(r"\n(?=\S)", hlo):
    lines = computation.splitlines()
    if not lines or "fused_computation" not in lines[0]:
      continue
    sizes = [
      math.prod(map(int, filter(None, d.split(","))))
      for d in re.findall(r"f32\[([\d,]*)\]", computation)
    ]
    if max(sizes, default=0) < 64 * tasks * channels:
      continue
    per_channel = [
      ln
      for ln in lines
      if re.search(rf"= f32\[{tasks},{channels}\]", ln) and "parameter(" not in ln
    ]
    worst = max(worst, len(per_channel))
  return worst


@pytest.mark.parametrize("materialised", [True, False])
def test_per_channel_arithmetic_stays_out_of_per_pixel_loops_at_second_order(
  monkeypatch, materialised
):
  """Three differentiated inner steps through the block (as second-order MAML): XLA's
  per-pixel fusions hold at most a few per-channel operations. Without
  ``_per_channel`` they hold about 200, re-evaluated for every pixel."""
  from fsl_jax.models.cpu import batch_norm_relu

  if not materialised:
    monkeypatch.setattr(batch_norm_relu, "_per_channel", lambda *vectors: vectors)
  tasks, channels = 2, 4
  block = BatchNormRelu(max_pool=True)
  y = jnp.asarray(np.random.default_rng(0).normal(size=(tasks, 3, 8, 8, channels)), jnp.float32)
  variables = block.init(jax.random.PRNGKey(0), y[0], False)
  params = jax.tree.map(lambda a: jnp.stack([a] * tasks), variables["params"])

  def task_loss(p, y):
    out, _ = block.apply(
      {"params": p, "batch_stats": variables["batch_stats"]}, y, False, mutable=["batch_stats"]
    )
    return jnp.sum(jnp.sin(out))

  def outer(p, y):
    for _ in range(3):
      g, gy = jax.grad(task_loss, (0, 1))(p, y)
      p, y = jax.tree.map(lambda a, b: a - 0.1 * b, p, g), y - 0.1 * gy
    return task_loss(p, y)

  step = jax.jit(jax.grad(lambda p, y: jnp.sum(jax.vmap(outer)(p, y)), (0, 1)))
  worst = _per_channel_ops_in_per_pixel_fusions(
    step.lower(params, y).compile().as_text(), tasks, channels
  )
  if materialised:
    assert worst <= 30, worst
  else:  # The check above can fail: this is what it guards against.
    assert worst > 100, worst
