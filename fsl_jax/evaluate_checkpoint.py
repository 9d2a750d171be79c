"""``--mode=evaluate``: scores a trained checkpoint on any split and episode shape.

    python -m fsl_jax.main --mode=evaluate --config=configs/proto_omniglot5w1s.py \
      --workdir=runs/proto_omniglot5w1s --config.eval.n_way=20 [--config.eval.split=val]

restores the best checkpoint of ``workdir`` (by validation accuracy; the latest
if none was validated), scores ``config.eval.test_episodes`` episodes of
``config.eval.split`` with shape ``config.eval.n_way/k_shot/n_query``, and adds
the result to ``workdir/results.json`` under ``"<split>_<N>way_<K>shot"``, e.g.
``"test_20way_1shot"``, keeping every other key. The config must describe the
same model as the one trained (same file, same model overrides).

With ``--config.eval.task=lake_runs --config.eval.lake_runs=PATH`` it scores
Lake et al.'s 20 one-shot runs instead, under the key ``"lake_runs"``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fsl_jax.algorithms import make_algorithm
from fsl_jax.data.datasets import load_dataset
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.data.lake_runs import N_WAY as LAKE_N_WAY
from fsl_jax.data.lake_runs import load_lake_runs
from fsl_jax.errors import ConfigError, FslError
from fsl_jax.evaluate import evaluate, evaluate_lake_runs
from fsl_jax.runtime import sharding
from fsl_jax.runtime.atomic_files import write_json_atomically
from fsl_jax.runtime.checkpointing import Checkpoints
from fsl_jax.state import TrainState, create_train_state, make_optimizer
from fsl_jax.steps import make_eval_step

TASKS = ("episodes", "lake_runs")
# Config sections that decide the parameters' shapes and meaning: these two, and the
# section named by the algorithm (config.protonet, config.matching or config.maml).
MODEL_KEYS = ("algorithm", "model")


def setting_key(split: str, shape: EpisodeShape) -> str:
  """The results.json key of one evaluation setting, e.g. "test_20way_1shot"."""
  return f"{split}_{shape.n_way}way_{shape.k_shot}shot"


def check_same_model(config: ml_collections.ConfigDict, results: dict, workdir: str) -> None:
  """Raises ConfigError if results.json says the run trained a different model."""
  trained = results.get("config")
  if not trained:
    return
  current = config.to_dict()

  def same(old, new) -> bool:
    # Only the keys the run recorded count: newer configs may add defaults.
    if isinstance(old, dict) and isinstance(new, dict):
      return all(k in new and same(v, new[k]) for k, v in old.items())
    return json.loads(json.dumps(old)) == json.loads(json.dumps(new))

  keys = (*MODEL_KEYS, trained.get("algorithm"))
  differ = [key for key in keys if key in trained and not same(trained[key], current.get(key))]
  if differ:
    raise ConfigError(
      f"{workdir} was trained with a different {', '.join(differ)} "
      f"({ {k: trained[k] for k in differ} }). Evaluate with the config file and "
      "model overrides it was trained with."
    )


def read_results(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _fix(workdir: str) -> str:
  return (
    f"Train first: python -m fsl_jax.main --mode=train --config=CONFIG --workdir={workdir}, "
    "or point --workdir at a folder that holds checkpoints/."
  )


def check_workdir(workdir: str) -> str:
  """Raises FslError naming the fix unless ``workdir/checkpoints`` exists; returns it."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(workdir):
    raise FslError(f"workdir {workdir} does not exist. {_fix(workdir)}")
  if not os.path.isdir(directory):
    raise FslError(f"{workdir} has no checkpoints/ folder. {_fix(workdir)}")
  return directory


def restore_best(
  config: ml_collections.ConfigDict, workdir: str, example_images
) -> tuple[TrainState, object]:
  """The best (else latest) checkpoint of ``workdir`` and the algorithm it belongs to."""
  directory = check_workdir(workdir)
  model, algorithm = make_algorithm(config)
  tx = make_optimizer(config)
  state = create_train_state(
    model, tx, jnp.asarray(example_images), config.seed, algorithm.init_params
  )
  checkpoints = Checkpoints(workdir)
  try:
    step = checkpoints.best_step()
    step = checkpoints.latest_step() if step is None else step
    if step is None:
      raise FslError(f"{directory} holds no complete checkpoint. {_fix(workdir)}")
    mesh = sharding.make_mesh()
    state = checkpoints.restore(step, jax.device_put(state, sharding.replicated(mesh)))
  finally:
    checkpoints.close()
  logging.info("Restored step %d from %s.", step, directory)
  return state, algorithm


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the best checkpoint as ``config.eval`` says; returns {key: result}.

  The result is also merged into ``workdir/results.json`` (written atomically
  by process 0), so earlier keys such as "test" and "val" stay.
  """
  started = time.perf_counter()
  task = config.eval.task
  if task not in TASKS:
    raise ConfigError(f"config.eval.task must be one of {TASKS}, got {task!r}.")
  if task == "lake_runs":
    if not config.eval.lake_runs:
      raise ConfigError(
        "config.eval.task=lake_runs needs --config.eval.lake_runs=PATH: all_runs.zip from "
        "the Omniglot repository (python/one-shot-classification/) or its unpacked folder."
      )
    if config.algorithm == "maml" and config.train.n_way != LAKE_N_WAY:
      raise ConfigError(
        f"Lake's runs are {LAKE_N_WAY}-way, but this MAML model's head has "
        f"config.train.n_way = {config.train.n_way} outputs. Train a {LAKE_N_WAY}-way MAML."
      )
  check_workdir(workdir)  # Before loading any data: fail in seconds.
  results = read_results(workdir)
  check_same_model(config, results, workdir)
  mesh = sharding.make_mesh()

  if task == "lake_runs":
    runs = load_lake_runs(config.eval.lake_runs, config.data.image_size)
    state, algorithm = restore_best(config, workdir, runs.support[0])
    eval_step = make_eval_step(algorithm.loss, LAKE_N_WAY, mesh, config.cpu_matmuls)
    key, result = "lake_runs", evaluate_lake_runs(eval_step, state, runs, mesh)
    result["path"] = os.path.abspath(config.eval.lake_runs)
  else:
    data = load_dataset(config.data)
    split = config.eval.split
    if split not in data:
      raise ConfigError(
        f"config.eval.split={split!r}, but split {config.data.split!r} has only {sorted(data)}."
      )
    shape = EpisodeShape(config.eval.n_way, config.eval.k_shot, config.eval.n_query)
    sampler = EpisodeSampler(data[split], shape, config.eval.seed, "config.eval")
    state, algorithm = restore_best(config, workdir, sampler.episode(0).support)
    eval_step = make_eval_step(algorithm.loss, shape.n_way, mesh, config.cpu_matmuls)
    key = setting_key(split, shape)
    result = evaluate(
      eval_step, state, sampler, config.eval.test_episodes, config.eval.batch_size, mesh
    )
    result.update(split=split, seed=config.eval.seed)
  result["checkpoint_step"] = int(jax.device_get(state.step))
  result["wall_seconds"] = time.perf_counter() - started
  if jax.process_index() == 0:
    # Read again just before writing, so a concurrent train-and-test is not undone.
    merged = {**read_results(workdir), key: result}
    write_json_atomically(os.path.join(workdir, "results.json"), merged)
    logging.info("%s: %s", key, summary(key, result))
  return {key: result}


def summary(key: str, result: dict) -> str:
  if key == "lake_runs":
    return (
      f"error {result['error_percent']:.2f}% +- {result['ci95_percent']:.2f}% over "
      f"{result['runs']} runs (checkpoint step {result['checkpoint_step']})"
    )
  return (
    f"{result['n_way']}-way {result['k_shot']}-shot accuracy {100 * result['accuracy']:.2f}% "
    f"+- {100 * result['ci95']:.2f}% over {result['episodes']} episodes "
    f"(checkpoint step {result['checkpoint_step']})"
  )
