"""Bad --config flags: one line naming the key and the fix, never a traceback."""

import os
import subprocess
import sys

import pytest

from fsl_jax import config_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/proto_omniglot5w1s.py:quick"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # Config paths are relative to the repository.


@pytest.mark.parametrize(
  "flag, expected",
  [
    (
      "--config.train.num_stepz=3",
      "unknown config key --config.train.num_stepz: config.train has no 'num_stepz'. "
      "Did you mean --config.train.num_steps?",
    ),
    ("--config.trian.n_way=5", "config has no 'trian'. Did you mean --config.train?"),
    ("--config.train.shuffle=1", "Known keys of config.train: checkpoint_every,"),
    (
      "--config.train.num_steps=abc",
      "--config.train.num_steps=abc: config.train.num_steps must be an int, "
      "e.g. --config.train.num_steps=6.",
    ),
    ("--config.optim.learning_rate=1e-3x", "config.optim.learning_rate must be a number"),
    (
      "--config.data.train_rotations=abc",
      "config.data.train_rotations must be a tuple of ints, "
      "e.g. --config.data.train_rotations='(0,90,180,270)'.",
    ),
  ],
)
def test_a_bad_override_is_named_with_its_fix(flag, expected):
  config = config_check.load_config_file(CONFIG.removeprefix("--config="))
  message = config_check.check_overrides(["main", CONFIG, flag], config)
  assert message is not None and expected in message


@pytest.mark.parametrize(
  "flag", ["--config.train.num_steps=12", "--config.data.train_rotations=(0,90)", "--noconfig.x"]
)
def test_good_overrides_pass(flag):
  config = config_check.load_config_file(CONFIG.removeprefix("--config="))
  if flag == "--noconfig.x":
    assert "no 'x'" in config_check.check_overrides(["main", CONFIG, flag], config)
  else:
    assert config_check.check_overrides(["main", CONFIG, flag], config) is None


@pytest.mark.parametrize(
  "spec, expected",
  [
    ("configs/no_such_config.py", "no such file. Pass a file from configs/"),
    ("configs/proto_omniglot5w1s.py:quik", "unknown config argument(s) ['quik']"),
  ],
)
def test_a_config_file_that_does_not_load(spec, expected):
  message = config_check.explain(["main", f"--config={spec}"], OSError("absl's text"))
  assert expected in message and "\n" not in message


def test_the_cli_prints_one_line_and_exits_2():
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "fsl_jax.main",
      CONFIG,
      "--workdir=/tmp/x",
      "--config.train.num_steps=a",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == config_check.EXIT_CODE == 2
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert lines == [
    "error: --config.train.num_steps=a: config.train.num_steps must be an int, "
    "e.g. --config.train.num_steps=6."
  ]
  assert "Traceback" not in result.stderr
