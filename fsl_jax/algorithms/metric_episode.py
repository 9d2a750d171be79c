"""The episode loss of the metric-based algorithms (ProtoNets, Matching Networks), written once.

Both embed the support and query images with one network f and define a class
posterior from the embeddings,

    log p(y = n | x, S),  x a query, S = {(f(x_i), y_i)} the embedded support set,

and differ only in that posterior (prototypes against attention). The loss of an
episode is the mean negative log-posterior of the true class over its N*Q queries,

    L = -(1/NQ) sum_q log p(y_q | x_q, S),

and a query is predicted as argmax_n log p(y = n | x, S).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.data.episodes import Episode


def embed_episode(
  model: nn.Module, params, batch_stats, episode: Episode, *, train: bool, **kwargs
):
  """Embeds support and query images as one batch.

  In training, batch norm uses the statistics of the whole episode (as in Snell
  et al.'s and Vinyals et al.'s code) and updates its running averages; at test
  time it uses those averages. ``kwargs`` go to ``model.apply``.

  Returns:
    (support [N*K, D], query [N*Q, D], new_batch_stats).
  """
  n_support = episode.support.shape[0]
  images = jnp.concatenate([episode.support, episode.query])  # [N*K + N*Q, H, W, C]
  variables = {"params": params, "batch_stats": batch_stats}
  if train:
    embeddings, updates = model.apply(
      variables, images, train=True, mutable=["batch_stats"], **kwargs
    )
    batch_stats = updates["batch_stats"]
  else:
    embeddings = model.apply(variables, images, train=False, **kwargs)
  return embeddings[:n_support], embeddings[n_support:], batch_stats


def query_metrics(loss: jax.Array, scores: jax.Array, labels: jax.Array, train: bool) -> dict:
  """{"loss", "accuracy"} from per-class scores [N*Q, N], plus "predictions" [N*Q] at test time."""
  predictions = jnp.argmax(scores, axis=-1)  # [N*Q]
  metrics = {"loss": loss, "accuracy": jnp.mean(predictions == labels)}
  if not train:
    metrics["predictions"] = predictions  # Per query, for plots and Lake's runs.
  return metrics


def episode_loss(
  model: nn.Module,
  params,
  batch_stats,
  episode: Episode,
  class_log_probs: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
  *,
  train: bool,
  **apply_kwargs,
):
  """The loss of one episode under the posterior ``class_log_probs``.

  Args:
    model: embeds uint8 images [B, H, W, C] -> [B, D].
    params, batch_stats: the model's variables.
    episode: support [N*K, H, W, C], query [N*Q, H, W, C] and their labels.
    class_log_probs: (support [N*K, D], support_labels [N*K], query [N*Q, D])
      -> log p(y = n | x, S) [N*Q, N].
    train: batch norm uses batch statistics (and updates its averages) if True.
    apply_kwargs: passed to ``model.apply``.

  Returns:
    (loss, (metrics, new_batch_stats)), metrics = {"loss", "accuracy"}, plus
    "predictions" [N*Q] (the predicted class of each query) when not training.
  """
  support, query, batch_stats = embed_episode(
    model, params, batch_stats, episode, train=train, **apply_kwargs
  )  # [N*K, D], [N*Q, D]
  log_probs = class_log_probs(support, episode.support_labels, query)  # [N*Q, N]
  loss = -jnp.mean(jnp.take_along_axis(log_probs, episode.query_labels[:, None], axis=-1))
  metrics = query_metrics(loss, log_probs, episode.query_labels, train)
  return loss, (metrics, batch_stats)


def episode_loss_of(query_log_probs: Callable, *, distance: str, tell_model_support_size: bool):
  """The episode loss of the algorithm whose posterior is ``query_log_probs``.

  Args:
    query_log_probs: (support [N*K, D], support_labels [N*K], query [N*Q, D],
      n_way, distance, cosine_scale) -> log p(y = n | x, S) [N*Q, N].
    distance: the algorithm's default similarity, "euclidean" or "cosine".
    tell_model_support_size: call the model with ``n_support=N*K`` (Full Context
      Embeddings embed the support set and the queries differently).

  Returns:
    ``episode_loss(model, params, batch_stats, episode, *, n_way, train,
    distance, cosine_scale) -> (loss, (metrics, new_batch_stats))``, as
    ``episode_loss`` above; n_way is static, and cosine_scale is s in c = s * cos.
  """
  default_distance = distance

  def algorithm_episode_loss(
    model: nn.Module,
    params,
    batch_stats,
    episode: Episode,
    *,
    n_way: int,
    train: bool,
    distance: str = default_distance,
    cosine_scale: float = 10.0,
  ):
    log_probs = functools.partial(
      query_log_probs, n_way=n_way, distance=distance, cosine_scale=cosine_scale
    )
    apply_kwargs = {"n_support": episode.support.shape[0]} if tell_model_support_size else {}
    return episode_loss(model, params, batch_stats, episode, log_probs, train=train, **apply_kwargs)

  return algorithm_episode_loss
