"""Multi-process start-up: when and how to call ``jax.distributed.initialize``.

One process per host (or, on a GPU host, one per host or one per GPU) runs the
same program. Before any other JAX call, each process joins the others through
``jax.distributed.initialize``; afterwards ``jax.devices()`` lists every device
of every process and one ``Mesh`` spans them all.

How the processes are found, in order:
  1. explicit: ``coordinator_address``, ``num_processes`` and ``process_id``
     (the ``--coordinator_address``, ``--num_processes``, ``--process_id`` flags;
     ``launch/local_multiprocess.sh`` and ``launch/gpu_multi.sh`` use them);
  2. ``mode="on"``: ``jax.distributed.initialize()`` with no arguments, which
     detects Cloud TPU VMs and pod slices, SLURM, Open MPI and Kubernetes;
  3. ``mode="auto"`` (the default): as 2, but only when the environment says
     there are several processes: ``SLURM_STEP_NUM_TASKS`` > 1 (inside ``srun``),
     ``JAX_COORDINATOR_ADDRESS`` set, ``OMPI_COMM_WORLD_SIZE`` > 1, or a TPU pod
     slice (several names in ``TPU_WORKER_HOSTNAMES`` or ``TPU_PROCESS_ADDRESSES``).
     Otherwise this is one process and nothing is initialised.
  ``mode="off"`` never initialises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fsl_jax.errors import ConfigError

MODES = ("auto", "on", "off")


def _more_than_one(value: str | None) -> bool:
  try:
    return value is not None and int(value) > 1
  except ValueError:
    return False


def _several_names(value: str | None) -> bool:
  return value is not None and len([n for n in value.split(",") if n.strip()]) > 1


def detected_cluster(env: Mapping[str, str]) -> str | None:
  """The multi-process environment ``env`` describes, or None for a single process.

  Returns "slurm", "coordinator", "mpi" or "tpu_pod".
  """
  if _more_than_one(env.get("SLURM_STEP_NUM_TASKS")):
    return "slurm"  # Inside `srun`; an sbatch script outside srun is one process.
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "coordinator"
  if _more_than_one(env.get("OMPI_COMM_WORLD_SIZE")):
    return "mpi"
  if _several_names(env.get("TPU_WORKER_HOSTNAMES")) or _several_names(
    env.get("TPU_PROCESS_ADDRESSES")
  ):
    return "tpu_pod"
  return None


def initialize_kwargs(
  mode: str,
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  env: Mapping[str, str] | None = None,
) -> dict | None:
  """The arguments for ``jax.distributed.initialize``, or None to stay one process.

  Raises:
    ConfigError: an unknown mode, or only some of the three explicit values.
  """
  env = os.environ if env is None else env
  if mode not in MODES:
    raise ConfigError(f"--distributed must be one of {MODES}, got {mode!r}.")
  explicit = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  given = {k for k, v in explicit.items() if v is not None}
  if given and mode == "off":
    raise ConfigError(f"--distributed=off contradicts --{', --'.join(sorted(given))}.")
  if given:
    missing = sorted(set(explicit) - given)
    if missing:
      raise ConfigError(
        "Several processes need all of --coordinator_address=HOST:PORT, --num_processes=N "
        f"and --process_id=I (0..N-1); missing: --{', --'.join(missing)}."
      )
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id} is not in 0..{num_processes - 1}.")
    return explicit
  if mode == "on" or (mode == "auto" and detected_cluster(env)):
    return {}
  return None


def initialize(
  mode: str = "auto",
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Joins the other processes when there are any; returns whether it did.

  Must run before anything else touches JAX devices. CPU processes exchange
  data through gloo (JAX's default CPU collectives), set here explicitly.
  """
  kwargs = initialize_kwargs(mode, coordinator_address, num_processes, process_id)
  if kwargs is None:
    return False
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  return True


def quiet_unless_process_zero() -> None:
  """Only process 0 logs INFO; the others log warnings and errors only."""
  import jax
  from absl import logging

  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
