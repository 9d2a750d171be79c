"""Prototypical loss: against a NumPy reference, and gradients against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fsl_jax.algorithms import distances, protonet
from fsl_jax.data.episodes import Episode
from fsl_jax.models.cpu.conv4 import CpuConv4


def numpy_protonet(support, support_labels, query, query_labels, n_way, distance, scale):
  """Direct transcription of Snell et al.'s equations, one loop per class."""
  protos = np.stack([support[support_labels == n].mean(0) for n in range(n_way)])
  if distance == "euclidean":
    logits = -np.array([[np.sum((q - p) ** 2) for p in protos] for q in query])
  else:
    unit = lambda v: v / np.linalg.norm(v)
    logits = scale * np.array([[unit(q) @ unit(p) for p in protos] for q in query])
  logits = logits - logits.max(1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  loss = -log_p[np.arange(len(query)), query_labels].mean()
  accuracy = (logits.argmax(1) == query_labels).mean()
  return loss, accuracy


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_query_log_probs_and_loss_match_numpy(distance):
  rng = np.random.default_rng(0)
  n_way, k_shot, n_query, dim = 4, 3, 2, 7
  # Shuffled support order: prototypes must not rely on class-major layout.
  support_labels = rng.permutation(np.repeat(np.arange(n_way), k_shot))
  query_labels = np.repeat(np.arange(n_way), n_query)
  support = rng.normal(size=(n_way * k_shot, dim)).astype(np.float32)
  query = rng.normal(size=(n_way * n_query, dim)).astype(np.float32)
  log_probs = protonet.query_log_probs(support, support_labels, query, n_way, distance, 3.0)
  np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, rtol=1e-6)
  loss = -jnp.mean(log_probs[jnp.arange(len(query)), query_labels])
  accuracy = jnp.mean(jnp.argmax(log_probs, 1) == query_labels)
  ref_loss, ref_accuracy = numpy_protonet(
    support, support_labels, query, query_labels, n_way, distance, 3.0
  )
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert float(accuracy) == pytest.approx(ref_accuracy)


def test_squared_euclidean_is_exact_and_nonnegative():
  a = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
  b = np.array([[1.0, 2.0], [0.0, 0.0], [2.0, 2.0]], np.float32)
  expected = ((a[:, None] - b[None]) ** 2).sum(-1)
  np.testing.assert_allclose(distances.squared_euclidean(a, b), expected, atol=1e-6)
  assert float(distances.squared_euclidean(a, a).min()) >= 0.0


def tiny_episode(rng, n_way=3, k_shot=2, n_query=2, side=8):
  images = lambda n: rng.integers(0, 256, size=(n, side, side, 1), dtype=np.uint8)
  return Episode(
    support=images(n_way * k_shot),
    support_labels=np.repeat(np.arange(n_way, dtype=np.int32), k_shot),
    query=images(n_way * n_query),
    query_labels=np.repeat(np.arange(n_way, dtype=np.int32), n_query),
  )


def test_episode_loss_gradient_matches_central_finite_differences():
  rng = np.random.default_rng(1)
  episode = tiny_episode(rng)
  model = CpuConv4(filters=4, conv_impl="im2col", num_blocks=2)
  with jax.enable_x64(True):
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(episode.support), train=False)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables["params"])
    stats = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables["batch_stats"])

    @jax.jit
    def loss(p):
      value, _ = protonet.episode_loss(model, p, stats, episode, n_way=3, train=True)
      return value

    grads = jax.grad(loss)(params)
    flat, unravel = ravel_pytree(params)
    flat_grads, _ = ravel_pytree(grads)
    eps = 1e-6
    for i in rng.choice(flat.size, size=12, replace=False):
      step = jnp.zeros_like(flat).at[i].set(eps)
      numeric = (loss(unravel(flat + step)) - loss(unravel(flat - step))) / (2 * eps)
      np.testing.assert_allclose(flat_grads[i], numeric, rtol=1e-5, atol=1e-8)


def test_train_mode_updates_batch_stats_and_eval_mode_does_not():
  rng = np.random.default_rng(2)
  episode = tiny_episode(rng)
  model = CpuConv4(filters=4, num_blocks=2)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(episode.support), train=False)
  args = (model, variables["params"], variables["batch_stats"], episode)
  _, (_, trained) = protonet.episode_loss(*args, n_way=3, train=True)
  _, (_, frozen) = protonet.episode_loss(*args, n_way=3, train=False)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), trained, variables["batch_stats"])
  assert all(jax.tree.leaves(changed))
  jax.tree.map(np.testing.assert_array_equal, frozen, variables["batch_stats"])
