"""train_and_evaluate end to end on the real small Omniglot split, and the CLI.

The ProtoNets and MAML runs are short trainings that must learn: their test accuracy
must beat a threshold set above what the same run reaches untrained (learning rate 0,
or the gradient stopped), and a test per algorithm shows that the untrained run fails
the check (learning_checks.py).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from fixtures_omniglot import on_small_split
from learning_checks import assert_fails_with_gradient_stopped, assert_learnt

from configs import maml_omniglot5w1s, proto_omniglot5w1s
from fsl_jax import train
from fsl_jax.runtime.checkpointing import Checkpoints


def quick_config(data_dir, manual_dir, num_steps):
  config = on_small_split(proto_omniglot5w1s.get_config("quick"), data_dir, manual_dir)
  config.train.n_way = 20  # Smaller than 60 to keep the test fast.
  config.train.num_steps = num_steps
  return config


def run_recording_steps(config, workdir):
  """train_and_evaluate, also returning the step functions it made.

  "train" lists the compiled train steps (one per ``train`` call; a compiled step
  cannot recompile: other shapes raise), "eval" is the jitted eval step.
  """
  made = {"train": []}

  def compile_train_step(*args, **kwargs):
    made["train"].append(compile_original(*args, **kwargs))
    return made["train"][-1]

  def make_eval_step(*args, **kwargs):
    made["eval"] = make_eval_original(*args, **kwargs)
    return made["eval"]

  compile_original, make_eval_original = train.compile_train_step, train.make_eval_step
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train, "compile_train_step", compile_train_step)
    patch.setattr(train, "make_eval_step", make_eval_step)
    results = train.train_and_evaluate(config, str(workdir))
  return results, made


def compiled_once(steps) -> bool:
  """One compiled train step, and one trace of the eval step."""
  return len(steps["train"]) == 1 and steps["eval"]._cache_size() == 1


# ProtoNets' learning run (full_run): 80 steps of 20-way 1-shot training, then 5-way
# 1-shot test over 200 episodes. Measured test accuracy (95% CI about +-0.012-0.014):
# normal runs 0.864-0.868 (seeds 0-2; 0.828 after 60 steps, 0.876-0.882 after 100);
# learning rate 0: 0.531 (seed 0; 0.513-0.540 for seeds 0-2 after 100 steps), what the
# untrained conv-4's random features reach; gradient stopped (gradient_stopped, as in the
# test below): 0.531, the same run as learning rate 0, since Adam then leaves the params
# at their init; gradient negated (ascending the loss, 100 steps): 0.346.
PROTO_THRESHOLD = 0.70
PROTO_STEPS = 80


def learning_config(data_dir, manual_dir):
  """full_run's config: enough 20-way steps to learn; val at steps 30, 60 and 80."""
  config = quick_config(data_dir, manual_dir, num_steps=PROTO_STEPS)
  config.train.log_every = 20
  config.train.eval_every = config.train.checkpoint_every = 30
  config.eval.val_episodes = 20
  config.eval.test_episodes = 200  # 95% CI about +-0.012, small against the margins.
  return config


def validated_once(config):
  """config, validating only at the end: a run whose params never change has nothing to
  choose between, and its test accuracy does not depend on the val split."""
  config.train.eval_every = config.train.checkpoint_every = config.train.num_steps
  return config


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, omniglot_small_data_dir, omniglot_manual_dir):
  workdir = tmp_path_factory.mktemp("full_run")
  config = learning_config(omniglot_small_data_dir, omniglot_manual_dir)
  results, steps = run_recording_steps(config, workdir)
  return workdir, results, steps


@pytest.mark.slow
def test_each_step_function_compiled_exactly_once(full_run):
  _, _, steps = full_run
  # 80 train steps; val three times and test once, in batches of 10 episodes.
  assert compiled_once(steps)


def test_protonets_learn_beyond_their_untrained_accuracy(full_run):
  _, results, _ = full_run
  assert_learnt(results["test"], PROTO_THRESHOLD)


@pytest.mark.slow
def test_protonets_learning_check_fails_with_the_gradient_stopped(
  tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  """The check above can fail: the same run, untrained, stays below the threshold."""
  config = validated_once(learning_config(omniglot_small_data_dir, omniglot_manual_dir))
  assert_fails_with_gradient_stopped(config, tmp_path, PROTO_THRESHOLD, room=0.1)


# MAML's learning run: second order, Finn et al.'s strided conv-4, meta-batch 4, 200 steps
# at meta learning rate 3e-3 (the config's 1e-3 reached 0.696 after 200 steps), then 5-way
# 1-shot test over 200 episodes with 3 inner steps. Measured test accuracy (95% CI about
# +-0.013-0.014): normal runs 0.727-0.750 (seeds 0-2; 0.739 for seed 0); learning rate 0:
# 0.495-0.508 (seeds 0-2), the inner loop adapting the untrained model; gradient stopped:
# 0.501 (seed 0), the same run as learning rate 0.
MAML_THRESHOLD = 0.62


def maml_learning_config(data_dir, manual_dir):
  config = on_small_split(maml_omniglot5w1s.get_config("quick"), data_dir, manual_dir)
  config.train.num_steps = 200
  config.train.log_every = 50
  config.train.eval_every = config.train.checkpoint_every = 100
  config.optim.learning_rate = 3e-3
  config.eval.test_episodes = 200
  return config


@pytest.mark.slow
def test_maml_learns_with_one_compile_per_step_function(
  tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  config = maml_learning_config(omniglot_small_data_dir, omniglot_manual_dir)
  results, steps = run_recording_steps(config, tmp_path)
  assert compiled_once(steps)
  test = results["test"]
  assert (test["n_way"], test["k_shot"], test["episodes"]) == (5, 1, 200)
  assert results["config"]["maml"]["test_inner_steps"] == 3
  assert_learnt(test, MAML_THRESHOLD)


@pytest.mark.slow
def test_maml_learning_check_fails_with_the_gradient_stopped(
  tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  """The check above can fail: the same run with its meta-gradient cut stays below it."""
  config = validated_once(maml_learning_config(omniglot_small_data_dir, omniglot_manual_dir))
  assert_fails_with_gradient_stopped(config, tmp_path, MAML_THRESHOLD, room=0.06)


def test_results_json_schema_and_values(full_run):
  workdir, results, _ = full_run
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  test = results["test"]
  assert test["ci95"] > 0 and test["loss"] > 0
  assert (test["episodes"], test["n_way"], test["k_shot"], test["n_query"]) == (200, 5, 1, 15)
  assert results["val"]["episodes"] == 20
  assert results["config"]["data"]["split"] == "small"


def test_the_checkpoint_tested_is_the_best_on_validation(full_run):
  workdir, results, _ = full_run
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  val_rows = [r for r in rows if r["split"] == "val"]
  assert [r["step"] for r in val_rows] == [30, 60, 80]
  best = max(val_rows, key=lambda r: r["accuracy"])  # First of equals wins, as in Orbax.
  assert results["val"]["step"] == best["step"] == results["checkpoint_step"]
  assert [r["step"] for r in rows if r["split"] == "train"] == [20, 40, 60, 80]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_resumed_run_ends_with_bitwise_identical_params(
  full_run, tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  """full_run, as if killed after its checkpoint at step 60 and run again, ends the same."""
  full_workdir, _, _ = full_run
  workdir = tmp_path / "resumed"
  shutil.copytree(full_workdir, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(PROTO_STEPS))  # Its later checkpoint is lost.
  config = learning_config(omniglot_small_data_dir, omniglot_manual_dir)
  train.train_and_evaluate(config, str(workdir))
  full, resumed = Checkpoints(str(full_workdir)), Checkpoints(str(workdir))
  assert full.latest_step() == resumed.latest_step() == PROTO_STEPS
  # The second run's TensorBoard file hides the first's events after step 60.
  assert len(list((workdir / "tensorboard").glob("*.resumed_after_60"))) == 1
  like = full.manager.restore(PROTO_STEPS)  # Raw pytree, no target needed.
  other = resumed.manager.restore(PROTO_STEPS)
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
