"""The training loop: ``train_and_evaluate(config, workdir)``.

Read in this order: ``Experiment.create`` builds the parts of a run from the
config (data, model, loss, steps, checkpoints); ``train`` steps from the latest
checkpoint to ``config.train.num_steps``; ``test`` scores the best checkpoint.

Train steps draw meta-batches from the stateless sampler on a background thread,
run one jitted, state-donating step each, and fetch metrics only every
``config.train.log_every`` steps. Every ``config.train.eval_every`` steps the
model is scored on validation episodes and checkpointed with that score; the
checkpoint with the best validation accuracy is the one tested at the end.
The test split is never used for selection.

Reliability (fsl_jax/runtime/): a run resumes from its latest checkpoint bitwise
(the TrainState holds step, params, batch statistics, optimiser state and rng,
and episode i is a function of (seed, i)); SIGTERM saves and stops
(preemption.py); non-finite steps stop or restart with a lower learning rate
(divergence.py); one run per workdir (workdir_lock.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fsl_jax import task_chunks
from fsl_jax.algorithms import Algorithm, make_algorithm
from fsl_jax.data.datasets import load_dataset
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.data.prefetch import prefetch
from fsl_jax.evaluate import evaluate
from fsl_jax.runtime import divergence, host_allocator, host_memory, sharding
from fsl_jax.runtime.atomic_files import write_json_atomically
from fsl_jax.runtime.checkpointing import Checkpoints
from fsl_jax.runtime.metrics_log import MetricsWriter, Progress, format_duration
from fsl_jax.runtime.preemption import Preempted, SigtermFlag
from fsl_jax.runtime.workdir_lock import WorkdirLock
from fsl_jax.state import TrainState, create_train_state, make_optimizer
from fsl_jax.steps import make_eval_step, make_train_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, validates, checkpoints and tests; returns the contents of results.json.

  Holds the workdir's lock throughout and turns SIGTERM into a checkpoint and
  ``Preempted``.

  Raises:
    WorkdirLockedError: another run holds the workdir.
    DivergenceError: a non-finite loss or gradient, with on_divergence = "stop"
      or no restarts left.
    Preempted: SIGTERM arrived; a checkpoint was saved first.
  """
  started = time.perf_counter()
  divergence.check_config(config.train)
  with WorkdirLock(workdir, enabled=jax.process_index() == 0), SigtermFlag() as sigterm:
    experiment = Experiment.create(config, workdir, started)
    try:
      state = divergence.train_with_restarts(
        lambda lr_scale: train(experiment, lr_scale, sigterm),
        config,
        workdir,
        experiment.checkpoints.latest_step,
      )
      experiment.checkpoints.save(state)  # No-op unless no step ran (a finished run resumed).
      results = test(experiment, state)
    finally:
      experiment.close()
  results["wall_seconds"] = time.perf_counter() - started  # Data, training and evaluation.
  results["config"] = config.to_dict()
  if experiment.is_writer:
    write_json_atomically(os.path.join(workdir, "results.json"), results)
    log_test(results)
  return results


def episode_shape(section: ml_collections.ConfigDict) -> EpisodeShape:
  return EpisodeShape(section.n_way, section.k_shot, section.n_query)


@dataclasses.dataclass
class Experiment:
  """The parts of one run, built from its config: data, model, loss, steps, outputs."""

  config: ml_collections.ConfigDict
  workdir: str
  started: float  # time.perf_counter() when the run began, for config.train.max_minutes.
  mesh: Mesh
  train_sampler: EpisodeSampler
  eval_samplers: dict[str, EpisodeSampler]  # "val" and "test", where the split has them.
  model: nn.Module
  algorithm: Algorithm
  eval_step: Callable
  checkpoints: Checkpoints
  writer: MetricsWriter

  @property
  def is_writer(self) -> bool:
    return jax.process_index() == 0

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, workdir: str, started: float) -> Experiment:
    data = load_dataset(config.data)
    train_sampler = EpisodeSampler(
      data["train"], episode_shape(config.train), config.seed, "config.train"
    )
    eval_samplers = {
      part: EpisodeSampler(data[part], episode_shape(config.eval), config.eval.seed, "config.eval")
      for part in ("val", "test")
      if part in data
    }
    mesh = sharding.make_mesh()
    sharding.check_batch_divides(config.train.meta_batch_size, mesh, "config.train.meta_batch_size")
    model, algorithm = make_algorithm(config)
    eval_step = make_eval_step(algorithm.loss, config.eval.n_way, mesh, config.cpu_matmuls)
    checkpoints = Checkpoints(workdir)
    writer = MetricsWriter(
      workdir, enabled=jax.process_index() == 0, kept_through=checkpoints.latest_step() or 0
    )
    return cls(
      config=config,
      workdir=workdir,
      started=started,
      mesh=mesh,
      train_sampler=train_sampler,
      eval_samplers=eval_samplers,
      model=model,
      algorithm=algorithm,
      eval_step=eval_step,
      checkpoints=checkpoints,
      writer=writer,
    )

  def latest_or_fresh_state(self, tx) -> TrainState:
    """The latest checkpoint, else a fresh state; either way replicated over the mesh."""
    example = jnp.asarray(self.train_sampler.episode(0).support)
    init = self.algorithm.init_params
    make = lambda: create_train_state(self.model, tx, example, self.config.seed, init)
    replicated = sharding.replicated(self.mesh)
    if (latest := self.checkpoints.latest_step()) is None:
      return jax.jit(make, out_shardings=replicated)()  # One compile, not one per op.
    # Restoring needs only shapes, dtypes and shardings: no init is computed.
    like = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), jax.eval_shape(make)
    )
    state = self.checkpoints.restore(latest, like)
    logging.info("Resumed from %s at step %d.", self.checkpoints.directory, latest)
    return state

  def evaluate(self, state: TrainState, part: str, num_episodes: int) -> dict:
    """Accuracy +- 95% CI over episodes 0..num_episodes-1 of the "val" or "test" sampler."""
    sampler = self.eval_samplers[part]
    return evaluate(
      self.eval_step, state, sampler, num_episodes, self.config.eval.batch_size, self.mesh
    )

  def close(self) -> None:
    self.checkpoints.close()
    self.writer.close()


def train(experiment: Experiment, lr_scale: float, sigterm: SigtermFlag) -> TrainState:
  """Steps from the latest checkpoint to num_steps (or the time budget); returns the last state.

  ``lr_scale`` multiplies the learning rate (lowered by divergence restarts).

  Raises:
    DivergenceError: at the first host sync after a non-finite step.
    Preempted: SIGTERM arrived; a checkpoint was saved first.
  """
  config = experiment.config
  tx = make_optimizer(config, lr_scale)
  state = experiment.latest_or_fresh_state(tx)
  start = int(jax.device_get(state.step))
  loop = TrainLoop(experiment, config.optim.learning_rate * lr_scale, sigterm, start)
  train_step = compile_train_step(experiment, tx, state, loop.meta_batch(start))
  batches = prefetch(loop.meta_batch, range(start, config.train.num_steps))
  try:
    for step, batch in zip(range(start + 1, config.train.num_steps + 1), batches, strict=True):
      state, metrics = train_step(state, batch)
      if loop.after_step(step, state, metrics):
        break
  finally:
    batches.close()
  return state


def compile_train_step(
  experiment: Experiment, tx, state: TrainState, example_batch
) -> jax.stages.Compiled:
  """The train step, compiled once for the run's shapes before any step runs.

  Compiling first lets the host allocator hand back what compilation freed
  before the steps' buffers are allocated (host_allocator.release_free_memory),
  and a compiled step cannot silently recompile: other shapes raise an error.
  """
  config = experiment.config
  chunk = task_chunks.tasks_per_chunk(config, experiment.mesh)
  jitted = make_train_step(
    experiment.algorithm.loss,
    tx,
    config.train.n_way,
    experiment.mesh,
    config.cpu_matmuls,
    tasks_per_chunk=chunk,
  )
  started = time.perf_counter()
  compiled = jitted.lower(state, example_batch).compile()
  scratch = compiled.memory_analysis()
  host_allocator.release_free_memory(scratch.temp_size_in_bytes if scratch else 0)
  logging.info(
    "Compiled the train step in %.1f s (%d tasks per chunk; XLA scratch %.0f MB); "
    "host memory %.0f MB.",
    time.perf_counter() - started,
    chunk or config.train.meta_batch_size // experiment.mesh.devices.size,
    scratch.temp_size_in_bytes / 2**20 if scratch else float("nan"),
    host_memory.resident_mb(),
  )
  return compiled


class TrainLoop:
  """What happens between train steps: logging, validation, checkpoints, stopping."""

  def __init__(
    self, experiment: Experiment, learning_rate: float, sigterm: SigtermFlag, start: int
  ):
    self.experiment = experiment
    self.train_config = experiment.config.train
    self.sigterm = sigterm
    checkpoints = experiment.checkpoints
    self.monitor = divergence.DivergenceMonitor(
      learning_rate, os.path.dirname(checkpoints.directory), checkpoints.latest_step
    )
    self.progress = Progress(self.train_config.num_steps, start, self.train_config.meta_batch_size)
    self.window_sum, self.window_count = None, 0

  def meta_batch(self, step: int):
    """The sharded meta-batch of step ``step`` (0-based): episodes s*T .. s*T+T-1.

    Each process draws its own slice of the T episodes.
    """
    size = self.train_config.meta_batch_size
    per_process = size // jax.process_count()
    first = step * size + jax.process_index() * per_process
    local = self.experiment.train_sampler.episodes(first, per_process)
    return sharding.to_global(local, self.experiment.mesh)

  def after_step(self, step: int, state: TrainState, metrics: dict) -> bool:
    """Logs, validates and checkpoints as due after ``step``; returns whether to stop."""
    config, checkpoints = self.train_config, self.experiment.checkpoints
    self.monitor.update(metrics.pop("first_bad_step"))
    self.window_sum = (
      metrics if self.window_sum is None else jax.tree.map(jnp.add, self.window_sum, metrics)
    )
    self.window_count += 1
    last = step == config.num_steps
    if step % config.log_every == 0 or last:
      last = self.log(step) or last
    preempted = self.sigterm.agreed(step, config.log_every)
    if "val" in self.experiment.eval_samplers and (step % config.eval_every == 0 or last):
      self.monitor.raise_if_diverged()
      self.validate_and_save(step, state)
    elif step % config.checkpoint_every == 0 or last or preempted:
      self.monitor.raise_if_diverged()
      checkpoints.save(state)
    if preempted:
      raise Preempted(step, checkpoints.directory)
    return last

  def log(self, step: int) -> bool:
    """Writes the mean train metrics since the last log; returns whether time is up."""
    self.monitor.raise_if_diverged()
    means = {k: float(v) / self.window_count for k, v in jax.device_get(self.window_sum).items()}
    self.window_sum, self.window_count = None, 0
    self.experiment.writer.write(step, "train", means)
    if self.experiment.is_writer:
      logging.info("%s", self.progress.line(step, means))
    budget = 60.0 * self.train_config.max_minutes
    stop = (
      budget > 0
      and step < self.train_config.num_steps
      and out_of_time(self.experiment.started, budget)
    )
    if stop:
      logging.info("Stopping at step %d: config.train.max_minutes is spent.", step)
    return stop

  def validate_and_save(self, step: int, state: TrainState) -> None:
    experiment = self.experiment
    result = experiment.evaluate(state, "val", experiment.config.eval.val_episodes)
    experiment.writer.write(step, "val", {"accuracy": result["accuracy"], "loss": result["loss"]})
    if experiment.is_writer:
      logging.info("step %d val accuracy %.4f +- %.4f", step, result["accuracy"], result["ci95"])
    experiment.checkpoints.save(state, val_accuracy=result["accuracy"])


def out_of_time(started: float, budget_seconds: float) -> bool:
  """Whether the budget is spent, decided by process 0 so all processes stop together."""
  spent = np.asarray(time.perf_counter() - started > budget_seconds)
  return bool(multihost_utils.broadcast_one_to_all(spent))


def test(experiment: Experiment, state: TrainState) -> dict:
  """Validates and tests the best checkpoint on validation (else the last state).

  Returns:
    {"val": ..., "test": ..., "checkpoint_step"}, with the splits the data has.
  """
  results = {}
  eval_config = experiment.config.eval
  if "val" in experiment.eval_samplers:
    best = experiment.checkpoints.best_step()
    state = experiment.checkpoints.restore(best, state)
    results["val"] = {**experiment.evaluate(state, "val", eval_config.val_episodes), "step": best}
  if "test" in experiment.eval_samplers:
    results["test"] = experiment.evaluate(state, "test", eval_config.test_episodes)
  results["checkpoint_step"] = int(jax.device_get(state.step))
  return results


def log_test(results: dict) -> None:
  if "test" not in results:
    return
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
