"""Device counts and process counts: same params on 1, 8 and 2x2 devices; batch-size rules.

The 8-device runs are a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8
(it must be set before JAX starts); the two-process run is launch/local_multiprocess.sh
(2 processes x 2 CPU devices, jax.distributed over gloo on 127.0.0.1); the 1-device
references are a subprocess too, and runs that do not depend on each other go in
parallel. Every run is 20 steps of a tiny config (tests/sharded_runs.py) with
checkpoints at steps 10 and 20, compared at step 20.

Tolerance: every float leaf of the TrainState (params, batch-norm statistics, Adam
moments) after 20 steps is within 1e-5 of the leaf's largest magnitude:
|a - b| <= 1e-5 * max|b|; integer leaves (step, rng key, Adam's count) are equal.
The runs compute in float64 (JAX_ENABLE_X64=1); Flax keeps batch-norm and dense
params in float32, and measured differences are <= 1e-6 of the scale (protonet 1e-7,
second-order MAML 7e-7), float32 rounding of the stored params. In plain float32
the same runs drift apart chaotically, up to 2e-2 in Adam's first moment after 20
protonet steps: the reduction order differs (one sum vs an all-reduce), max-pool's
argmax then flips on near ties, and Adam scales tiny gradient differences up to
learning-rate-sized steps (ProtoNets' last batch-norm bias has a zero gradient,
since Euclidean distances ignore a shift shared by all embeddings, so its updates
are pure rounding noise). Step 1's loss agrees to 1e-6 in float32.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sharded_runs

from fsl_jax.errors import ConfigError
from fsl_jax.runtime import distributed, sharding

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
REPLICATED, SHARDED = ["P()"], ["P('data',)"]


def restore_raw(workdir: Path, step: int = 20):
  """The whole TrainState saved at ``step``, as a raw pytree on this process's one device.

  The run may have saved it from another topology (8 devices, 2 processes).
  """
  path = workdir / "checkpoints" / str(step) / "default"
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  return checkpointer.restore(path, like)


def assert_same_state(actual: Path, expected: Path) -> None:
  """Every leaf of the step-20 TrainStates within TOLERANCE of its largest magnitude."""
  got, want = restore_raw(actual), restore_raw(expected)
  assert int(got["step"]) == int(want["step"]) == 20
  assert jax.tree.structure(got) == jax.tree.structure(want)
  flat, _ = jax.tree_util.tree_flatten_with_path(got)
  for (path, a), b in zip(flat, jax.tree.leaves(want), strict=True):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    if not np.issubdtype(b.dtype, np.floating):  # step, rng key, Adam's count: exact.
      np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
      continue
    scale = float(np.abs(b).max())
    np.testing.assert_allclose(
      a, b, rtol=0, atol=TOLERANCE * scale, err_msg=jax.tree_util.keystr(path)
    )


def copy_without_last_checkpoint(source: Path, target: Path) -> Path:
  """A copy of a finished run's workdir as it was after step 10: resumes from there."""
  shutil.copytree(source, target)
  shutil.rmtree(target / "checkpoints" / "20")
  (target / "results.json").unlink()
  return target


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def subprocess_env(devices: int | None = None) -> dict:
  env = {
    **os.environ,
    "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
    "JAX_PLATFORMS": "cpu",
    "JAX_ENABLE_X64": "1",  # See the module docstring.
  }
  env.pop("XLA_FLAGS", None)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def start(base: Path, name: str, command: list, env: dict) -> tuple:
  """Starts ``command`` in the repository root, its output to ``base/name.log``."""
  env = {
    **env,
    # Runs after the first of a kind reuse its compiled steps (the same HLO).
    "JAX_COMPILATION_CACHE_DIR": str(base / "compilation_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  }
  log = base / f"{name}.log"
  with open(log, "w") as out:
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  return process, log


def finish(started: tuple) -> None:
  process, log = started
  try:
    returncode = process.wait(timeout=600)
  except subprocess.TimeoutExpired:
    process.kill()
    raise
  assert returncode == 0, log.read_text()[-6000:]


def start_worker(base: Path, name: str, devices: int, data: dict, runs: list) -> tuple:
  """tests/sharded_runs.py with ``devices`` CPU devices; ``results`` reads what it wrote."""
  spec_path = base / f"{name}.json"
  spec_path.write_text(json.dumps({**data, "runs": runs}))
  command = [sys.executable, str(ROOT / "tests" / "sharded_runs.py"), str(spec_path)]
  return start(base, name, command, subprocess_env(devices))


def results(base: Path, name: str, devices: int) -> list:
  out = json.loads((base / f"{name}.json.out").read_text())
  assert out["devices"] == devices
  return out["runs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, omniglot_small_data_dir, omniglot_manual_dir):
  """All runs, two at a time where they do not depend on each other."""
  base = tmp_path_factory.mktemp("sharding")
  data = {"data_dir": str(omniglot_small_data_dir), "manual_dir": str(omniglot_manual_dir)}
  kinds = ("protonet", "maml")
  one = {kind: base / f"one_{kind}" for kind in kinds}
  eight = {kind: base / f"eight_{kind}" for kind in kinds}
  two = base / "two_processes"
  from_one = base / "from_one_to_eight"
  from_eight = base / "from_eight_to_one"

  # Both algorithms from scratch on 1 and on 8 devices.
  fresh = lambda workdirs: [{"kind": k, "workdir": str(workdirs[k])} for k in kinds]
  first = [start_worker(base, "one", 1, data, fresh(one))]
  first.append(start_worker(base, "eight", 8, data, fresh(eight)))
  for started in first:
    finish(started)
  # Two processes with 2 devices each, through the launcher, on an empty data_dir that
  # process 0 prepares while process 1 waits; meanwhile each step-10 checkpoint
  # continues on the other device count.
  empty_data = {**data, "data_dir": str(base / "empty_tfds")}
  launcher = [
    "bash",
    str(ROOT / "launch" / "local_multiprocess.sh"),
    "--num_processes=2",
    "--devices_per_process=2",
    f"--port={free_port()}",
    f"--log_dir={base / 'logs'}",
    "--",
    *sharded_runs.cli_flags("protonet", **empty_data),
    f"--workdir={two}",
  ]
  second = [start(base, "two", launcher, {**subprocess_env(), "PYTHON": sys.executable})]
  copy_without_last_checkpoint(one["protonet"], from_one)
  copy_without_last_checkpoint(eight["protonet"], from_eight)
  continued = [{"kind": "protonet", "workdir": str(from_one)}]
  second.append(start_worker(base, "eight_continued", 8, data, continued))
  continued = [{"kind": "protonet", "workdir": str(from_eight)}]
  second.append(start_worker(base, "one_continued", 1, data, continued))
  for started in second:
    finish(started)
  logs = "".join(p.read_text() for p in sorted((base / "logs").glob("*.log")))
  assert (base / "logs" / "process_1.log").is_file(), logs
  return SimpleNamespace(
    one=one,
    one_specs=results(base, "one", 1) + results(base, "one_continued", 1),
    eight=eight,
    eight_specs=results(base, "eight", 8) + results(base, "eight_continued", 8),
    from_one=from_one,
    from_eight=from_eight,
    two=two,
  )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["protonet", "maml"])
def test_eight_devices_give_the_same_state_as_one(runs, kind):
  assert_same_state(runs.eight[kind], runs.one[kind])


def test_state_stays_replicated_and_episodes_are_sharded(runs):
  for recorded in runs.eight_specs:
    assert recorded["train"] == REPLICATED  # New state and metrics: P().
    assert recorded["eval"] == SHARDED  # Per-episode eval metrics [E]: P("data").


@pytest.mark.parametrize("direction", ["from_one", "from_eight"])
def test_a_checkpoint_continues_on_another_device_count(runs, direction):
  # from_one: 1-device step-10 checkpoint, steps 11..20 on 8 devices; from_eight: the reverse.
  assert_same_state(getattr(runs, direction), runs.one["protonet"])


def test_two_processes_give_the_same_state_and_write_one_metrics_file(runs):
  assert_same_state(runs.two, runs.one["protonet"])
  names = sorted(p.name for p in runs.two.iterdir())
  # One of each: only process 0 writes metrics and results and holds the workdir lock.
  assert names == ["checkpoints", "metrics.jsonl", "results.json", "tensorboard", "train.lock"]
  assert len(list((runs.two / "tensorboard").iterdir())) == 1
  rows = [json.loads(line) for line in (runs.two / "metrics.jsonl").read_text().splitlines()]
  reference = [
    json.loads(line) for line in (runs.one["protonet"] / "metrics.jsonl").read_text().splitlines()
  ]
  assert [(r["step"], r["split"]) for r in rows] == [(r["step"], r["split"]) for r in reference]
  for row, ref in zip(rows, reference, strict=True):
    assert row.keys() == ref.keys()
    for key in ref.keys() - {"step", "split"}:
      np.testing.assert_allclose(row[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_one_device_runs_are_replicated_too(runs):
  for recorded in runs.one_specs:
    assert recorded == {"train": REPLICATED, "eval": SHARDED}


def fake_mesh(devices: int):
  return SimpleNamespace(devices=np.zeros(devices))


def test_a_meta_batch_that_does_not_divide_is_an_error_naming_the_fix():
  # ProtoNets train on one episode per step by default: on 8 devices, say what to set.
  with pytest.raises(ConfigError, match=r"--config.train.meta_batch_size=8 \(any multiple of 8\)"):
    sharding.check_batch_divides(1, fake_mesh(8), "config.train.meta_batch_size")
  with pytest.raises(ConfigError, match="meta_batch_size=32"):
    sharding.check_batch_divides(30, fake_mesh(8), "config.train.meta_batch_size")
  sharding.check_batch_divides(16, fake_mesh(8), "config.train.meta_batch_size")


def test_the_eval_batch_rounds_up_to_a_multiple_of_the_devices():
  assert [sharding.eval_batch_size(b, fake_mesh(8)) for b in (1, 8, 10, 16)] == [8, 8, 16, 16]
  assert sharding.eval_batch_size(10, fake_mesh(1)) == 10


@pytest.mark.parametrize(
  "env, expected",
  [
    ({}, None),
    ({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"}, None),  # The sbatch script, outside srun.
    ({"SLURM_STEP_NUM_TASKS": "1"}, None),
    ({"SLURM_STEP_NUM_TASKS": "4"}, "slurm"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "coordinator"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "mpi"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # A single-host TPU VM.
    ({"TPU_WORKER_HOSTNAMES": "t1-w-0,t1-w-1"}, "tpu_pod"),
  ],
)
def test_multi_process_environments_are_detected(env, expected):
  assert distributed.detected_cluster(env) == expected
  kwargs = distributed.initialize_kwargs("auto", None, None, None, env)
  assert kwargs == (None if expected is None else {})


def test_explicit_process_flags():
  explicit = distributed.initialize_kwargs("auto", "127.0.0.1:1234", 2, 1, {})
  assert explicit == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
  assert distributed.initialize_kwargs("on", None, None, None, {}) == {}
  assert (
    distributed.initialize_kwargs("off", None, None, None, {"SLURM_STEP_NUM_TASKS": "2"}) is None
  )
  with pytest.raises(ConfigError, match="missing: --process_id"):
    distributed.initialize_kwargs("auto", "127.0.0.1:1234", 2, None, {})
  with pytest.raises(ConfigError, match=r"not in 0\.\.1"):
    distributed.initialize_kwargs("auto", "127.0.0.1:1234", 2, 2, {})
  with pytest.raises(ConfigError, match="contradicts"):
    distributed.initialize_kwargs("off", "127.0.0.1:1234", 2, 0, {})
