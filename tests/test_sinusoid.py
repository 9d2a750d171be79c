"""The sinusoid teaching example: shapes, adaptation helps after short training, the plot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from PIL import Image

from fsl_jax.examples import sinusoid


def test_tasks_and_network_shapes():
  amplitude, phase = sinusoid.sample_tasks(jax.random.PRNGKey(0), 7)
  assert amplitude.shape == phase.shape == (7,)
  assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0
  assert phase.min() >= 0.0 and phase.max() <= np.pi
  x, y = sinusoid.sample_points(jax.random.PRNGKey(1), amplitude, phase, 10)
  assert x.shape == y.shape == (7, 10, 1)
  expected = amplitude[:, None, None] * np.sin(x - phase[:, None, None])
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  params = sinusoid.init_params(jax.random.PRNGKey(2))
  assert [p["w"].shape for p in params] == [(1, 40), (40, 40), (40, 1)]
  assert sinusoid.predict(params, x[0]).shape == (10, 1)


def test_inner_step_is_one_gradient_step():
  params = sinusoid.init_params(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (10, 1), minval=-5, maxval=5)
  y = 2.0 * np.sin(x)
  adapted = sinusoid.inner_adapt(params, x, y, 1)
  grads = jax.grad(sinusoid.mse)(params, x, y)
  expected = jax.tree.map(lambda p, g: p - sinusoid.INNER_LR * g, params, grads)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), adapted, expected
  )


def test_short_training_adapts_and_plots(tmp_path):
  # 2000 steps are a few seconds: compiling dominates this test (about 15 s in all).
  result = sinusoid.run(num_steps=2000, out=str(tmp_path))
  maml, pretrained = result["maml_mse"], result["pretrained_mse"]
  assert maml.shape == pretrained.shape == (sinusoid.TEST_INNER_STEPS + 1,)
  assert result["maml_train_losses"].shape == (2000,)
  # Already after 2000 meta-steps, one inner step lowers the test error a lot,
  # more than it does for the pretrained network.
  assert maml[1] < 0.7 * maml[0]
  assert maml[-1] < maml[1]
  assert maml[1] < pretrained[1] and np.isfinite(pretrained).all()
  image = Image.open(result["plot"])
  assert image.size == (3 * 560, 400)
  assert result["plot"] == str(tmp_path / "sinusoid.png")
  assert result["meta_gradient"]["max_rel_diff"] < 1e-4  # At the trained params too.


def test_zero_steps_is_the_initialisation():
  params, losses = sinusoid.train(sinusoid.pretrain_loss, jax.random.PRNGKey(3), 0)
  assert losses.shape == (0,)
  assert len(params) == 3


def test_meta_gradient_three_ways_agree_and_reject_first_order_maml():
  params = sinusoid.init_params(jax.random.PRNGKey(0))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  rng = jax.random.PRNGKey(1)
  result = sinusoid.meta_gradient_three_ways(params, rng, num_directions=3)
  assert result["reverse"].shape == result["forward"].shape == result["linearize"].shape == (3,)
  # Float32 rounding leaves differences of about 1e-7 relative. atol only matters along a
  # direction where grad L . v happens to be near 0; typically it is |grad L| / sqrt(1761).
  atol = 1e-6 * result["grad_norm"]
  np.testing.assert_allclose(result["forward"], result["reverse"], rtol=1e-4, atol=atol)
  np.testing.assert_allclose(result["linearize"], result["reverse"], rtol=1e-4, atol=atol)
  assert result["max_rel_diff"] < 1e-4

  # The same check rejects first-order MAML: the same loss, but stop_gradient on the
  # inner gradients drops the -alpha H_s v term of the tangent through the inner step.
  # Were jvp to miss the second-order path, "forward" would match this instead.
  def first_order_loss(params, x_support, y_support, x_query, y_query):
    def one_task(xs, ys, xq, yq):
      grads = jax.lax.stop_gradient(jax.grad(sinusoid.mse)(params, xs, ys))
      adapted = jax.tree.map(lambda p, g: p - sinusoid.INNER_LR * g, params, grads)
      return sinusoid.mse(adapted, xq, yq)

    return jnp.mean(jax.vmap(one_task)(x_support, y_support, x_query, y_query))

  rng_batch, rng_directions = jax.random.split(rng)  # As in meta_gradient_three_ways.
  batch = sinusoid.sample_meta_batch(rng_batch)
  directions = sinusoid.random_directions(rng_directions, params, 3)
  value, grads = jax.jit(jax.value_and_grad(first_order_loss))(params, *batch)
  first_order_along_v = directions @ ravel_pytree(grads)[0]
  np.testing.assert_allclose(value, result["loss"], rtol=1e-5)
  with pytest.raises(AssertionError):
    np.testing.assert_allclose(first_order_along_v, result["forward"], rtol=1e-4, atol=atol)
  relative_error = np.abs(first_order_along_v - result["forward"]) / np.abs(result["forward"])
  assert relative_error.max() > 1e-3  # Well outside the tolerance, not at its edge.
