"""Evaluation over many episodes (mean accuracy +- 95% CI), and Lake et al.'s 20 runs."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fsl_jax.data.episodes import Episode, EpisodeSampler
from fsl_jax.data.prefetch import prefetch
from fsl_jax.runtime import sharding
from fsl_jax.state import TrainState


def mean_and_ci95(values) -> tuple[float, float]:
  """Mean and the 95% confidence half-width 1.96 * std / sqrt(n) (std with ddof=0)."""
  values = np.asarray(values, dtype=np.float64)
  return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


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


def run_episodes(eval_step: Callable, state: TrainState, episodes: Episode, mesh: Mesh) -> dict:
  """``eval_step`` on a fixed stack of episodes [E, ...] -> host metrics with leading axis E.

  The stack is padded (with copies of its first episode) to a multiple of the
  device count, each process feeds its own slice, and the padding is dropped.
  """
  count = episodes.query_labels.shape[0]
  devices = mesh.devices.size
  padded = math.ceil(count / devices) * devices
  rows = np.concatenate([np.arange(count), np.zeros(padded - count, int)])
  per_process = padded // jax.process_count()
  mine = rows[jax.process_index() * per_process : (jax.process_index() + 1) * per_process]
  local = jax.tree.map(lambda x: x[mine], episodes)
  metrics = multihost_utils.process_allgather(
    eval_step(state, sharding.to_global(local, mesh)), tiled=True
  )
  return {name: np.asarray(value)[:count] for name, value in metrics.items()}


def evaluate_lake_runs(eval_step: Callable, state: TrainState, runs: Episode, mesh: Mesh) -> dict:
  """Lake et al.'s one-shot task: the error of each 20-way 1-shot run, in percent.

  Args:
    eval_step: from make_eval_step(loss, n_way=20).
    runs: the 20 runs as one Episode [20, ...] (data.lake_runs.load_lake_runs).

  Returns:
    {"error_percent": mean over runs, "per_run_error_percent": [20 floats],
     "ci95_percent": 1.96 * std / sqrt(runs), "runs": 20}. A run's error is
    100 * (wrong test items) / 20, as in Lake et al. (2015).
  """
  metrics = run_episodes(eval_step, state, runs, mesh)
  n_query = runs.query_labels.shape[1]
  # Whole wrong items, so the figures are exact multiples of 100/20 = 5%.
  wrong = np.rint((1.0 - metrics["accuracy"].astype(np.float64)) * n_query)
  per_run = [float(100.0 * w / n_query) for w in wrong]
  error, ci95 = mean_and_ci95(per_run)
  return {
    "error_percent": error,
    "per_run_error_percent": per_run,
    "ci95_percent": ci95,
    "runs": len(per_run),
  }
