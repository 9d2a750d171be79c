"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query x is labelled by attention over the support set S = {(x_i, y_i)}:

    a(x, x_i) = exp(c(f(x), g(x_i))) / sum_j exp(c(f(x), g(x_j)))
    p(y = n | x, S) = sum_i a(x, x_i) [y_i = n],

with f = g = the conv-4 embedding, or the Full Context Embeddings of
``fsl_jax.models.fce``. The loss is the mean negative log-likelihood
-log p(y | x, S) of the N*Q queries. It is computed in log space,

    log p(y = n | x, S) = logsumexp_{i: y_i = n} c_i - logsumexp_i c_i,

which needs no clipping (the reference code clamps p to [eps, 1 - eps], which
also zeroes the gradient of confident queries). For 1-shot it is exactly the
softmax cross-entropy of the logits c.

The similarity c is ``s * cos(f(x), g(x_i))`` ("cosine", as in the paper) or
``-||f(x) - g(x_i)||^2`` ("euclidean").

**Why cosine failed in the reference code, and the fix.** The reference PyTorch
code used c = cos with no scale and reached 92.0/93.2/75.6/77.8% on Omniglot
against the published 98.1/98.9/93.8/98.5%, worst at 20-way. The cause is the
range of the logits, not the epsilon or an optimisation detail:

* conv-4 ends with ReLU and max-pool, so every embedding is non-negative, and
  the cosine of two non-negative vectors lies in [0, 1], not [-1, 1].
* With logits in [0, 1], the best possible 1-shot prediction gives the true class
  e / (e + N - 1): 0.40 at 5-way, 0.125 at 20-way. The loss cannot fall below
  log(1 + (N - 1)/e) (0.92 nats at 5-way, 2.08 at 20-way) even for a perfect
  embedding, so its gradient never stops pushing every class apart and is
  dominated by the softmax's floor instead of the hard examples.

Scaling the cosine by s (``cosine_scale``, 10 by default; Oreshkin et al. 2018
call this metric scaling) restores the logit range [0, s]. The epsilon in the
norm only matters for an all-zero embedding, and batch norm sits before the ReLU
in every block, as in the paper.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from fsl_jax.algorithms import metric_episode
from fsl_jax.algorithms.distances import similarity_logits


def class_log_probs(logits: jax.Array, support_labels: jax.Array, n_way: int) -> jax.Array:
  """log p(y = n | x, S) from attention logits.

  Args:
    logits: [Q, S], c(f(x_q), g(x_i)).
    support_labels: [S] in [0, n_way).
    n_way: N, static.

  Returns:
    [Q, N], log sum_{i: y_i = n} softmax(logits)_i; rows sum (in prob space) to 1.
  """
  chex.assert_rank([logits, support_labels], [2, 1])
  members = jax.nn.one_hot(support_labels, n_way, dtype=bool).T  # [N, S]
  masked = jnp.where(members[None], logits[:, None, :], -jnp.inf)  # [Q, N, S]
  return jax.nn.logsumexp(masked, axis=-1) - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


def query_log_probs(
  support: jax.Array,
  support_labels: jax.Array,
  query: jax.Array,
  n_way: int,
  distance: str = "cosine",
  cosine_scale: float = 10.0,
) -> jax.Array:
  """log p(y = n | x, S) [N*Q, N] of queries [N*Q, D] attending over support [N*K, D]."""
  chex.assert_rank([support, support_labels, query], [2, 1, 2])
  chex.assert_equal_shape_prefix([support, support_labels], 1)
  logits = similarity_logits(query, support, distance, cosine_scale)  # [N*Q, N*K]
  return class_log_probs(logits, support_labels, n_way)


# (model, params, batch_stats, episode, *, n_way, train, distance, cosine_scale)
#   -> (loss, (metrics, new_batch_stats)): see metric_episode.episode_loss. The
# model is a ``MatchingEmbedding``, told the support size for FCE.
episode_loss = metric_episode.episode_loss_of(
  query_log_probs, distance="cosine", tell_model_support_size=True
)
