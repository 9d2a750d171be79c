"""Matching Networks' loss: against a NumPy reference, invariances, finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from configs import common
from fsl_jax.algorithms import make_algorithm, matching
from fsl_jax.data.class_images import ClassImages
from fsl_jax.data.episodes import Episode, EpisodeSampler, EpisodeShape
from fsl_jax.models.cpu.conv4 import CpuConv4
from fsl_jax.models.fce import MatchingEmbedding
from fsl_jax.state import create_train_state
from fsl_jax.steps import make_eval_step, make_train_step


def numpy_matching(support, support_labels, query, query_labels, n_way, distance, scale):
  """Vinyals et al.'s equations as written: attention, weighted one-hot sum, NLL."""
  if distance == "euclidean":
    c = -np.array([[np.sum((q - s) ** 2) for s in support] for q in query])
  else:
    unit = lambda v: v / np.linalg.norm(v)
    c = scale * np.array([[unit(q) @ unit(s) for s in support] for q in query])
  attention = np.exp(c - c.max(1, keepdims=True))
  attention /= attention.sum(1, keepdims=True)  # [Q, S]
  one_hot = np.eye(n_way)[support_labels]  # [S, N]
  p = attention @ one_hot  # [Q, N]
  loss = -np.log(p[np.arange(len(query)), query_labels]).mean()
  return p, loss


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("k_shot", [1, 3])
def test_attention_and_loss_match_numpy(distance, k_shot):
  rng = np.random.default_rng(k_shot)
  n_way, n_query, dim = 4, 2, 6
  support_labels = rng.permutation(np.repeat(np.arange(n_way), k_shot))
  query_labels = np.repeat(np.arange(n_way), n_query)
  support = rng.normal(size=(n_way * k_shot, dim))
  query = rng.normal(size=(n_way * n_query, dim))
  with jax.enable_x64(True):
    log_p = matching.query_log_probs(support, support_labels, query, n_way, distance, 3.0)
    loss = -jnp.mean(log_p[jnp.arange(len(query)), query_labels])
  ref_p, ref_loss = numpy_matching(
    support, support_labels, query, query_labels, n_way, distance, 3.0
  )
  np.testing.assert_allclose(np.exp(log_p), ref_p, rtol=1e-10)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)


def test_log_probs_of_confident_queries_stay_finite():
  # A clamp-free log space: p(true) = 1 - 1e-40 must give loss ~0, not NaN or a clamp.
  logits = jnp.array([[100.0, 0.0, 0.0]])
  log_p = matching.class_log_probs(logits, jnp.array([0, 1, 2]), 3)
  assert np.all(np.isfinite(log_p))
  np.testing.assert_allclose(log_p[0, 0], 0.0, atol=1e-30)
  grads = jax.grad(lambda x: matching.class_log_probs(x, jnp.array([0, 1, 2]), 3)[0, 0])(logits)
  assert np.all(np.isfinite(grads))


def tiny_episode(rng, n_way=3, k_shot=2, n_query=2, side=12, channels=1):
  images = lambda n: rng.integers(0, 256, size=(n, side, side, channels), dtype=np.uint8)
  return Episode(
    support=images(n_way * k_shot),
    support_labels=np.repeat(np.arange(n_way, dtype=np.int32), k_shot),
    query=images(n_way * n_query),
    query_labels=np.repeat(np.arange(n_way, dtype=np.int32), n_query),
  )


def model_and_variables(episode, fce, filters=4):
  model = MatchingEmbedding(CpuConv4(filters=filters, num_blocks=2), fce=fce, unrolling_steps=2)
  images = jnp.concatenate([episode.support, episode.query])
  return model, model.init(jax.random.PRNGKey(0), images, train=False)


def permute_support(episode, order):
  return episode._replace(
    support=episode.support[order], support_labels=episode.support_labels[order]
  )


@pytest.mark.parametrize("train", [True, False])
def test_without_fce_permuting_the_support_set_changes_nothing(train):
  rng = np.random.default_rng(3)
  episode = tiny_episode(rng)
  model, variables = model_and_variables(episode, fce=False)
  loss = lambda e: matching.episode_loss(
    model, variables["params"], variables["batch_stats"], e, n_way=3, train=train
  )[0]
  reference = loss(episode)
  for _ in range(3):
    shuffled = permute_support(episode, rng.permutation(len(episode.support)))
    np.testing.assert_allclose(loss(shuffled), reference, rtol=1e-5)


def test_with_fce_the_support_order_matters_and_reversal_mirrors_the_lstms():
  """FCE reads the support set as a sequence (see fsl_jax/models/fce.py).

  Reversing the support order and swapping the forward and backward LSTMs'
  weights gives the same predictions; a permutation without the swap does not.
  """
  rng = np.random.default_rng(4)
  episode = tiny_episode(rng)
  model, variables = model_and_variables(episode, fce=True)
  params, stats = variables["params"], variables["batch_stats"]
  loss = lambda p, e: matching.episode_loss(model, p, stats, e, n_way=3, train=False)[0]
  reference = loss(params, episode)
  reversed_episode = permute_support(episode, np.arange(len(episode.support))[::-1])
  g = dict(params["g"])
  g["forward_0"], g["backward_0"] = g["backward_0"], g["forward_0"]
  mirrored = {**params, "g": g}
  np.testing.assert_allclose(loss(mirrored, reversed_episode), reference, rtol=1e-5)
  assert abs(float(loss(params, reversed_episode)) - float(reference)) > 1e-4


@pytest.mark.parametrize("fce", [False, True])
def test_episode_loss_gradient_matches_central_finite_differences(fce):
  rng = np.random.default_rng(5)
  episode = tiny_episode(rng, side=8)
  with jax.enable_x64(True):
    model, variables = model_and_variables(episode, fce=fce)
    as64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
    params, stats = as64(variables["params"]), as64(variables["batch_stats"])

    @jax.jit
    def loss(p):
      return matching.episode_loss(model, p, stats, episode, n_way=3, train=True)[0]

    flat, unravel = ravel_pytree(params)
    flat_grads, _ = ravel_pytree(jax.grad(loss)(params))
    names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]
    if fce:  # Check the LSTMs' weights, which are most of the params.
      assert any("'g'" in n for n in names) and any("'f'" in n for n in names)
    eps = 1e-6
    for i in rng.choice(flat.size, size=16, replace=False):
      step = jnp.zeros_like(flat).at[i].set(eps)
      numeric = (loss(unravel(flat + step)) - loss(unravel(flat - step))) / (2 * eps)
      np.testing.assert_allclose(flat_grads[i], numeric, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("n_way,k_shot,n_query", [(5, 1, 3), (3, 4, 2), (20, 1, 1)])
def test_fce_shapes(n_way, k_shot, n_query):
  rng = np.random.default_rng(6)
  episode = tiny_episode(rng, n_way, k_shot, n_query, side=16, channels=3)
  model, variables = model_and_variables(episode, fce=True, filters=3)
  images = jnp.concatenate([episode.support, episode.query])
  embeddings = model.apply(variables, images, train=False, n_support=n_way * k_shot)
  dim = 3 * 4 * 4  # 16 -> 8 -> 4 after two blocks, 3 filters.
  assert embeddings.shape == (n_way * (k_shot + n_query), dim)
  assert variables["params"]["g"]["forward_0"]["w_h"].shape == (dim, 4 * dim)
  assert variables["params"]["f"]["w_hr"].shape == (2 * dim, 4 * dim)
  assert np.all(np.isfinite(embeddings))


def test_fce_stacked_lstm_layers_read_both_directions():
  rng = np.random.default_rng(7)
  episode = tiny_episode(rng)
  model = MatchingEmbedding(CpuConv4(filters=4, num_blocks=2), fce=True, lstm_layers=2)
  images = jnp.concatenate([episode.support, episode.query])
  params = model.init(jax.random.PRNGKey(0), images, train=False)["params"]
  dim = 4 * 3 * 3
  assert params["g"]["forward_1"]["w_x"].shape == (2 * dim, 4 * dim)


@pytest.mark.parametrize("fce", [False, True])
def test_train_and_eval_steps_compile_once(fce):
  rng = np.random.default_rng(0)
  data = ClassImages(
    rng.integers(0, 256, (10, 6, 12, 12, 1), dtype=np.uint8), tuple(map(str, range(10)))
  )
  sampler = EpisodeSampler(data, EpisodeShape(3, 2, 2), seed=0)
  config = common.matching("omniglot", 3, 2, "fce" if fce else None)
  config.model.filters, config.model.num_blocks = 4, 2
  model, algorithm = make_algorithm(config)
  tx = optax.adam(1e-3)
  state = create_train_state(model, tx, jnp.asarray(sampler.episode(0).support), seed=0)
  train_step = make_train_step(algorithm.loss, tx, 3)
  eval_step = make_eval_step(algorithm.loss, 3)
  for i in range(3):
    state, metrics = train_step(state, sampler.episodes(2 * i, 2))
    eval_step(state, sampler.episodes(100 + 2 * i, 2))
  assert np.isfinite(float(metrics["loss"]))
  assert train_step._cache_size() == 1
  assert eval_step._cache_size() == 1


def test_eval_mode_returns_the_predicted_class_of_every_query():
  rng = np.random.default_rng(8)
  episode = tiny_episode(rng)
  model, variables = model_and_variables(episode, fce=False)
  args = (model, variables["params"], variables["batch_stats"], episode)
  _, (metrics, _) = matching.episode_loss(*args, n_way=3, train=False)
  assert metrics["predictions"].shape == (6,)
  np.testing.assert_allclose(
    metrics["accuracy"], np.mean(np.asarray(metrics["predictions"]) == episode.query_labels)
  )
  _, (train_metrics, _) = matching.episode_loss(*args, n_way=3, train=True)
  assert "predictions" not in train_metrics
