"""Bad inputs reach the user as one ``error:`` line from the CLI, and lose nothing.

The data layer's own tests (test_omniglot_builder.py) cover each damaged file in
detail; these check that the errors come out of training and the CLI cleanly.
"""

import os
import shutil
import subprocess
import sys

import pytest

from configs import proto_omniglot5w1s
from fsl_jax import train
from fsl_jax.data import omniglot
from fsl_jax.errors import EpisodeShapeError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_impossible_episode_shape_fails_before_anything_is_written(
  tmp_path, monkeypatch, omniglot_small
):
  monkeypatch.setattr(train, "load_dataset", lambda data: omniglot_small)
  config = proto_omniglot5w1s.get_config("quick")
  config.train.k_shot, config.train.n_query = 15, 10  # 25 > 20 drawings per class.
  with pytest.raises(EpisodeShapeError, match="Lower n_query to at most 5"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_cli_names_a_truncated_zip_and_where_to_get_it(tmp_path, omniglot_manual_dir):
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  shutil.copy(omniglot_manual_dir / omniglot.SMALL1.filename, manual_dir)
  data = (omniglot_manual_dir / omniglot.SMALL2.filename).read_bytes()
  truncated = manual_dir / omniglot.SMALL2.filename
  truncated.write_bytes(data[: len(data) // 3])
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "fsl_jax.main",
      "--config=configs/proto_omniglot5w1s.py:quick",
      f"--workdir={tmp_path / 'run'}",
      "--config.data.split=small",
      f"--config.data.manual_dir={manual_dir}",
      f"--config.data.data_dir={tmp_path / 'tfds'}",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert f"error: {truncated} is not the official {omniglot.SMALL2.filename}" in result.stderr
  assert "corrupt, truncated or a different release" in result.stderr
  assert omniglot.SMALL2.url in result.stderr and "Traceback" not in result.stderr
  assert truncated.stat().st_size == len(data) // 3  # The user's file is left as it was.
