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

import chex
import jax
import jax.numpy as jnp

from fsl_jax.algorithms import metric_episode
from fsl_jax.algorithms.distances import similarity_logits


def prototypes(embeddings: jax.Array, labels: jax.Array, n_way: int) -> jax.Array:
  """Class means: embeddings [S, D], labels [S] in [0, n_way) -> [n_way, D]."""
  one_hot = jax.nn.one_hot(labels, n_way, dtype=embeddings.dtype)  # [S, N]
  return (one_hot.T @ embeddings) / jnp.sum(one_hot, axis=0)[:, None]


def query_log_probs(
  support: jax.Array,
  support_labels: jax.Array,
  query: jax.Array,
  n_way: int,
  distance: str = "euclidean",
  cosine_scale: float = 10.0,
) -> jax.Array:
  """log p(y = n | x) [N*Q, N] of queries [N*Q, D] against prototypes of support [N*K, D]."""
  chex.assert_rank([support, support_labels, query], [2, 1, 2])
  chex.assert_equal_shape_prefix([support, support_labels], 1)
  centres = prototypes(support, support_labels, n_way)  # [N, D]
  logits = similarity_logits(query, centres, distance, cosine_scale)  # [N*Q, N]
  return jax.nn.log_softmax(logits, axis=-1)


# (model, params, batch_stats, episode, *, n_way, train, distance, cosine_scale)
#   -> (loss, (metrics, new_batch_stats)): see metric_episode.episode_loss.
episode_loss = metric_episode.episode_loss_of(
  query_log_probs, distance="euclidean", tell_model_support_size=False
)
