"""SIGTERM as a request to stop cleanly: finish the step, checkpoint, exit 75.

Cloud TPU VMs (spot and preemptible) and most schedulers (Kubernetes, Slurm with
``--signal``) send SIGTERM some seconds before they kill a job. While training,
``SigtermFlag`` turns SIGTERM into a flag that the loop reads after each step
(a Python bool, no device sync); the loop then saves a checkpoint and raises
``Preempted``, which ``main`` turns into exit code ``PREEMPTED_EXIT_CODE``.
A second SIGTERM kills at once (the previous handler is back in place).
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# EX_TEMPFAIL from sysexits.h: "temporary failure; the user is invited to retry".
# Distinct from 143 (= 128 + SIGTERM), what a run killed before it could save exits with.
PREEMPTED_EXIT_CODE = os.EX_TEMPFAIL  # 75


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint at ``step``."""

  def __init__(self, step: int, directory: str):
    self.step = step
    super().__init__(
      f"stopped by SIGTERM after step {step}; its checkpoint is in {directory}. "
      "Run the same command again to resume from it."
    )


class SigtermFlag:
  """Context manager: while inside, SIGTERM sets ``requested`` instead of killing.

  Handlers can only be installed from the main thread; elsewhere this does
  nothing and SIGTERM keeps its default action.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    self._installed = False

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def _handle(self, signum, frame) -> None:
    del frame
    logging.warning("SIGTERM received: finishing the current step, then saving a checkpoint.")
    self._event.set()
    signal.signal(signum, self._previous)  # A second SIGTERM acts as if we were not here.

  def __enter__(self) -> SigtermFlag:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc_info) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False

  def agreed(self, step: int, every: int) -> bool:
    """Whether every process stops for SIGTERM after ``step``: at once with one process.

    With several processes they must agree, so process 0's flag is broadcast,
    every ``every`` steps only (a broadcast is a host sync): keep that many steps
    well inside the preemption notice (about 30 s on Cloud TPU VMs).
    """
    if jax.process_count() == 1:
      return self.requested
    if step % every:
      return False
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(self.requested)))
