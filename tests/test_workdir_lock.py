"""One run per workdir: a second is refused, a dead run's lock file is not."""

import os
import signal
import subprocess
import sys

import pytest

from configs import proto_omniglot5w1s
from fsl_jax import train
from fsl_jax.runtime.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_holder_is_refused_with_the_owner_named(tmp_path):
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(WorkdirLockedError) as error, WorkdirLock(str(tmp_path)):
      pass
    message = str(error.value)
    assert f"pid {os.getpid()} on host" in message and str(tmp_path) in message
    assert "another --workdir" in message
  with WorkdirLock(str(tmp_path)):  # Released on exit: free again.
    pass


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
  code = (
    "import os, signal, sys; from fsl_jax.runtime.workdir_lock import WorkdirLock; "
    "WorkdirLock(sys.argv[1]).__enter__(); os.kill(os.getpid(), signal.SIGKILL)"
  )
  child = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path)], env={**os.environ, "PYTHONPATH": REPO}
  )
  assert child.returncode == -signal.SIGKILL
  assert "pid" in (tmp_path / LOCK_NAME).read_text()  # The stale file is there...
  with WorkdirLock(str(tmp_path)):  # ...and does not block.
    pass


def test_training_and_the_cli_refuse_a_workdir_in_use(tmp_path):
  config = proto_omniglot5w1s.get_config("quick")
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(WorkdirLockedError, match="is in use by another run"):
      train.train_and_evaluate(config, str(tmp_path))
    cli = subprocess.run(
      [
        sys.executable,
        "-m",
        "fsl_jax.main",
        "--config=configs/proto_omniglot5w1s.py:quick",
        f"--workdir={tmp_path}",
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=300,
    )
  assert cli.returncode == 2, cli.stderr[-2000:]
  assert f"error: workdir {tmp_path} is in use by another run (pid {os.getpid()}" in cli.stderr
  assert "Traceback" not in cli.stderr
  assert not (tmp_path / "checkpoints").exists()
