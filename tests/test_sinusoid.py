"""The sinusoid teaching example: shapes, adaptation helps after short training, the plot.

And with --meta_gradient=implicit or reptile: iMAML or Reptile beside MAML and the baseline.
"""

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


@pytest.mark.slow
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


# --meta_gradient=implicit and reptile: a third learner beside MAML and the baseline.
SHORT_STEPS = 1000  # Enough for both to adapt clearly better than the baseline.


@pytest.fixture(scope="module")
def short_baseline():
  """The keys of ``run`` for seed 0, and the test MSE of the baseline after SHORT_STEPS."""
  rng_maml, rng_pre, rng_test, _ = jax.random.split(jax.random.PRNGKey(0), 4)
  rng_valid = jax.random.fold_in(jax.random.PRNGKey(0), 2)
  params, _ = sinusoid.train(sinusoid.pretrain_loss, rng_pre, SHORT_STEPS)
  return rng_maml, rng_valid, rng_test, sinusoid.test_mse_by_steps(params, rng_test)


# Over seeds 0-5, SHORT_STEPS meta-steps gave a test MSE after 1 and after 10 steps of
# 0.40-0.59 and 0.19-0.41 times the baseline's for Reptile (seed 0: 0.52 and 0.41),
# 0.56-0.93 and 0.36-0.78 for iMAML (seed 0: 0.66 and 0.51); and after 10 steps 0.18-0.40
# (Reptile) and 0.42-0.72 (iMAML) times their own before adapting. So iMAML's margin is
# after 10 steps alone.
@pytest.mark.parametrize(
  ("meta_gradient", "margins"),
  [("implicit", {10: 0.85}), ("reptile", {1: 0.75, 10: 0.6})],
  ids=["implicit", "reptile"],
)
def test_third_method_adapts_better_than_the_baseline(short_baseline, meta_gradient, margins):
  rng_maml, rng_valid, rng_test, pretrained = short_baseline
  _, params = sinusoid.train_third(meta_gradient, rng_maml, SHORT_STEPS, rng_valid)  # As run.
  third = sinusoid.test_mse_by_steps(params, rng_test)  # The baseline's test waves.
  assert np.isfinite(third).all()
  for steps, margin in margins.items():
    assert third[steps] < margin * pretrained[steps], steps
  assert third[-1] < 0.8 * third[0]  # Adaptation helps, and not only relative to the baseline.


@pytest.mark.parametrize(
  ("meta_gradient", "label"), [("implicit", "iMAML"), ("reptile", "Reptile")]
)
def test_three_methods_side_by_side(tmp_path, meta_gradient, label):
  # 0 steps: the initial weights. This checks what run returns, prints and draws, not training.
  result = sinusoid.run(num_steps=0, out=str(tmp_path), meta_gradient=meta_gradient)
  name = sinusoid.THIRD_METHODS[meta_gradient]
  assert result["methods"] == ["maml", "pretrained", name]
  assert result[f"{name}_mse"].shape == (sinusoid.TEST_INNER_STEPS + 1,)
  # MAML's initial weights: the same key, and no step taken.
  np.testing.assert_array_equal(result[f"{name}_mse"], result["maml_mse"])
  header, *rows = sinusoid.comparison_table(result).splitlines()
  assert header.split()[-3:] == ["MAML", "pretrained", label]
  assert [row.split()[:3] for row in rows] == [
    ["after", "0", "steps"],
    ["after", "1", "step"],
    ["after", "10", "steps"],
  ]
  for row, steps in zip(rows, (0, 1, sinusoid.TEST_INNER_STEPS), strict=True):
    expected = [result[f"{method}_mse"][steps] for method in result["methods"]]
    np.testing.assert_allclose([float(v) for v in row.split()[3:]], expected, atol=5e-4)
  assert Image.open(result["plot"]).size == (4 * 560, 400)  # Its fits get a panel too.


def test_validation_keeps_the_best_params():
  rng = jax.random.PRNGKey(3)
  errors = iter([1.0, float("nan"), 2.0])  # After CHUNK, 2 CHUNK and 3 CHUNK steps.
  best, losses = sinusoid.train(
    sinusoid.pretrain_loss, rng, 3 * sinusoid.CHUNK, validate=lambda _: next(errors)
  )
  assert losses.shape == (3 * sinusoid.CHUNK,)
  after_one_chunk, _ = sinusoid.train(sinusoid.pretrain_loss, rng, sinusoid.CHUNK)
  jax.tree.map(np.testing.assert_array_equal, best, after_one_chunk)
