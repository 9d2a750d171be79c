"""Few-shot learning algorithms as pure losses over params pytrees.

``make_loss(config, model)`` returns the algorithm's per-episode loss with the
signature the train and eval steps expect:

    loss(params, batch_stats, episode, rng, *, n_way, train)
        -> (loss, (metrics, new_batch_stats))
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import ml_collections

from fsl_jax.algorithms import protonet
from fsl_jax.errors import ConfigError

ALGORITHMS = ("protonet",)


def make_loss(config: ml_collections.ConfigDict, model: nn.Module) -> Callable:
  if config.algorithm == "protonet":
    settings = config.protonet

    def loss(params, batch_stats, episode, rng, *, n_way, train):
      del rng  # Prototypical Networks are deterministic.
      return protonet.episode_loss(
        model,
        params,
        batch_stats,
        episode,
        n_way=n_way,
        train=train,
        distance=settings.distance,
        cosine_scale=settings.cosine_scale,
      )

    return loss
  raise ConfigError(f"config.algorithm must be one of {ALGORITHMS}, got {config.algorithm!r}.")
