"""Reptile: pseudo-gradients proven against joint training and an independent inner loop."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fixtures_omniglot import on_small_split
from test_train_end_to_end import compiled_once, run_recording_steps

from configs import common, reptile_omniglot5w1s
from fsl_jax.algorithms import make_algorithm, reptile
from fsl_jax.data.episodes import Episode
from fsl_jax.errors import ConfigError
from fsl_jax.models import make_model
from fsl_jax.state import TrainState
from fsl_jax.steps import make_train_step

N_WAY, K_SHOT, N_QUERY = 3, 2, 2
SUPPORT_SIZE = N_WAY * K_SHOT


def tiny_model_config():
  model = common.get_base_config().model
  model.filters, model.num_blocks = 4, 2
  return model


MODEL = make_model(tiny_model_config(), num_outputs=N_WAY, per_task_weights=True)


def make_episode(seed: int) -> Episode:
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
  return Episode(
    support=images(SUPPORT_SIZE),
    support_labels=np.repeat(np.arange(N_WAY, dtype=np.int32), K_SHOT),
    query=images(N_WAY * N_QUERY),
    query_labels=np.repeat(np.arange(N_WAY, dtype=np.int32), N_QUERY),
  )


@functools.cache
def initial_variables():
  """float32 params and batch statistics, from one compiled init (op by op takes seconds)."""
  init = jax.jit(MODEL.init, static_argnames="train")
  variables = init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1), jnp.uint8), train=False)
  return jax.device_get(variables)  # numpy: castable to float64 inside enable_x64.


def init(dtype):
  variables = initial_variables()
  cast = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)
  return cast(variables["params"]), cast(variables["batch_stats"])


@functools.cache
def jitted_pseudo_gradient(settings: reptile.ReptileSettings):
  """jax.grad of the training loss in theta, compiled once per settings (and dtype)."""

  def loss(params, batch_stats, episode, rng):
    value, _ = reptile.episode_loss(
      MODEL, params, batch_stats, episode, rng, settings=settings, train=True
    )
    return value

  return jax.jit(jax.grad(loss))


def pseudo_gradient(settings, params, stats, episode, rng):
  return jitted_pseudo_gradient(settings)(params, stats, episode, rng)


def batch_loss(params, stats, images, labels):
  variables = {"params": params, "batch_stats": stats}
  logits = MODEL.apply(variables, images, train=True, mutable=["batch_stats"])[0]
  return reptile.cross_entropy(logits, labels)


batch_grad = jax.jit(jax.grad(batch_loss))


def python_inner_loop(settings, params, stats, episode, indices):
  """An independent inner loop: explicit SGD or Adam (beta1 = 0) steps in numpy, no scan or optax.

  Only the minibatch gradients come from JAX (``batch_grad``); call it under enable_x64.
  """
  phi = jax.device_get(params)
  second_moment = jax.tree.map(np.zeros_like, phi)
  beta2, eps = 0.999, 1e-8
  for t, batch in enumerate(np.asarray(indices), start=1):
    g = jax.device_get(
      batch_grad(phi, stats, episode.support[batch], episode.support_labels[batch])
    )
    if settings.inner_optimizer == "sgd":
      step = jax.tree.map(lambda x: settings.inner_lr * x, g)
    else:  # Adam, beta1 = 0: the first moment is the gradient itself.
      second_moment = jax.tree.map(lambda v, x: beta2 * v + (1 - beta2) * x**2, second_moment, g)
      step = jax.tree.map(
        lambda x, v, t=t: settings.inner_lr * x / (np.sqrt(v / (1 - beta2**t)) + eps),
        g,
        second_moment,
      )
    phi = jax.tree.map(lambda p, s: p - s, phi, step)
  return phi


def settings_for(inner_optimizer: str) -> reptile.ReptileSettings:
  """k = 5 minibatches of 4 from the 6 support images: minibatches straddle passes."""
  return reptile.ReptileSettings(
    inner_lr=0.1 if inner_optimizer == "sgd" else 0.01,
    inner_steps=5,
    inner_batch_size=4,
    inner_optimizer=inner_optimizer,
  )


def assert_trees_close(a, b, rtol, atol=0.0):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_one_sgd_step_on_the_support_set_is_joint_training():
  """k = 1 plain SGD on the whole support set: theta - phi = alpha * grad L_support(theta)."""
  settings = reptile.ReptileSettings(
    inner_lr=0.3, inner_steps=1, inner_batch_size=SUPPORT_SIZE, inner_optimizer="sgd"
  )
  episode = make_episode(0)
  with jax.enable_x64(True):
    params, stats = init(jnp.float64)
    got = pseudo_gradient(settings, params, stats, episode, jax.random.PRNGKey(1))
    support = batch_grad(params, stats, episode.support, episode.support_labels)
    expected = jax.tree.map(lambda g: 0.3 * g, support)
  assert_trees_close(got, expected, rtol=1e-10, atol=1e-15)
  assert max(np.abs(x).max() for x in jax.tree.leaves(got)) > 1e-4  # Not trivially 0.


@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
def test_k_steps_match_an_independent_python_loop(inner_optimizer):
  """k = 5 minibatches of 4 from 6 images (passes straddle minibatches): g = theta - phi_k."""
  settings = settings_for(inner_optimizer)
  episode, rng = make_episode(1), jax.random.PRNGKey(2)
  with jax.enable_x64(True):
    params, stats = init(jnp.float64)
    got = pseudo_gradient(settings, params, stats, episode, rng)
    indices = reptile.minibatch_indices(rng, SUPPORT_SIZE, 4, 5)
    phi = python_inner_loop(settings, params, stats, episode, indices)
    expected = jax.tree.map(lambda t, p: t - p, params, phi)
  assert_trees_close(got, expected, rtol=1e-9, atol=1e-13)


def test_minibatches_use_every_support_image_once_per_pass():
  indices = np.asarray(reptile.minibatch_indices(jax.random.PRNGKey(0), 6, 4, 9))  # 6 passes.
  assert indices.shape == (9, 4) and indices.dtype == np.int32
  passes = indices.reshape(6, 6)
  for one_pass in passes:
    np.testing.assert_array_equal(np.sort(one_pass), np.arange(6))
  assert len({tuple(p) for p in passes}) > 1  # A fresh permutation each pass.
  # The last pass may be cut short: 7 minibatches of 4 are 4 passes and 4 images.
  partial = np.asarray(reptile.minibatch_indices(jax.random.PRNGKey(0), 6, 4, 7)).reshape(-1)
  assert len(set(partial[24:])) == 4
  # A function of the rng alone.
  again = reptile.minibatch_indices(jax.random.PRNGKey(0), 6, 4, 9)
  np.testing.assert_array_equal(indices, again)
  other = reptile.minibatch_indices(jax.random.PRNGKey(1), 6, 4, 9)
  assert not np.array_equal(indices, other)
  assert reptile.minibatch_indices(jax.random.PRNGKey(0), 6, 4, 0).shape == (0, 4)


def test_the_inner_loop_sees_no_query_images_and_depends_on_the_rng():
  settings = settings_for("adam")  # The k-steps test compiled it already.
  episode = make_episode(3)
  other_query = episode._replace(query=make_episode(4).query)
  rng = jax.random.PRNGKey(5)
  with jax.enable_x64(True):
    params, stats = init(jnp.float64)
    base = pseudo_gradient(settings, params, stats, episode, rng)
    same_support = pseudo_gradient(settings, params, stats, other_query, rng)
    again = pseudo_gradient(settings, params, stats, episode, rng)
    differs = pseudo_gradient(settings, params, stats, episode, jax.random.PRNGKey(6))
  assert_trees_close(base, same_support, rtol=0)
  assert_trees_close(base, again, rtol=0)
  leaves = zip(jax.tree.leaves(base), jax.tree.leaves(differs), strict=True)
  assert any(not np.array_equal(a, b) for a, b in leaves)


def test_eval_returns_the_adapted_query_loss_and_predictions():
  settings = reptile.ReptileSettings(inner_steps=1, test_inner_steps=4, test_inner_batch_size=3)
  episode = make_episode(7)
  params, stats = init(jnp.float32)
  evaluate = jax.jit(functools.partial(reptile.episode_loss, MODEL, settings=settings, train=False))
  loss, (metrics, new_stats) = evaluate(params, stats, episode, jax.random.PRNGKey(0))
  assert metrics["predictions"].shape == (N_WAY * N_QUERY,)
  np.testing.assert_allclose(loss, metrics["loss"])
  right = np.asarray(metrics["predictions"]) == np.asarray(episode.query_labels)
  assert float(metrics["accuracy"]) == pytest.approx(right.mean())
  assert_trees_close(new_stats, stats, rtol=0)  # Transductive: passed through.


def test_a_train_step_moves_theta_to_the_mean_of_the_adapted_params():
  """steps.py's vmap mean, unchanged, with meta-SGD at rate 1: theta <- mean_t phi_t."""
  settings = settings_for("adam")
  episodes = [make_episode(10 + i) for i in range(2)]
  batch = Episode(*(np.stack(parts) for parts in zip(*episodes, strict=True)))

  def loss_fn(params, batch_stats, episode, rng, *, n_way, train, step):
    return reptile.episode_loss(
      MODEL, params, batch_stats, episode, rng, settings=settings, train=train
    )

  tx = optax.sgd(1.0)
  with jax.enable_x64(True):
    params, stats = init(jnp.float64)
    state = TrainState(
      jnp.zeros((), jnp.int32), params, stats, tx.init(params), jax.random.PRNGKey(3)
    )
    rngs = jax.random.split(jax.random.fold_in(state.rng, state.step), 2)  # As the train step.
    phis = [
      python_inner_loop(
        settings, params, stats, e, reptile.minibatch_indices(r, SUPPORT_SIZE, 4, 5)
      )
      for e, r in zip(episodes, rngs, strict=True)
    ]
    expected = jax.tree.map(lambda a, b: (a + b) / 2, *phis)
    new_state, metrics = make_train_step(loss_fn, tx, N_WAY)(state, batch)
  assert_trees_close(new_state.params, expected, rtol=1e-9, atol=1e-13)
  assert {"loss", "accuracy", "grad_norm"} <= set(metrics)


def test_impossible_settings_are_config_errors():
  config = reptile_omniglot5w1s.get_config()
  config.reptile.inner_batch_size = 51  # 5-way 10-shot: 50 support images.
  with pytest.raises(ConfigError, match=r"config\.reptile\.inner_batch_size = 51 .* at most 50"):
    make_algorithm(config)
  config = reptile_omniglot5w1s.get_config()
  config.reptile.test_inner_batch_size = 6  # 5-way 1-shot: 5 support images.
  with pytest.raises(ConfigError, match=r"config\.reptile\.test_inner_batch_size .* at most 5"):
    make_algorithm(config)
  config = reptile_omniglot5w1s.get_config()
  config.reptile.inner_optimizer = "momentum"
  with pytest.raises(ConfigError, match=r"config\.reptile\.inner_optimizer"):
    make_algorithm(config)
  config = reptile_omniglot5w1s.get_config()
  config.eval.n_way = 20
  with pytest.raises(ConfigError, match=r"config\.eval\.n_way must be the same"):
    make_algorithm(config)
  # Episodes of other shapes than the config's (e.g. --mode=evaluate) are checked on tracing.
  settings = reptile.ReptileSettings(test_inner_batch_size=SUPPORT_SIZE + 1)
  params, stats = init(jnp.float32)
  with pytest.raises(ConfigError, match=r"config\.reptile\.test_inner_batch_size"):
    reptile.episode_loss(
      MODEL, params, stats, make_episode(0), jax.random.PRNGKey(0), settings=settings, train=False
    )


def test_reptile_configs_follow_nichol():
  config = reptile_omniglot5w1s.get_config()
  assert config.algorithm == "reptile" and config.model.downsample == "stride"
  assert (config.train.n_way, config.train.k_shot, config.train.n_query) == (5, 10, 1)
  assert (config.eval.n_way, config.eval.k_shot, config.eval.n_query) == (5, 1, 15)
  assert config.reptile.to_dict() == dict(
    inner_lr=0.001,
    inner_steps=5,
    test_inner_steps=50,
    inner_batch_size=10,
    test_inner_batch_size=5,
    inner_optimizer="adam",
  )
  assert (config.optim.name, config.optim.learning_rate, config.optim.anneal_to_zero) == (
    "sgd",
    1.0,
    True,
  )
  assert config.optim.decay_rate == 1.0 and config.train.meta_batch_size == 5
  mini = common.reptile_mini(5, None)
  assert (mini.model.filters, mini.model.downsample, mini.train.k_shot) == (32, "max_pool", 15)
  assert (mini.reptile.inner_steps, mini.reptile.test_inner_batch_size) == (8, 15)


@pytest.mark.slow
def test_end_to_end_with_one_compile_per_step_function(
  tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  config = on_small_split(
    reptile_omniglot5w1s.get_config("quick"), omniglot_small_data_dir, omniglot_manual_dir
  )
  config.reptile.test_inner_steps = 5  # The compile count, not the adaptation, is tested.
  config.model.filters, config.model.num_blocks = 8, 2
  results, steps = run_recording_steps(config, tmp_path)
  assert compiled_once(steps)
  test = results["test"]
  assert (test["n_way"], test["k_shot"], test["episodes"]) == (5, 1, 20)
  assert results["config"]["reptile"]["test_inner_steps"] == 5
  # Every logged train step had a finite, non-zero pseudo-gradient theta - mean(phi).
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == [2, 4, 6]
  assert all(0 < r["grad_norm"] < float("inf") for r in train_rows)
