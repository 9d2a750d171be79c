"""Non-finite losses and gradients, all in one place: detect on device, stop or restart on the host.

The trade-off. Reading a flag every step would cost a host sync per step, so:

* Inside the jitted step, ``update_if_finite`` makes a step whose loss or
  gradient norm is not finite a no-op on the params, batch statistics and
  optimiser state (the step counter still advances, so the episode stream stays
  aligned). No NaN ever lands in the state. The update itself needs no check:
  Adam's m_hat / (sqrt(v_hat) + eps) is finite whenever the gradient and the
  moments are, and the moments only ever hold finite values.
* The step also returns ``first_bad_step``: its own 1-based number if it was not
  finite, else INT32_MAX. ``DivergenceMonitor`` keeps the running minimum on
  device (one tiny op per step) and the host reads it only where it syncs
  anyway: at log steps and before every validation and checkpoint. So no state
  from after a bad step is ever saved, and the error names the first bad step,
  at most ``log_every`` steps after it happened.

``config.train.on_divergence`` chooses what follows (``train_with_restarts``):
"stop" raises ``DivergenceError``; "restart_lower_lr" restores the latest
checkpoint (which predates the bad step) and multiplies the learning rate by
``config.train.divergence_lr_factor``, at most ``max_divergence_restarts`` times.
The lowered scale is kept in ``workdir/divergence.json`` so that a resumed run
goes on with it.

The file has three parts: on device (``update_if_finite``, ``first_bad_step``),
on the host (``DivergenceMonitor``), and the policy (``train_with_restarts``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fsl_jax.errors import ConfigError, FslError
from fsl_jax.runtime.atomic_files import write_json_atomically

T = TypeVar("T")
NO_BAD_STEP = np.iinfo(np.int32).max
POLICIES = ("stop", "restart_lower_lr")
STATE_FILE = "divergence.json"


class DivergenceError(FslError):
  """Training produced a non-finite loss or gradient."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def update_if_finite(finite: jax.Array, update: Callable[[T], T], old: T) -> T:
  """``update(old)`` where ``finite`` (a bool scalar) holds, else ``old``.

  A ``lax.cond``, not a select between new and old: the update runs only on good
  steps and writes in place into the donated state, where a select would keep both
  copies and read them again (docs/performance.md has the measurements).
  The updated leaves keep ``old``'s dtypes (under ``jax.enable_x64`` new batch
  statistics come out float64).
  """

  def updated(old: T) -> T:
    return jax.tree.map(lambda new, leaf: new.astype(leaf.dtype), update(old), old)

  return jax.lax.cond(finite, updated, lambda old: old, old)


def first_bad_step(finite: jax.Array, step_number: jax.Array) -> jax.Array:
  """int32 []: ``step_number`` if not ``finite``, else NO_BAD_STEP."""
  return jnp.where(finite, jnp.int32(NO_BAD_STEP), step_number.astype(jnp.int32))


class DivergenceMonitor:
  """The first bad step seen so far, kept on device; reading it is one host sync.

  Args:
    learning_rate: the run's current learning rate, for the error message.
    workdir: the run's workdir, for the error message.
    last_good: () -> the latest checkpoint's step (or None), asked when raising.
  """

  def __init__(self, learning_rate: float, workdir: str, last_good: Callable[[], int | None]):
    self._first = None
    self._learning_rate = learning_rate
    self._workdir = workdir
    self._last_good = last_good

  def update(self, first_bad: jax.Array) -> None:
    self._first = first_bad if self._first is None else jnp.minimum(self._first, first_bad)

  def first_bad_step(self) -> int | None:
    if self._first is None:
      return None
    first = int(jax.device_get(self._first))
    return None if first == NO_BAD_STEP else first

  def raise_if_diverged(self) -> None:
    """Raises DivergenceError if any step so far was not finite (one host sync)."""
    if (bad := self.first_bad_step()) is not None:
      raise DivergenceError(
        message(bad, self._learning_rate, self._workdir, self._last_good()), bad
      )


def check_config(train: ml_collections.ConfigDict) -> None:
  if train.on_divergence not in POLICIES:
    raise ConfigError(
      f"config.train.on_divergence must be one of {POLICIES}, got {train.on_divergence!r}."
    )
  if not 0.0 < train.divergence_lr_factor < 1.0:
    raise ConfigError(
      "config.train.divergence_lr_factor must be in (0, 1), e.g. 0.5; "
      f"got {train.divergence_lr_factor}."
    )


def message(step: int, learning_rate: float, workdir: str, last_good: int | None) -> str:
  kept = (
    f"The last good checkpoint, step {last_good}, is kept in {workdir}/checkpoints"
    if last_good is not None
    else "No checkpoint had been saved yet"
  )
  return (
    f"training diverged: the loss or gradient is not finite at step {step} "
    f"(learning rate {learning_rate:g}). {kept}; nothing from step {step} on was saved. "
    "Lower --config.optim.learning_rate and run again to resume from it, or set "
    "--config.train.on_divergence=restart_lower_lr to do that automatically."
  )


def train_with_restarts(
  train: Callable[[float], T],
  config: ml_collections.ConfigDict,
  workdir: str,
  latest_checkpoint: Callable[[], int | None],
) -> T:
  """``train(lr_scale)``, run again with a lower scale after a divergence if the policy says so.

  ``train`` resumes from the latest checkpoint, so a restart repeats only the
  steps after it. Each restart multiplies the scale by
  ``config.train.divergence_lr_factor`` and is recorded in ``workdir/divergence.json``.
  """
  lr_scale = load_lr_scale(workdir)
  restarts = 0
  while True:
    try:
      return train(lr_scale)
    except DivergenceError as e:
      restarts += 1
      if (
        config.train.on_divergence != "restart_lower_lr"
        or restarts > config.train.max_divergence_restarts
      ):
        raise
      lr_scale *= config.train.divergence_lr_factor
      resumed_from = latest_checkpoint()
      if jax.process_index() == 0:
        record_restart(workdir, lr_scale, e.step, resumed_from)
      logging.warning(
        "%s Restart %d of %d: from step %s with the learning rate scaled by %g.",
        e,
        restarts,
        config.train.max_divergence_restarts,
        resumed_from or 0,
        lr_scale,
      )


def load_lr_scale(workdir: str) -> float:
  """The learning-rate scale left by earlier restarts in this workdir (1.0 if none)."""
  path = os.path.join(workdir, STATE_FILE)
  if not os.path.exists(path):
    return 1.0
  with open(path) as f:
    return float(json.load(f)["lr_scale"])


def record_restart(workdir: str, lr_scale: float, bad_step: int, resumed_from: int | None) -> None:
  """Appends the restart to ``workdir/divergence.json`` (atomically) with the new scale."""
  path = os.path.join(workdir, STATE_FILE)
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = json.load(f)["restarts"]
  history.append({"bad_step": bad_step, "resumed_from": resumed_from, "lr_scale": lr_scale})
  write_json_atomically(path, {"lr_scale": lr_scale, "restarts": history})
