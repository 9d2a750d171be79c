"""train_and_evaluate end to end on the real small Omniglot split, and the CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import maml_omniglot5w1s, proto_omniglot5w1s
from fsl_jax import train
from fsl_jax.runtime.checkpointing import Checkpoints


def quick_config(data_dir, manual_dir, num_steps):
  config = proto_omniglot5w1s.get_config("quick")
  config.data.split = "small"
  config.data.data_dir = str(data_dir)
  config.data.manual_dir = str(manual_dir)
  config.train.n_way = 20  # Smaller than 60 to keep the test fast.
  config.train.num_steps = num_steps
  return config


def run_recording_steps(config, workdir):
  """train_and_evaluate, also returning the jitted train and eval step functions it made."""
  made = {}

  def recorder(name, make):
    def wrapped(*args, **kwargs):
      made[name] = make(*args, **kwargs)
      return made[name]

    return wrapped

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train, "make_train_step", recorder("train", train.make_train_step))
    patch.setattr(train, "make_eval_step", recorder("eval", train.make_eval_step))
    results = train.train_and_evaluate(config, str(workdir))
  return results, made


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, omniglot_small_data_dir, omniglot_manual_dir):
  workdir = tmp_path_factory.mktemp("full_run")
  config = quick_config(omniglot_small_data_dir, omniglot_manual_dir, num_steps=6)
  results, steps = run_recording_steps(config, workdir)
  return workdir, results, steps


def test_each_step_function_compiled_exactly_once(full_run):
  _, _, steps = full_run
  # 6 train steps; val twice and test once, in batches of 10 episodes.
  assert steps["train"]._cache_size() == 1
  assert steps["eval"]._cache_size() == 1


def test_maml_end_to_end_with_one_compile_per_step_function(
  tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  config = maml_omniglot5w1s.get_config("quick")
  config.data.split = "small"
  config.data.data_dir = str(omniglot_small_data_dir)
  config.data.manual_dir = str(omniglot_manual_dir)
  results, steps = run_recording_steps(config, tmp_path)
  assert steps["train"]._cache_size() == 1 and steps["eval"]._cache_size() == 1
  test = results["test"]
  assert (test["n_way"], test["k_shot"], test["episodes"]) == (5, 1, 20)
  assert 0.0 <= test["accuracy"] <= 1.0
  assert results["config"]["maml"]["test_inner_steps"] == 3


def test_results_json_schema_and_values(full_run):
  workdir, results, _ = full_run
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  test = results["test"]
  assert 0.0 <= test["accuracy"] <= 1.0 and test["ci95"] > 0
  assert (test["episodes"], test["n_way"], test["k_shot"], test["n_query"]) == (20, 5, 1, 15)
  assert results["val"]["episodes"] == 10
  assert results["config"]["data"]["split"] == "small"


def test_the_checkpoint_tested_is_the_best_on_validation(full_run):
  workdir, results, _ = full_run
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  val_rows = [r for r in rows if r["split"] == "val"]
  assert [r["step"] for r in val_rows] == [3, 6]
  best = max(val_rows, key=lambda r: r["accuracy"])  # First of equals wins, as in Orbax.
  assert results["val"]["step"] == best["step"] == results["checkpoint_step"]
  assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_resumed_run_ends_with_bitwise_identical_params(
  full_run, tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  full_workdir, _, _ = full_run
  train.train_and_evaluate(
    quick_config(omniglot_small_data_dir, omniglot_manual_dir, num_steps=3), str(tmp_path)
  )
  train.train_and_evaluate(
    quick_config(omniglot_small_data_dir, omniglot_manual_dir, num_steps=6), str(tmp_path)
  )
  full, resumed = Checkpoints(str(full_workdir)), Checkpoints(str(tmp_path))
  assert full.latest_step() == resumed.latest_step() == 6
  # The second run's TensorBoard file hides the first's events after step 3.
  assert len(list((tmp_path / "tensorboard").glob("*.resumed_after_3"))) == 1
  like = full.manager.restore(6)  # Raw pytree, no target needed.
  other = resumed.manager.restore(6)
  leaves = jax.tree.leaves(like)
  assert leaves
  jax.tree.map(np.testing.assert_array_equal, like, other)
  full.close()
  resumed.close()


def run_main(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "fsl_jax.main", *args],
    capture_output=True,
    text=True,
    env={**os.environ, **(env or {})},
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    timeout=300,
  )


def test_cli_rejects_a_typo_in_a_config_key(tmp_path):
  result = run_main(
    "--config=configs/proto_omniglot5w1s.py:quick",
    f"--workdir={tmp_path}",
    "--config.data.splt=small",
  )
  assert result.returncode != 0
  assert "Did you mean" in result.stderr and "split" in result.stderr


def test_cli_names_the_fix_for_a_wrong_manual_dir(tmp_path):
  result = run_main(
    "--config=configs/proto_omniglot5w1s.py:quick",
    f"--workdir={tmp_path / 'run'}",
    "--config.data.split=small",
    f"--config.data.manual_dir={tmp_path / 'no_such_folder'}",
  )
  assert result.returncode == 2
  assert "is not a folder" in result.stderr and "--config.data.manual_dir" in result.stderr
  assert "Traceback" not in result.stderr


def test_cli_says_which_files_to_supply_for_mini_imagenet(tmp_path):
  result = run_main("--config=configs/maml_mini5w5s.py", f"--workdir={tmp_path}")
  assert result.returncode == 2
  for name in ("train.csv", "val.csv", "test.csv", "images/", "--config.data.manual_dir"):
    assert name in result.stderr
  assert "Traceback" not in result.stderr


def test_max_minutes_stops_training_then_validates_and_tests(
  tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  config = quick_config(omniglot_small_data_dir, omniglot_manual_dir, num_steps=1000)
  config.train.max_minutes = 1e-6  # Spent by the first check, at step log_every = 2.
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["checkpoint_step"] == 2
  assert results["val"]["step"] == 2 and results["test"]["episodes"] == 20
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["split"]) for r in rows] == [(2, "train"), (2, "val")]
