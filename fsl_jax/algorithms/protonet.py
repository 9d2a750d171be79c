"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class n is represented by the mean of its embedded support images,

    c_n = (1/K) sum_{k} f(x_{n,k}),

and a query x is classified by a softmax over negative squared distances,

    p(y = n | x) = exp(-d(f(x), c_n)) / sum_m exp(-d(f(x), c_m)),

with d the squared Euclidean distance (or, as an option, -s*cos). The loss is the
mean negative log-probability of the true class over the N*Q queries
(``metric_episode.episode_loss``, shared with Matching Networks).

Support and query images go through the network as one batch, so batch norm in
training sees the whole episode (as in Snell et al.'s code); at test time it
uses its running averages.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.algorithms import metric_episode
from fsl_jax.algorithms.distances import similarity_logits
from fsl_jax.data.episodes import Episode


def prototypes(embeddings: jax.Array, labels: jax.Array, n_way: int) -> jax.Array:
  """Class means: embeddings [S, D], labels [S] in [0, n_way) -> [n_way, D]."""
  one_hot = jax.nn.one_hot(labels, n_way, dtype=embeddings.dtype)  # [S, N]
  return (one_hot.T @ embeddings) / jnp.sum(one_hot, axis=0)[:, None]


def query_logits(
  support: jax.Array,
  support_labels: jax.Array,
  query: jax.Array,
  n_way: int,
  distance: str = "euclidean",
  cosine_scale: float = 10.0,
) -> jax.Array:
  """Logits [N*Q, N] of queries [N*Q, D] against prototypes of support [N*K, D]."""
  chex.assert_rank([support, support_labels, query], [2, 1, 2])
  chex.assert_equal_shape_prefix([support, support_labels], 1)
  return similarity_logits(
    query, prototypes(support, support_labels, n_way), distance, cosine_scale
  )


def query_log_probs(
  support: jax.Array,
  support_labels: jax.Array,
  query: jax.Array,
  n_way: int,
  distance: str = "euclidean",
  cosine_scale: float = 10.0,
) -> jax.Array:
  """log p(y = n | x) [N*Q, N]: the log-softmax of ``query_logits``."""
  logits = query_logits(support, support_labels, query, n_way, distance, cosine_scale)
  return jax.nn.log_softmax(logits, axis=-1)


def episode_loss(
  model: nn.Module,
  params,
  batch_stats,
  episode: Episode,
  *,
  n_way: int,
  train: bool,
  distance: str = "euclidean",
  cosine_scale: float = 10.0,
):
  """Prototypical loss of one episode: ``metric_episode.episode_loss`` with prototypes.

  Args:
    model: embeds uint8 images [B, H, W, C] -> [B, D].
    params, batch_stats: the model's variables.
    episode: support [N*K, H, W, C], query [N*Q, H, W, C] and their labels.
    n_way: N, static.
    train: batch norm uses batch statistics (and updates its averages) if True.
    distance: "euclidean" or "cosine".
    cosine_scale: s in d = -s * cos.

  Returns:
    (loss, (metrics, new_batch_stats)) as ``metric_episode.episode_loss``.
  """
  log_probs = functools.partial(
    query_log_probs, n_way=n_way, distance=distance, cosine_scale=cosine_scale
  )
  return metric_episode.episode_loss(model, params, batch_stats, episode, log_probs, train=train)
