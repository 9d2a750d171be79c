"""End-to-end ``:quick`` runs of ProtoNets, Matching Networks and MAML on a synthetic miniImageNet.

The copy has Ravi & Larochelle's 100 classes and file names, 20 JPEGs per class (enough
for 5-shot with 15 queries), in the CSV + images layout. It is built at 84x84, then
loaded at 28x28 (``config.data.image_size``) and trained with 8 filters: at 84x84 with
64 filters a ``:quick`` ProtoNets run (30-way training episodes) took 9 minutes on two
shared CPU cores. The MAML run is first order: second order compiles about 25% longer
here and is tested on Omniglot (test_train_end_to_end.py, test_maml.py). Everything
else (episode shapes, steps, evaluation) is the config's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_mini_imagenet import write_synthetic_mini_imagenet

from configs import matching_mini5w1s, proto_mini5w1s
from fsl_jax import train
from fsl_jax.data.class_images import MANUAL_DIR_ENV

IMAGE_SIZE = 28
FILTERS = 8
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mini_dirs(tmp_path_factory, shared_data: Path):
  """(manual_dir, data_dir): the synthetic copy, and its prepared tfds dataset (built lazily)."""
  root = tmp_path_factory.mktemp("mini_e2e")
  ravi_dir = shared_data / "mini_imagenet" / "ravi_split"
  write_synthetic_mini_imagenet(root, ravi_dir, 20, layouts=("csv",), jpeg_size=(84, 84))
  return root / "csv", root / "data"


@pytest.fixture(autouse=True)
def _no_manual_dir_env(monkeypatch):
  monkeypatch.delenv(MANUAL_DIR_ENV, raising=False)


def read_results(workdir: Path) -> dict:
  return json.loads((workdir / "results.json").read_text())


def test_protonet_quick_trains_30_way_and_tests_5_way(mini_dirs, tmp_path):
  manual_dir, data_dir = mini_dirs
  config = proto_mini5w1s.get_config("quick")
  config.data.manual_dir, config.data.data_dir = str(manual_dir), str(data_dir)
  config.data.image_size, config.model.filters = IMAGE_SIZE, FILTERS
  results = train.train_and_evaluate(config, str(tmp_path))

  on_disk = read_results(tmp_path)
  assert on_disk == json.loads(json.dumps(results))
  assert on_disk["config"]["data"]["dataset"] == "mini_imagenet"
  assert on_disk["config"]["train"]["n_way"] == 30 and on_disk["config"]["train"]["n_query"] == 15
  test = on_disk["test"]
  assert (test["n_way"], test["k_shot"], test["n_query"], test["episodes"]) == (5, 1, 15, 20)
  assert 0.0 <= test["accuracy"] <= 1.0 and test["ci95"] > 0
  assert on_disk["val"]["episodes"] == 10 and on_disk["checkpoint_step"] in (3, 6)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6]


def test_maml_quick_runs_from_the_command_line(mini_dirs, tmp_path):
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
  assert (test["n_way"], test["k_shot"], test["n_query"], test["episodes"]) == (5, 5, 15, 20)
  assert 0.0 <= test["accuracy"] <= 1.0 and test["ci95"] > 0


def test_matching_with_fce_quick_trains_and_tests(mini_dirs, tmp_path):
  manual_dir, data_dir = mini_dirs
  config = matching_mini5w1s.get_config("quick")
  assert config.matching.fce  # On for miniImageNet, as in the paper.
  config.data.manual_dir, config.data.data_dir = str(manual_dir), str(data_dir)
  config.data.image_size, config.model.filters = IMAGE_SIZE, FILTERS
  train.train_and_evaluate(config, str(tmp_path))
  results = read_results(tmp_path)
  assert results["config"]["algorithm"] == "matching"
  assert results["config"]["matching"]["fce"] is True
  test = results["test"]
  assert (test["n_way"], test["k_shot"], test["n_query"], test["episodes"]) == (5, 1, 15, 20)
  assert 0.0 <= test["accuracy"] <= 1.0 and test["ci95"] > 0
