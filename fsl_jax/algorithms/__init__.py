"""Few-shot learning algorithms as pure losses over params pytrees.

``make_algorithm(config)`` returns the model and an ``Algorithm``: the per-episode
loss with the signature the train and eval steps expect,

    loss(params, batch_stats, episode, rng, *, n_way, train, step)
        -> (loss, (metrics, new_batch_stats)),

and ``init_params``, which turns the model's params into the meta-learned params.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import ml_collections

from fsl_jax import task_chunks
from fsl_jax.algorithms import imaml, maml, matching, protonet, reptile
from fsl_jax.errors import ConfigError
from fsl_jax.models import make_model
from fsl_jax.models.fce import MatchingEmbedding

DISTANCES = ("cosine", "euclidean")
ALGORITHMS = ("protonet", "matching", "maml", "reptile")


@dataclasses.dataclass(frozen=True)
class Algorithm:
  loss: Callable
  init_params: Callable


def metric_algorithm(model: nn.Module, episode_loss: Callable, **settings) -> Algorithm:
  """A deterministic metric-based algorithm (ProtoNets, Matching Networks).

  ``episode_loss(model, params, batch_stats, episode, *, n_way, train, **settings)``;
  its params are the model's params.
  """

  def loss(params, batch_stats, episode, rng, *, n_way, train, step):
    del rng, step  # No sampling, no schedule.
    return episode_loss(model, params, batch_stats, episode, n_way=n_way, train=train, **settings)

  return Algorithm(loss, lambda params: params)


def make_algorithm(config: ml_collections.ConfigDict) -> tuple[nn.Module, Algorithm]:
  """The model and algorithm that ``config`` describes."""
  if config.algorithm == "protonet":
    model = make_model(config.model)
    settings = config.protonet
    return model, metric_algorithm(
      model,
      protonet.episode_loss,
      distance=settings.distance,
      cosine_scale=settings.cosine_scale,
    )

  if config.algorithm == "matching":
    settings = config.matching
    check_matching_settings(settings)
    model = MatchingEmbedding(
      make_model(config.model),
      fce=settings.fce,
      lstm_layers=settings.lstm_layers,
      unrolling_steps=settings.unrolling_steps,
    )
    return model, metric_algorithm(
      model,
      matching.episode_loss,
      distance=settings.distance,
      cosine_scale=settings.cosine_scale,
    )

  if config.algorithm == "maml":
    check_same_n_way(config, "MAML")
    model = make_model(
      config.model,
      num_outputs=config.train.n_way,
      per_task_weights=True,
      tasks_per_chunk=task_chunks.configured(config.train),
    )
    settings = maml.MamlSettings(
      **config.maml.to_dict(), imaml=imaml.ImamlSettings(**config.imaml.to_dict())
    )

    def maml_loss(params, batch_stats, episode, rng, *, n_way, train, step):
      del rng, n_way  # Deterministic; n_way is fixed by the head.
      return maml.episode_loss(
        model, params, batch_stats, episode, settings=settings, train=train, step=step
      )

    return model, Algorithm(maml_loss, lambda params: maml.init_meta_params(params, settings))

  if config.algorithm == "reptile":
    check_same_n_way(config, "Reptile")
    model = make_model(
      config.model,
      num_outputs=config.train.n_way,
      per_task_weights=True,
      tasks_per_chunk=task_chunks.configured(config.train),
    )
    settings = reptile.ReptileSettings(**config.reptile.to_dict())
    reptile.check_inner_batch(
      settings.inner_batch_size, config.train.n_way * config.train.k_shot, train=True
    )
    reptile.check_inner_batch(
      settings.test_inner_batch_size, config.eval.n_way * config.eval.k_shot, train=False
    )

    def reptile_loss(params, batch_stats, episode, rng, *, n_way, train, step):
      del n_way, step  # n_way is fixed by the head; no schedule.
      return reptile.episode_loss(
        model, params, batch_stats, episode, rng, settings=settings, train=train
      )

    return model, Algorithm(reptile_loss, lambda params: params)

  raise ConfigError(f"config.algorithm must be one of {ALGORITHMS}, got {config.algorithm!r}.")


def check_same_n_way(config: ml_collections.ConfigDict, name: str) -> None:
  """MAML and Reptile adapt a linear head of train.n_way outputs: eval must match it."""
  if config.eval.n_way != config.train.n_way:
    raise ConfigError(
      f"{name}'s head has config.train.n_way = {config.train.n_way} outputs, so "
      f"config.eval.n_way must be the same (got {config.eval.n_way})."
    )


def check_matching_settings(settings: ml_collections.ConfigDict) -> None:
  if settings.distance not in DISTANCES:
    raise ConfigError(
      f"config.matching.distance must be one of {DISTANCES}, got {settings.distance!r}."
    )
  if settings.fce and min(settings.lstm_layers, settings.unrolling_steps) < 1:
    raise ConfigError(
      "With config.matching.fce, lstm_layers and unrolling_steps must be >= 1, got "
      f"{settings.lstm_layers} and {settings.unrolling_steps}."
    )
