"""Command line: ``python -m fsl_jax.main --config=configs/X.py[:quick] --workdir=DIR``.

Any config value can be overridden, e.g. ``--config.data.split=small``. The config
is locked, so a misspelt key is an error rather than a silent no-op.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fsl_jax import config_check, train
from fsl_jax.errors import FslError
from fsl_jax.preemption import PREEMPTED_EXIT_CODE, Preempted

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file, optionally with ':arg' (e.g. ':quick').",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train"], "train: train, validate and test.")
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
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except FslError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:
    logging.warning("%s", e)
    print(f"preempted: {e} (exit code {PREEMPTED_EXIT_CODE})", file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main, flags_parser=config_check.parse_flags)
