"""--mode=evaluate: any checkpoint, any split and episode shape, and Lake's runs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from fixtures_lake_runs import expected_error_percent, write_lake_runs

from configs import maml_omniglot5w1s, matching_omniglot5w1s, proto_omniglot5w1s
from fsl_jax import evaluate_checkpoint as evaluate_checkpoint_module
from fsl_jax.algorithms import make_algorithm
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.errors import ConfigError, FslError
from fsl_jax.evaluate import evaluate
from fsl_jax.evaluate_checkpoint import evaluate_checkpoint, setting_key
from fsl_jax.runtime import sharding
from fsl_jax.runtime.checkpointing import Checkpoints
from fsl_jax.state import create_train_state, make_optimizer
from fsl_jax.steps import make_eval_step


def small_config(data_dir, manual_dir):
  config = proto_omniglot5w1s.get_config("quick")
  config.data.split = "small"
  config.data.data_dir = str(data_dir)
  config.data.manual_dir = str(manual_dir)
  config.model.filters = 8
  config.eval.test_episodes = 4
  config.eval.batch_size = 4
  return config


def fresh_state(config, seed):
  model, algorithm = make_algorithm(config)
  tx = make_optimizer(config)
  example = jnp.zeros((5, 28, 28, 1), jnp.uint8)
  return create_train_state(model, tx, example, seed, algorithm.init_params), algorithm


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, omniglot_small_data_dir, omniglot_manual_dir):
  """A workdir as train.py leaves it: two checkpoints (the first validated best), results.json.

  The params come from initialisation, which is all these tests need: the
  point is which checkpoint is restored and what is written where.
  """
  workdir = tmp_path_factory.mktemp("trained")
  config = small_config(omniglot_small_data_dir, omniglot_manual_dir)
  best, _ = fresh_state(config, seed=1)
  worse, _ = fresh_state(config, seed=2)
  checkpoints = Checkpoints(str(workdir))
  checkpoints.save(best.replace(step=jnp.asarray(3, jnp.int32)), val_accuracy=0.9)
  checkpoints.save(worse.replace(step=jnp.asarray(6, jnp.int32)), val_accuracy=0.5)
  checkpoints.close()
  results = {"test": {"accuracy": 0.5, "n_way": 5, "k_shot": 1}, "config": config.to_dict()}
  (workdir / "results.json").write_text(json.dumps(results))
  return workdir, config, best


def test_five_way_run_tested_twenty_way_from_the_best_checkpoint(trained_workdir, omniglot_small):
  workdir, config, best = trained_workdir
  config.eval.n_way = 20
  made = []

  def recording(*args, **kwargs):
    made.append(make_eval_step(*args, **kwargs))
    return made[-1]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluate_checkpoint_module, "make_eval_step", recording)
    out = evaluate_checkpoint(config, str(workdir))
  key = setting_key("test", EpisodeShape(20, 1, 15))
  assert key == "test_20way_1shot" and list(out) == [key]
  on_disk = json.loads((workdir / "results.json").read_text())
  assert set(on_disk) == {"test", "config", key}  # Earlier keys are kept.
  assert on_disk["test"]["accuracy"] == 0.5
  result = on_disk[key]
  assert (result["n_way"], result["k_shot"], result["n_query"]) == (20, 1, 15)
  assert (result["episodes"], result["split"], result["checkpoint_step"]) == (4, "test", 3)
  # The same figure as evaluating the best (step 3) params directly.
  sampler = EpisodeSampler(omniglot_small["test"], EpisodeShape(20, 1, 15), config.eval.seed)
  mesh = sharding.make_mesh()
  state = jax.device_put(best, sharding.replicated(mesh))
  direct = evaluate(made[0], state, sampler, 4, 4, mesh)  # The same jitted step: no compile.
  assert result["accuracy"] == pytest.approx(direct["accuracy"], abs=1e-6)
  assert not os.path.exists(workdir / "results.json.tmp")


def test_lake_runs_task_writes_per_run_errors(trained_workdir, tmp_path):
  workdir, config, _ = trained_workdir
  config.eval.task = "lake_runs"
  config.eval.lake_runs = write_lake_runs(tmp_path / "all_runs.zip", as_zip=True)
  evaluate_checkpoint(config, str(workdir))
  on_disk = json.loads((workdir / "results.json").read_text())
  lake = on_disk["lake_runs"]
  assert lake["per_run_error_percent"] == expected_error_percent()
  assert lake["error_percent"] == pytest.approx(7.5)  # (0 + 5 + 10 + 15) / 4.
  assert lake["checkpoint_step"] == 3 and "test" in on_disk


def test_missing_workdir_or_checkpoints_names_the_fix(tmp_path, trained_workdir):
  _, config, _ = trained_workdir
  with pytest.raises(FslError, match=r"does not exist.*Train first"):
    evaluate_checkpoint(config, str(tmp_path / "nowhere"))
  with pytest.raises(FslError, match=r"no checkpoints/ folder.*--mode=train"):
    evaluate_checkpoint(config, str(tmp_path))


def test_a_different_model_is_refused(trained_workdir):
  workdir, config, _ = trained_workdir
  config.model.filters = 16
  with pytest.raises(ConfigError, match="different model"):
    evaluate_checkpoint(config, str(workdir))


@pytest.mark.parametrize(
  "key, value",
  [("distance", "euclidean"), ("cosine_scale", 1.0), ("fce", True), ("unrolling_steps", 3)],
)
def test_matching_networks_trained_with_other_settings_are_refused(key, value):
  trained = matching_omniglot5w1s.get_config("quick")
  results = {"config": trained.to_dict()}
  config = matching_omniglot5w1s.get_config("quick")
  evaluate_checkpoint_module.check_same_model(config, results, "workdir")  # The same: accepted.
  assert config.matching[key] != value
  config.matching[key] = value
  with pytest.raises(ConfigError, match=f"different matching.*{key}"):
    evaluate_checkpoint_module.check_same_model(config, results, "workdir")


def test_protonet_trained_with_another_distance_is_refused():
  trained = proto_omniglot5w1s.get_config("quick")
  config = proto_omniglot5w1s.get_config("quick")
  config.protonet.distance = "cosine"
  with pytest.raises(ConfigError, match="different protonet"):
    evaluate_checkpoint_module.check_same_model(config, {"config": trained.to_dict()}, "workdir")


def test_lake_runs_need_a_twenty_way_maml_and_a_path(tmp_path):
  config = maml_omniglot5w1s.get_config("quick")
  config.eval.task = "lake_runs"
  with pytest.raises(ConfigError, match="lake_runs=PATH"):
    evaluate_checkpoint(config, str(tmp_path))
  config.eval.lake_runs = str(tmp_path)
  with pytest.raises(ConfigError, match="Train a 20-way MAML"):
    evaluate_checkpoint(config, str(tmp_path))


def test_cli_evaluate_mode_reports_a_missing_workdir(tmp_path):
  command = [
    sys.executable,
    "-m",
    "fsl_jax.main",
    "--mode=evaluate",
    "--config=configs/proto_omniglot5w1s.py:quick",
    f"--workdir={tmp_path / 'missing'}",
  ]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  assert "does not exist" in done.stderr and "--mode=train" in done.stderr
