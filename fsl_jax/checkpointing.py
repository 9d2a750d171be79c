"""Orbax checkpoints of the TrainState: the latest for resuming, the best for testing.

One CheckpointManager in ``workdir/checkpoints`` keeps the two latest steps (to
resume) and the step with the highest validation accuracy (to test). Orbax
writes each step to a temporary folder and renames it when complete, so a
crash mid-save never leaves a half-written checkpoint that looks valid.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from fsl_jax.state import TrainState

BEST_METRIC = "val_accuracy"


def _best_metric(metrics) -> float:
  return float(metrics[BEST_METRIC])


class Checkpoints:
  """Saves and restores TrainStates under ``workdir/checkpoints``."""

  def __init__(self, workdir: str, keep_latest: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        best_fn=_best_metric,
        best_mode="max",
        preservation_policy=policies.AnyPreservationPolicy(
          [
            policies.LatestN(keep_latest),
            policies.BestN(
              get_metric_fn=_best_metric,
              reverse=False,
              n=1,
              keep_checkpoints_without_metrics=False,
            ),
          ]
        ),
        # A save returns once written: the train step donates the state's
        # buffers, so nothing may still be reading them afterwards.
        enable_async_checkpointing=False,
      ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, state: TrainState, val_accuracy: float | None = None) -> None:
    """Saves ``state`` at its step; ``val_accuracy`` makes it a candidate for best."""
    step = int(jax.device_get(state.step))
    metrics = None if val_accuracy is None else {BEST_METRIC: float(val_accuracy)}
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics)
    self.manager.wait_until_finished()

  def restore(self, step: int, like: TrainState) -> TrainState:
    """Restores step ``step`` into the shapes, dtypes and shardings of ``like``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.close()
