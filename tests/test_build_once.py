"""Multi-process data preparation: process 0 builds, the others wait and read."""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_sharding import free_port, subprocess_env

CHILD = Path(__file__).parent / "build_once_child.py"


def test_process_zero_builds_an_empty_data_dir_and_the_other_reads_it(
  tmp_path, omniglot_manual_dir
):
  """Process 1 has no zips at all: it can only succeed by reading what process 0 built."""
  data_dir, no_zips = tmp_path / "tfds", tmp_path / "no_zips"
  no_zips.mkdir()
  port = free_port()
  env = {**subprocess_env(), "JAX_ENABLE_X64": "0"}
  children = [
    subprocess.Popen(
      [sys.executable, str(CHILD), str(port), str(i), str(data_dir), str(manual)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, manual in enumerate((omniglot_manual_dir, no_zips))
  ]
  outputs = [child.communicate(timeout=300) for child in children]
  for child, (_, err) in zip(children, outputs, strict=True):
    assert child.returncode == 0, err[-3000:]
  read = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert read[0] == read[1] and read[0]["classes"] == 136
  # One prepared dataset, and no leftover of a second, concurrent build.
  built = [p for p in data_dir.rglob("*") if p.is_dir() and "incomplete" in p.name]
  assert not built, built
  assert os.listdir(no_zips) == []
