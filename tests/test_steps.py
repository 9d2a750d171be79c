"""The shared train step: meta-batch gradients, one compile, donation, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from fsl_jax.algorithms import make_algorithm
from fsl_jax.data.class_images import ClassImages
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.state import create_train_state
from fsl_jax.steps import make_eval_step, make_train_step

N_WAY = 3


def setup(meta_batch_size=4, seed=0):
  rng = np.random.default_rng(0)
  data = ClassImages(
    rng.integers(0, 256, (10, 6, 8, 8, 1), dtype=np.uint8), tuple(map(str, range(10)))
  )
  sampler = EpisodeSampler(data, EpisodeShape(N_WAY, 2, 2), seed=seed)
  config = common.get_base_config()
  config.protonet = {"distance": "euclidean", "cosine_scale": 10.0}
  config.model.filters, config.model.num_blocks = 4, 2
  model, algorithm = make_algorithm(config)
  loss_fn = algorithm.loss
  tx = optax.sgd(0.1)
  episodes = sampler.episodes(0, meta_batch_size)
  state = create_train_state(model, tx, jnp.asarray(episodes.support[0]), seed=0)
  return sampler, loss_fn, tx, state, episodes


@pytest.mark.slow
def test_meta_batch_gradient_is_the_mean_of_per_episode_gradients():
  _, loss_fn, tx, state, episodes = setup()
  step = make_train_step(loss_fn, tx, N_WAY)
  new_state, _ = step(jax.tree.map(jnp.copy, state), episodes)
  # With SGD(0.1), the update is -0.1 * grad: recover the grad the step used.
  used_grads = jax.tree.map(lambda new, old: (old - new) / 0.1, new_state.params, state.params)
  per_episode = [
    jax.grad(
      lambda p, e=e: loss_fn(p, state.batch_stats, e, None, n_way=N_WAY, train=True, step=0)[0]
    )(state.params)
    for e in (jax.tree.map(lambda x, i=i: x[i], episodes) for i in range(4))
  ]
  mean_grads = jax.tree.map(lambda *g: sum(g) / len(g), *per_episode)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4), used_grads, mean_grads
  )


def test_train_step_compiles_once_donates_state_and_is_deterministic():
  sampler, loss_fn, tx, state, _ = setup()
  step = make_train_step(loss_fn, tx, N_WAY)
  runs = []
  for _ in range(2):
    current = jax.tree.map(jnp.copy, state)
    for i in range(4):
      previous = current
      current, metrics = step(current, sampler.episodes(4 * i, 4))
      assert jax.tree.leaves(previous.params)[0].is_deleted()  # Donated.
    runs.append(current)
  assert step._cache_size() == 1
  assert int(runs[0].step) == 4
  jax.tree.map(np.testing.assert_array_equal, runs[0].params, runs[1].params)
  assert set(metrics) == {"loss", "accuracy", "grad_norm", "first_bad_step"}


def test_eval_step_returns_one_value_per_episode_and_compiles_once():
  sampler, loss_fn, _, state, _ = setup()
  step = make_eval_step(loss_fn, N_WAY)
  for start in (0, 5):
    episodes = sampler.episodes(start, 5)
    metrics = step(state, episodes)
    assert metrics["accuracy"].shape == (5,)
    # Each episode's accuracy is the share of its queries predicted right.
    right = np.asarray(metrics["predictions"]) == np.asarray(episodes.query_labels)
    np.testing.assert_allclose(metrics["accuracy"], right.mean(axis=1), rtol=1e-6)
  assert step._cache_size() == 1
