"""The training loop: ``train_and_evaluate(config, workdir)``.

Train steps draw meta-batches from the stateless sampler on a background thread,
run one jitted, state-donating step each, and fetch metrics only every
``config.train.log_every`` steps. Every ``config.train.eval_every`` steps the
model is scored on validation episodes and checkpointed with that score; the
checkpoint with the best validation accuracy is the one tested at the end.
The test split is never used for selection.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from fsl_jax import sharding
from fsl_jax.algorithms import make_algorithm
from fsl_jax.checkpointing import Checkpoints
from fsl_jax.data.datasets import load_dataset
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.data.prefetch import prefetch
from fsl_jax.evaluate import evaluate
from fsl_jax.metrics import MetricsWriter, Progress, format_duration
from fsl_jax.state import create_train_state
from fsl_jax.steps import make_eval_step, make_train_step


def make_optimizer(optim: ml_collections.ConfigDict, meta_batch_size: int):
  """Adam whose learning rate is multiplied by ``decay_rate`` every ``decay_every_episodes``.

  Snell et al.: lr 1e-3, halved every 2000 episodes. The schedule counts steps,
  so the interval is divided by the meta-batch size.
  """
  schedule = optax.exponential_decay(
    optim.learning_rate,
    transition_steps=max(1, optim.decay_every_episodes // meta_batch_size),
    decay_rate=optim.decay_rate,
    staircase=True,
  )
  return optax.adam(schedule)


def episode_shape(section: ml_collections.ConfigDict) -> EpisodeShape:
  return EpisodeShape(section.n_way, section.k_shot, section.n_query)


def write_json_atomically(path: str, payload: dict) -> None:
  """Writes to a temporary file and renames it, so a reader never sees half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, path)


def out_of_time(started: float, budget_seconds: float) -> bool:
  """Whether the budget is spent, decided by process 0 so all processes stop together."""
  spent = np.asarray(time.perf_counter() - started > budget_seconds)
  return bool(multihost_utils.broadcast_one_to_all(spent))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, validates, checkpoints and tests; returns the contents of results.json."""
  started = time.perf_counter()
  is_writer = jax.process_index() == 0
  data = load_dataset(config.data)
  train_sampler = EpisodeSampler(
    data["train"], episode_shape(config.train), config.seed, "config.train"
  )
  eval_samplers = {
    part: EpisodeSampler(data[part], episode_shape(config.eval), config.eval.seed, "config.eval")
    for part in ("val", "test")
    if part in data
  }
  meta_batch_size = config.train.meta_batch_size
  mesh = sharding.make_mesh()
  sharding.check_batch_divides(meta_batch_size, mesh, "config.train.meta_batch_size")

  model, algorithm = make_algorithm(config)
  tx = make_optimizer(config.optim, meta_batch_size)
  example = train_sampler.episode(0).support
  state = create_train_state(model, tx, jnp.asarray(example), config.seed, algorithm.init_params)
  state = jax.device_put(state, sharding.replicated(mesh))

  checkpoints = Checkpoints(workdir)
  if (latest := checkpoints.latest_step()) is not None:
    state = checkpoints.restore(latest, state)
    logging.info("Resumed from %s at step %d.", checkpoints.directory, latest)

  train_step = make_train_step(algorithm.loss, tx, config.train.n_way, mesh)
  eval_step = make_eval_step(algorithm.loss, config.eval.n_way, mesh)
  writer = MetricsWriter(workdir, enabled=is_writer)

  def validate(current_state) -> dict:
    return evaluate(
      eval_step,
      current_state,
      eval_samplers["val"],
      config.eval.val_episodes,
      config.eval.batch_size,
      mesh,
    )

  per_process = meta_batch_size // jax.process_count()
  first = jax.process_index() * per_process

  def produce(step: int):
    # Step s (0-based) trains on episodes s*T .. s*T+T-1; this process draws its slice.
    local = train_sampler.episodes(step * meta_batch_size + first, per_process)
    return sharding.to_global(local, mesh)

  num_steps = config.train.num_steps
  start = int(jax.device_get(state.step))
  progress = Progress(num_steps, start, meta_batch_size)
  budget = 60.0 * config.train.max_minutes
  window_sum, window_count = None, 0
  batches = prefetch(produce, range(start, num_steps))
  for step, batch in zip(range(start + 1, num_steps + 1), batches, strict=True):
    state, metrics = train_step(state, batch)
    window_sum = metrics if window_sum is None else jax.tree.map(jnp.add, window_sum, metrics)
    window_count += 1
    last = step == num_steps
    if step % config.train.log_every == 0 or last:
      means = {k: float(v) / window_count for k, v in jax.device_get(window_sum).items()}
      window_sum, window_count = None, 0
      writer.write(step, "train", means)
      if is_writer:
        logging.info("%s", progress.line(step, means))
      if budget > 0 and not last and out_of_time(started, budget):
        logging.info("Stopping at step %d: config.train.max_minutes is spent.", step)
        last = True
    if "val" in eval_samplers and (step % config.train.eval_every == 0 or last):
      result = validate(state)
      writer.write(step, "val", {"accuracy": result["accuracy"], "loss": result["loss"]})
      if is_writer:
        logging.info("step %d val accuracy %.4f +- %.4f", step, result["accuracy"], result["ci95"])
      checkpoints.save(state, val_accuracy=result["accuracy"])
    elif step % config.train.checkpoint_every == 0 or last:
      checkpoints.save(state)
    if last:
      break
  batches.close()
  checkpoints.save(state)  # No-op unless the loop ran no step (a finished run resumed).

  results = {}
  if "val" in eval_samplers:
    best = checkpoints.best_step()
    state = checkpoints.restore(best, state)
    results["val"] = {**validate(state), "step": best}
  if "test" in eval_samplers:
    results["test"] = evaluate(
      eval_step,
      state,
      eval_samplers["test"],
      config.eval.test_episodes,
      config.eval.batch_size,
      mesh,
    )
  # The step of the params tested: the best on validation, else the last.
  results["checkpoint_step"] = int(jax.device_get(state.step))
  results["wall_seconds"] = time.perf_counter() - started  # Data, training and evaluation.
  results["config"] = config.to_dict()
  checkpoints.close()
  writer.close()
  if is_writer:
    write_json_atomically(os.path.join(workdir, "results.json"), results)
    if "test" in results:
      test = results["test"]
      logging.info(
        "test %d-way %d-shot accuracy %.2f%% +- %.2f%% over %d episodes (checkpoint step %d), "
        "total time %s",
        test["n_way"],
        test["k_shot"],
        100 * test["accuracy"],
        100 * test["ci95"],
        test["episodes"],
        results["checkpoint_step"],
        format_duration(results["wall_seconds"]),
      )
  return results
