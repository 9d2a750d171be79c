"""What the metric-based algorithms (ProtoNets, Matching Networks) share per episode."""

from __future__ import annotations

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
