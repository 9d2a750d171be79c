"""End-to-end runs of ProtoNets, Matching Networks and MAML on a synthetic miniImageNet.

The copy has Ravi & Larochelle's 100 classes and file names, 20 JPEGs per class (enough
for 5-shot with 15 queries), in the CSV + images layout. Its images are
``tinted_pattern``s: each class has its own tint under a brightness pattern of each
image, which an untrained conv-4 cannot see through and a trained one learns to. It is
built at 84x84, then loaded at 28x28 (``config.data.image_size``) and trained with 8
filters: at 84x84 with 64 filters a ``:quick`` ProtoNets run (30-way training episodes)
took 9 minutes on two shared CPU cores. The MAML run is first order: second order
compiles about 25% longer here and is tested on Omniglot (test_train_end_to_end.py,
test_maml.py). The episode shapes are the ``:quick`` config's; each run trains 40 steps
at learning rate 3e-3 instead of 6 (``LEARN``), which costs little at this size, and
its test accuracy must beat a threshold that the same run with learning rate 0 does
not reach (the figures are next to each threshold).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_mini_imagenet import tinted_pattern, write_synthetic_mini_imagenet
from learning_checks import assert_learnt

from configs import matching_mini5w1s, proto_mini5w1s
from fsl_jax import train
from fsl_jax.data.class_images import MANUAL_DIR_ENV

IMAGE_SIZE = 28
FILTERS = 8
REPO = Path(__file__).resolve().parents[1]
# What each run changes in its ``:quick`` config so that it learns: 40 steps at 3e-3, val
# at steps 20 and 40, test over 100 episodes (95% CI about +-0.02).
LEARN = {
  "train.num_steps": 40,
  "train.log_every": 10,
  "train.eval_every": 20,
  "train.checkpoint_every": 20,
  "optim.learning_rate": 3e-3,
  "eval.test_episodes": 100,
}
# Test accuracy (100 episodes) of the runs below, seeds 0 and 1; learning rate 0 (seed 0)
# gives what the untrained model reaches, and on the old images, whose classes have
# nothing in common, every run stays near chance (0.2).
PROTO_THRESHOLD = 0.60  # Normal runs 0.765-0.813; learning rate 0: 0.397.
MATCHING_THRESHOLD = 0.45  # Normal runs 0.648-0.685; learning rate 0: 0.263.
MAML_THRESHOLD = 0.58  # Normal runs 0.727-0.757; learning rate 0: 0.438.


def learning(config):
  """config with the LEARN overrides."""
  for key, value in LEARN.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


@pytest.fixture(scope="module")
def mini_dirs(tmp_path_factory, shared_data: Path):
  """(manual_dir, data_dir): the synthetic copy, and its prepared tfds dataset (built lazily)."""
  root = tmp_path_factory.mktemp("mini_e2e")
  ravi_dir = shared_data / "mini_imagenet" / "ravi_split"
  write_synthetic_mini_imagenet(
    root, ravi_dir, 20, layouts=("csv",), jpeg_size=(84, 84), draw=tinted_pattern
  )
  return root / "csv", root / "data"


@pytest.fixture(autouse=True)
def _no_manual_dir_env(monkeypatch):
  monkeypatch.delenv(MANUAL_DIR_ENV, raising=False)


def read_results(workdir: Path) -> dict:
  return json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_protonet_trains_30_way_and_learns_5_way(mini_dirs, tmp_path):
  manual_dir, data_dir = mini_dirs
  config = learning(proto_mini5w1s.get_config("quick"))
  config.data.manual_dir, config.data.data_dir = str(manual_dir), str(data_dir)
  config.data.image_size, config.model.filters = IMAGE_SIZE, FILTERS
  results = train.train_and_evaluate(config, str(tmp_path))

  on_disk = read_results(tmp_path)
  assert on_disk == json.loads(json.dumps(results))
  assert on_disk["config"]["data"]["dataset"] == "mini_imagenet"
  assert on_disk["config"]["train"]["n_way"] == 30 and on_disk["config"]["train"]["n_query"] == 15
  test = on_disk["test"]
  assert (test["n_way"], test["k_shot"], test["n_query"], test["episodes"]) == (5, 1, 15, 100)
  assert_learnt(test, PROTO_THRESHOLD)
  assert on_disk["val"]["episodes"] == 10 and on_disk["checkpoint_step"] in (20, 40)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == [10, 20, 30, 40]


@pytest.mark.slow
def test_maml_learns_from_the_command_line(mini_dirs, tmp_path):
  manual_dir, data_dir = mini_dirs
  workdir = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != MANUAL_DIR_ENV}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "fsl_jax.main",
      "--config=configs/maml_mini5w5s.py:quick",
      f"--config.data.manual_dir={manual_dir}",
      f"--config.data.data_dir={data_dir}",
      f"--config.data.image_size={IMAGE_SIZE}",
      f"--config.model.filters={FILTERS}",
      "--config.maml.first_order=True",
      *(f"--config.{key}={value}" for key, value in LEARN.items()),
      f"--workdir={workdir}",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  results = read_results(workdir)
  config = results["config"]
  assert config["algorithm"] == "maml" and config["data"]["dataset"] == "mini_imagenet"
  assert config["maml"]["first_order"] is True and config["maml"]["test_inner_steps"] == 10
  test = results["test"]
  assert (test["n_way"], test["k_shot"], test["n_query"], test["episodes"]) == (5, 5, 15, 100)
  assert config["optim"]["learning_rate"] == LEARN["optim.learning_rate"]
  assert_learnt(test, MAML_THRESHOLD)


@pytest.mark.slow
def test_matching_with_fce_learns(mini_dirs, tmp_path):
  manual_dir, data_dir = mini_dirs
  config = learning(matching_mini5w1s.get_config("quick"))
  assert config.matching.fce  # On for miniImageNet, as in the paper.
  config.data.manual_dir, config.data.data_dir = str(manual_dir), str(data_dir)
  config.data.image_size, config.model.filters = IMAGE_SIZE, FILTERS
  train.train_and_evaluate(config, str(tmp_path))
  results = read_results(tmp_path)
  assert results["config"]["algorithm"] == "matching"
  assert results["config"]["matching"]["fce"] is True
  test = results["test"]
  assert (test["n_way"], test["k_shot"], test["n_query"], test["episodes"]) == (5, 1, 15, 100)
  assert_learnt(test, MATCHING_THRESHOLD)
