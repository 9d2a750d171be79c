"""Evaluation over many episodes: mean accuracy +- 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fsl_jax import sharding
from fsl_jax.data.episodes import EpisodeSampler
from fsl_jax.data.prefetch import prefetch
from fsl_jax.metrics import mean_and_ci95
from fsl_jax.state import TrainState


def evaluate(
  eval_step: Callable,
  state: TrainState,
  sampler: EpisodeSampler,
  num_episodes: int,
  batch_size: int,
  mesh: Mesh,
) -> dict:
  """Runs episodes 0..num_episodes-1 of ``sampler`` through ``eval_step``.

  Episodes go in batches of ``batch_size`` (one compile), rounded up to a multiple
  of the device count and sharded P("data"); the last batch is filled up with the
  following episodes of the stream, whose results are dropped.

  Returns:
    {"accuracy", "ci95", "loss", "episodes", "n_way", "k_shot", "n_query"}, with
    accuracy a fraction in [0, 1] and ci95 = 1.96 * std / sqrt(episodes).
  """
  batch_size = sharding.eval_batch_size(batch_size, mesh)  # A multiple of the device count.
  num_batches = math.ceil(num_episodes / batch_size)
  per_process = batch_size // jax.process_count()
  first = jax.process_index() * per_process

  def produce(b: int):
    local = sampler.episodes(b * batch_size + first, per_process)
    return sharding.to_global(local, mesh)

  accuracies, losses = [], []
  for batch in prefetch(produce, range(num_batches)):
    # Gathers every process's episodes (a plain device_get on one process).
    metrics = multihost_utils.process_allgather(eval_step(state, batch), tiled=True)
    accuracies.append(np.asarray(metrics["accuracy"]))
    losses.append(np.asarray(metrics["loss"]))
  accuracy, ci95 = mean_and_ci95(np.concatenate(accuracies)[:num_episodes])
  return {
    "accuracy": accuracy,
    "ci95": ci95,
    "loss": float(np.concatenate(losses)[:num_episodes].mean()),
    "episodes": num_episodes,
    "n_way": sampler.shape.n_way,
    "k_shot": sampler.shape.k_shot,
    "n_query": sampler.shape.n_query,
  }
