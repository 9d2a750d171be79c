"""Command line: ``python -m fsl_jax.main --config=configs/X.py[:quick] --workdir=DIR``.

``--mode=evaluate`` scores the best checkpoint of DIR on ``config.eval``'s split and
episode shape (or on Lake's runs, ``--config.eval.task=lake_runs``); see
fsl_jax/evaluate_checkpoint.py.

Several processes (one per host, see launch/) add ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I``, or nothing on SLURM and TPU pod slices, where
they are detected (fsl_jax/runtime/distributed.py).

Any config value can be overridden, e.g. ``--config.data.split=small``. The config
is locked, so a misspelt key is an error rather than a silent no-op.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fsl_jax import config_check, evaluate_checkpoint, train
from fsl_jax.errors import FslError
from fsl_jax.runtime import distributed, host_allocator
from fsl_jax.runtime.preemption import PREEMPTED_EXIT_CODE, Preempted

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file, optionally with ':arg' (e.g. ':quick').",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_MODE = flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "evaluate"],
  "train: train, validate and test. evaluate: score the best checkpoint of --workdir "
  "as config.eval says, adding a key to results.json.",
)
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  list(distributed.MODES),
  "Multi-process start-up (fsl_jax/runtime/distributed.py): auto = jax.distributed.initialize() "
  "when SLURM (srun), a TPU pod slice, Open MPI or JAX_COORDINATOR_ADDRESS says there are "
  "several processes; on = always; off = never.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "Several processes: HOST:PORT of process 0's coordinator."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one, 0..N-1.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter from Orbax and tfds (every save logs ~30 lines)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(f"/{name}/" in record.pathname for name in _NOISY)
    return record.levelno >= std_logging.WARNING or not noisy


_NOISY = ("orbax", "tensorflow_datasets", "jax/_src")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    # Before anything touches a JAX device.
    if distributed.initialize(
      _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    ):
      distributed.quiet_unless_process_zero()
    if _MODE.value == "evaluate":
      evaluate_checkpoint.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
    else:
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except FslError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:
    logging.warning("%s", e)
    print(f"preempted: {e} (exit code {PREEMPTED_EXIT_CODE})", file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  host_allocator.reexec_with_fast_allocator()
  app.run(main, flags_parser=config_check.parse_flags)
