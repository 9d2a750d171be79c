"""Real processes killed with SIGKILL (also mid-save) and SIGTERM, then resumed.

One chain of child processes trains the same run in one workdir; their final
params must be bitwise equal to an uninterrupted in-process run. Kill points
are random; the seed is printed and named in every assertion message, and
$FSL_FAULT_SEED=SEED replays it.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import proto_omniglot5w1s
from fsl_jax import train
from fsl_jax.runtime.checkpointing import Checkpoints
from fsl_jax.runtime.preemption import PREEMPTED_EXIT_CODE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 16
OVERRIDES = {
  "data.split": "small",
  "model.filters": 8,
  "model.num_blocks": 2,
  "train.n_way": 10,
  "train.num_steps": NUM_STEPS,
  "train.log_every": 1,  # A progress line per step tells the test where the child is.
  "train.eval_every": 8,
  "train.checkpoint_every": 2,
  "eval.val_episodes": 5,
  "eval.test_episodes": 5,
  "eval.batch_size": 5,
}


def chain_config(data_dir):
  config = proto_omniglot5w1s.get_config("quick")
  for key, value in OVERRIDES.items():
    section, name = key.split(".")
    config[section][name] = value
  config.data.data_dir = str(data_dir)
  return config


def start_child(workdir, data_dir, **env):
  # Children share a compilation cache: the first compiles, the others load (same code).
  cache = {
    "JAX_COMPILATION_CACHE_DIR": str(workdir.parent / "jax_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  return subprocess.Popen(
    [
      sys.executable,
      os.path.join(REPO, "tests", "fault_child.py"),
      "--config=configs/proto_omniglot5w1s.py:quick",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      *flags,
    ],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **cache, **env},
    stderr=subprocess.PIPE,
    stdout=subprocess.DEVNULL,
    text=True,
  )


def wait_for(child, needle: str, timeout: float = 240) -> list[str]:
  """Reads the child's stderr until a line contains ``needle``; returns the lines read."""
  lines, deadline = [], time.monotonic() + timeout
  for line in child.stderr:
    lines.append(line)
    if needle in line:
      return lines
    if time.monotonic() > deadline:
      break
  child.kill()
  raise AssertionError(f"never saw {needle!r}; the child said:\n{''.join(lines[-30:])}")


def kill(child, sig) -> int:
  child.send_signal(sig)
  _, rest = child.communicate(timeout=240)
  child.rest = rest
  return child.returncode


def checkpoint_steps(workdir) -> tuple[int | None, list[str]]:
  checkpoints = Checkpoints(str(workdir))
  latest = checkpoints.latest_step()
  checkpoints.close()
  return latest, sorted(os.listdir(workdir / "checkpoints"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, omniglot_small_data_dir):
  """The uninterrupted run, in this process: (workdir, results)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  results = train.train_and_evaluate(chain_config(omniglot_small_data_dir), str(workdir))
  return workdir, results


@pytest.mark.slow
def test_sigkill_mid_save_sigterm_and_sigkill_then_resume_bitwise(
  reference, tmp_path, omniglot_small_data_dir
):
  seed = int(os.environ.get("FSL_FAULT_SEED", random.randrange(1 << 30)))  # To replay a run.
  rng = random.Random(seed)
  why = f"(random seed {seed})"
  print(f"kill points drawn with random seed {seed}")
  workdir = tmp_path / "run"

  # 1. SIGKILL while step 4's checkpoint is written, just before Orbax commits it.
  child = start_child(workdir, omniglot_small_data_dir, FSL_TEST_PAUSE_COMMIT="4")
  wait_for(child, "PAUSED IN COMMIT 4")
  assert kill(child, signal.SIGKILL) == -signal.SIGKILL
  latest, names = checkpoint_steps(workdir)
  assert latest == 2, names
  assert any(name.startswith("4.") for name in names), f"no half-written step 4 in {names}"

  # 2. SIGTERM after a random step: the child finishes its step, saves, and exits 75.
  # (The child may be a few steps ahead of the line the test has read.)
  term_after = rng.randint(5, 8)
  child = start_child(workdir, omniglot_small_data_dir)
  resumed = wait_for(child, f"step {term_after}/{NUM_STEPS}")
  assert any("Resumed from" in line and "at step 2" in line for line in resumed), why
  assert kill(child, signal.SIGTERM) == PREEMPTED_EXIT_CODE, child.rest[-3000:]
  assert "preempted: stopped by SIGTERM after step" in child.rest, child.rest[-3000:]
  assert "Traceback" not in child.rest
  stopped_at = int(child.rest.split("stopped by SIGTERM after step ")[1].split(";")[0])
  latest, names = checkpoint_steps(workdir)
  assert term_after <= stopped_at == latest < NUM_STEPS - 1, (why, names)
  assert not [n for n in names if "tmp" in n], f"a temporary folder was left: {names} {why}"

  # 3. SIGKILL at a random later step, with no warning.
  kill_after = min(rng.randint(stopped_at + 1, stopped_at + 3), NUM_STEPS - 1)
  child = start_child(workdir, omniglot_small_data_dir)
  wait_for(child, f"step {kill_after}/{NUM_STEPS}")
  assert kill(child, signal.SIGKILL) == -signal.SIGKILL

  # 4. Resume to the end.
  child = start_child(workdir, omniglot_small_data_dir)
  _, rest = child.communicate(timeout=300)
  assert child.returncode == 0, rest[-3000:]

  reference_workdir, reference_results = reference
  full, resumed = Checkpoints(str(reference_workdir)), Checkpoints(str(workdir))
  assert full.latest_step() == resumed.latest_step() == NUM_STEPS, why
  expected, got = full.manager.restore(NUM_STEPS), resumed.manager.restore(NUM_STEPS)
  assert jax.tree.leaves(expected)
  jax.tree.map(np.testing.assert_array_equal, expected, got)
  full.close()
  resumed.close()
  # Each step is logged once: rows a killed child wrote after its checkpoint are dropped.
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  expected_rows = (reference_workdir / "metrics.jsonl").read_text().splitlines()
  assert [(r["step"], r["split"]) for r in rows] == [
    (json.loads(line)["step"], json.loads(line)["split"]) for line in expected_rows
  ], why
  results = (workdir / "results.json").read_text()
  assert f'"accuracy": {reference_results["test"]["accuracy"]!r}' in results, why
