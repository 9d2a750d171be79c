"""Orbax checkpoints of the TrainState: the latest for resuming, the best for testing.

One CheckpointManager in ``workdir/checkpoints`` keeps the two latest steps (to
resume) and the step with the highest validation accuracy (to test). Orbax
writes each step to a temporary folder and renames it when complete, so a
crash mid-save never leaves a half-written checkpoint that looks valid. A save
that fails deletes its temporary folder at once (on a full disk it holds the
space the user is asked to free); those a crash or a kill leaves are deleted
when the workdir is next opened.

Failures a user can act on become ``CheckpointError``s that name the folder and
the fix: a checkpoint whose shapes do not match the config, and a save that
fails (a full disk, say), which leaves the earlier checkpoints as they were.
"""

from __future__ import annotations

import errno
import os
import shutil

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from fsl_jax.errors import FslError
from fsl_jax.state import TrainState

BEST_METRIC = "val_accuracy"


class CheckpointError(FslError):
  """A checkpoint cannot be restored into this config, or cannot be written."""


def _best_metric(metrics) -> float:
  return float(metrics[BEST_METRIC])


class Checkpoints:
  """Saves and restores TrainStates under ``workdir/checkpoints``."""

  def __init__(self, workdir: str, keep_latest: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
      self.directory,
      # Named up front so that item_metadata can read a step before any restore.
      item_handlers=ocp.StandardCheckpointHandler(),
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
        # Deletes the temporary folders of saves cut short by a crash or a kill.
        cleanup_tmp_directories=True,
      ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, state: TrainState, val_accuracy: float | None = None) -> None:
    """Saves ``state`` at its step; ``val_accuracy`` makes it a candidate for best.

    Raises:
      CheckpointError: the save failed (e.g. ENOSPC). Earlier checkpoints are
        untouched: Orbax deletes old steps only after a new one is committed.
    """
    step = int(jax.device_get(state.step))
    metrics = None if val_accuracy is None else {BEST_METRIC: float(val_accuracy)}
    if step in self.manager.all_steps():
      return
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics)
      self.manager.wait_until_finished()
    except Exception as e:  # Disk full, quota, permissions, a broken mount...
      self._remove_unfinished(step)
      kept = sorted(self.manager.all_steps())
      raise CheckpointError(
        f"could not save the checkpoint of step {step} in {self.directory}: {_cause(e)}. "
        f"The earlier checkpoints (steps {kept}) are intact. Free some space (or fix the "
        "folder's permissions) and run the same command to resume"
        + (f" from step {max(kept)}." if kept else " from the start.")
      ) from e

  def restore(self, step: int, like: TrainState) -> TrainState:
    """Restores step ``step`` into the shapes, dtypes and shardings of ``like``.

    Raises:
      CheckpointError: the checkpoint's shapes differ from ``like``'s (it was
        written with another model config). Nothing is deleted.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    mismatch = self._mismatch(step, like)
    if mismatch is None:
      try:
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except (ValueError, KeyError, TypeError) as e:  # What Orbax raises on a mismatch.
        mismatch = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointError(
      f"the checkpoint of step {step} in {self.directory} does not fit this config: "
      f"{mismatch}. It was written by a run with another model config. Use a new "
      "--workdir, or the config that run used (see config in its results.json or the "
      "command you ran). Nothing was deleted."
    )

  def _mismatch(self, step: int, like: TrainState) -> str | None:
    """The first difference in params and batch-statistics shapes, if any.

    Only these two trees are compared: their names are the model's, the same in
    the stored metadata and in ``like``. Other mismatches are left to Orbax.
    """
    try:
      stored = self.manager.item_metadata(step)
      stored = getattr(stored, "tree", stored)
      stored = {part: stored[part] for part in ("params", "batch_stats")}
    except Exception:  # Unreadable or unexpected metadata: let restore itself report.
      return None
    stored_shapes = _shapes(stored)
    wanted_shapes = _shapes({"params": like.params, "batch_stats": like.batch_stats})
    differences = []
    for path in sorted(set(stored_shapes) | set(wanted_shapes)):
      have, want = stored_shapes.get(path), wanted_shapes.get(path)
      if have == want:
        continue
      if have is None:
        text = f"{path} is missing from the checkpoint (this config needs shape {want})"
      elif want is None:
        text = f"the checkpoint has {path} {have}, which this config does not have"
      else:
        text = f"{path} has shape {have} in the checkpoint but {want} in this config"
      # Params before batch statistics, kernels (which show both sizes) first.
      differences.append(((not path.startswith("params"), -len(have or want)), text))
    if differences:
      differences.sort()
      more = len(differences) - 1
      return differences[0][1] + (f" (and {more} more differences)" if more else "")
    return None

  def close(self) -> None:
    self.manager.close()

  def _remove_unfinished(self, step: int) -> None:
    """Deletes the temporary folder a failed save of ``step`` left (process 0 only)."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      path = os.path.join(self.directory, name)
      if name.startswith(f"{step}.") and ocp.utils.is_tmp_checkpoint(path):
        shutil.rmtree(path, ignore_errors=True)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """'params/Conv3x3_0/kernel' -> shape, for every leaf of ``tree`` that has one."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = getattr(leaf, "shape", None)
    if shape is not None:
      out["/".join(str(getattr(k, "key", k)) for k in path)] = tuple(int(d) for d in shape)
  return out


def _cause(error: BaseException) -> str:
  """The most telling error in ``error``'s chain: an OSError, preferably ENOSPC."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  os_errors = [e for e in chain if isinstance(e, OSError)]
  full = [e for e in os_errors if e.errno in (errno.ENOSPC, errno.EDQUOT)]
  best = (full or os_errors or chain)[0]
  text = str(best).splitlines()[0] if str(best) else ""
  return f"{type(best).__name__}: {text}" if not isinstance(best, OSError) else text
