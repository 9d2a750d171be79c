"""The training loop: ``train_and_evaluate(config, workdir)``.

Train steps draw meta-batches from the stateless sampler on a background thread,
run one jitted, state-donating step each, and fetch metrics only every
``config.train.log_every`` steps. Every ``config.train.eval_every`` steps the
model is scored on validation episodes and checkpointed with that score; the
checkpoint with the best validation accuracy is the one tested at the end.
The test split is never used for selection.

Reliability: a run resumes from its latest checkpoint bitwise (the TrainState
holds step, params, batch statistics, optimiser state and rng, and episode i is
a function of (seed, i)); SIGTERM saves and stops (preemption.py); non-finite
steps stop or restart with a lower learning rate (divergence.py); one run per
workdir (workdir_lock.py).
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

from fsl_jax import divergence, sharding
from fsl_jax.algorithms import make_algorithm
from fsl_jax.checkpointing import Checkpoints
from fsl_jax.data.datasets import load_dataset
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.data.prefetch import prefetch
from fsl_jax.evaluate import evaluate
from fsl_jax.metrics import MetricsWriter, Progress, format_duration
from fsl_jax.preemption import Preempted, SigtermFlag
from fsl_jax.state import create_train_state
from fsl_jax.steps import make_eval_step, make_train_step
from fsl_jax.workdir_lock import WorkdirLock


def make_optimizer(optim: ml_collections.ConfigDict, meta_batch_size: int, lr_scale: float = 1.0):
  """Adam whose learning rate is multiplied by ``decay_rate`` every ``decay_every_episodes``.

  Snell et al.: lr 1e-3, halved every 2000 episodes. The schedule counts steps,
  so the interval is divided by the meta-batch size. ``lr_scale`` multiplies the
  whole schedule (divergence restarts lower it); the optimiser state's structure
  does not depend on it, so a checkpoint restores under any scale.
  """
  schedule = optax.exponential_decay(
    optim.learning_rate * lr_scale,
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


def drop_rows_after(path: str, step: int) -> None:
  """Drops metrics.jsonl rows after ``step``: a resumed run logs those steps again.

  Without this, a run killed after its last checkpoint would leave rows that the
  resumed run repeats. The file is rewritten atomically; a missing file is fine.
  """
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  # A kill can leave a last line half-written: it does not parse and is dropped.
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError):
      continue
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)


def out_of_time(started: float, budget_seconds: float) -> bool:
  """Whether the budget is spent, decided by process 0 so all processes stop together."""
  spent = np.asarray(time.perf_counter() - started > budget_seconds)
  return bool(multihost_utils.broadcast_one_to_all(spent))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, validates, checkpoints and tests; returns the contents of results.json.

  Holds the workdir's lock (workdir_lock.py) throughout and turns SIGTERM into a
  checkpoint and ``preemption.Preempted`` (preemption.py).

  Raises:
    WorkdirLockedError: another run holds the workdir.
    DivergenceError: a non-finite loss or gradient, with on_divergence = "stop"
      or no restarts left.
    preemption.Preempted: SIGTERM arrived; a checkpoint was saved first.
  """
  divergence.check_config(config.train)
  with WorkdirLock(workdir, enabled=jax.process_index() == 0), SigtermFlag() as sigterm:
    return _train_and_evaluate(config, workdir, sigterm)


def _train_and_evaluate(config, workdir: str, sigterm: SigtermFlag) -> dict:
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
  example = jnp.asarray(train_sampler.episode(0).support)
  eval_step = make_eval_step(algorithm.loss, config.eval.n_way, mesh, config.cpu_matmuls)
  checkpoints = Checkpoints(workdir)
  kept_through = checkpoints.latest_step() or 0
  if is_writer:
    drop_rows_after(os.path.join(workdir, "metrics.jsonl"), kept_through)
  writer = MetricsWriter(workdir, enabled=is_writer, kept_through=kept_through)

  def validate(current_state) -> dict:
    return evaluate(
      eval_step,
      current_state,
      eval_samplers["val"],
      config.eval.val_episodes,
      config.eval.batch_size,
      mesh,
    )

  def fresh_or_latest_state(tx):
    """The latest checkpoint, else a fresh state; either way replicated over the mesh."""
    make = lambda: create_train_state(model, tx, example, config.seed, algorithm.init_params)
    replicated = sharding.replicated(mesh)
    if (latest := checkpoints.latest_step()) is None:
      return jax.jit(make, out_shardings=replicated)()  # One compile, not one per op.
    # Restoring needs only shapes, dtypes and shardings: no init is computed.
    like = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), jax.eval_shape(make)
    )
    state = checkpoints.restore(latest, like)
    logging.info("Resumed from %s at step %d.", checkpoints.directory, latest)
    return state

  try:
    lr_scale = divergence.load_lr_scale(workdir)
    restarts = 0
    while True:
      tx = make_optimizer(config.optim, meta_batch_size, lr_scale)
      state = fresh_or_latest_state(tx)
      try:
        state = _train_loop(
          config,
          state,
          make_train_step(algorithm.loss, tx, config.train.n_way, mesh, config.cpu_matmuls),
          train_sampler,
          mesh,
          checkpoints,
          writer,
          validate if "val" in eval_samplers else None,
          sigterm,
          started,
          lr_scale,
        )
        break
      except divergence.DivergenceError as e:
        restarts += 1
        if (
          config.train.on_divergence != "restart_lower_lr"
          or restarts > config.train.max_divergence_restarts
        ):
          raise
        lr_scale *= config.train.divergence_lr_factor
        resumed_from = checkpoints.latest_step()
        if is_writer:
          divergence.record_restart(workdir, lr_scale, e.step, resumed_from)
        logging.warning(
          "%s Restart %d of %d: from step %s with the learning rate scaled by %g.",
          e,
          restarts,
          config.train.max_divergence_restarts,
          resumed_from or 0,
          lr_scale,
        )
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
  finally:
    checkpoints.close()
    writer.close()
  # The step of the params tested: the best on validation, else the last.
  results["checkpoint_step"] = int(jax.device_get(state.step))
  results["wall_seconds"] = time.perf_counter() - started  # Data, training and evaluation.
  results["config"] = config.to_dict()
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


def _train_loop(
  config,
  state,
  train_step,
  train_sampler,
  mesh,
  checkpoints,
  writer,
  validate,
  sigterm,
  started,
  lr_scale,
):
  """Steps from ``state.step`` to num_steps (or the time budget); returns the last state.

  Raises DivergenceError at the first host sync after a non-finite step, and
  Preempted after saving a checkpoint when SIGTERM arrived.
  """
  is_writer = jax.process_index() == 0
  meta_batch_size = config.train.meta_batch_size
  per_process = meta_batch_size // jax.process_count()
  first = jax.process_index() * per_process

  def produce(step: int):
    # Step s (0-based) trains on episodes s*T .. s*T+T-1; this process draws its slice.
    local = train_sampler.episodes(step * meta_batch_size + first, per_process)
    return sharding.to_global(local, mesh)

  monitor = divergence.DivergenceMonitor()

  def check_finite() -> None:
    """Raises DivergenceError if any step so far was not finite (one host sync)."""
    if (bad := monitor.first_bad_step()) is not None:
      lr = config.optim.learning_rate * lr_scale
      last_good = checkpoints.latest_step()
      raise divergence.DivergenceError(
        divergence.message(bad, lr, os.path.dirname(checkpoints.directory), last_good), bad
      )

  num_steps = config.train.num_steps
  start = int(jax.device_get(state.step))
  progress = Progress(num_steps, start, meta_batch_size)
  budget = 60.0 * config.train.max_minutes
  window_sum, window_count = None, 0
  batches = prefetch(produce, range(start, num_steps))
  try:
    for step, batch in zip(range(start + 1, num_steps + 1), batches, strict=True):
      state, metrics = train_step(state, batch)
      monitor.update(metrics.pop("first_bad_step"))
      window_sum = metrics if window_sum is None else jax.tree.map(jnp.add, window_sum, metrics)
      window_count += 1
      last = step == num_steps
      if step % config.train.log_every == 0 or last:
        check_finite()
        means = {k: float(v) / window_count for k, v in jax.device_get(window_sum).items()}
        window_sum, window_count = None, 0
        writer.write(step, "train", means)
        if is_writer:
          logging.info("%s", progress.line(step, means))
        if budget > 0 and not last and out_of_time(started, budget):
          logging.info("Stopping at step %d: config.train.max_minutes is spent.", step)
          last = True
      preempted = preemption_requested(sigterm, step, config.train.log_every)
      if validate is not None and (step % config.train.eval_every == 0 or last):
        check_finite()
        result = validate(state)
        writer.write(step, "val", {"accuracy": result["accuracy"], "loss": result["loss"]})
        if is_writer:
          logging.info(
            "step %d val accuracy %.4f +- %.4f", step, result["accuracy"], result["ci95"]
          )
        checkpoints.save(state, val_accuracy=result["accuracy"])
      elif step % config.train.checkpoint_every == 0 or last or preempted:
        check_finite()
        checkpoints.save(state)
      if preempted:
        raise Preempted(step, checkpoints.directory)
      if last:
        break
  finally:
    batches.close()
  return state


def preemption_requested(sigterm: SigtermFlag, step: int, log_every: int) -> bool:
  """Whether to stop for SIGTERM after ``step``: at once with one process.

  With several processes they must agree, so process 0's flag is broadcast,
  at log steps only (a broadcast is a host sync): keep log_every steps well
  inside the preemption notice (about 30 s on Cloud TPU VMs).
  """
  if jax.process_count() == 1:
    return sigterm.requested
  if step % log_every:
    return False
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(sigterm.requested)))
