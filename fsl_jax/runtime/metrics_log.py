"""Where training metrics go: metrics.jsonl, TensorBoard, and the progress line."""

from __future__ import annotations

import json
import math
import os
import time

from fsl_jax.runtime.atomic_files import write_text_atomically


def format_duration(seconds: float) -> str:
  seconds = round(seconds)
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
  """Rate and ETA of a loop from ``start_step`` to ``total_steps``.

  The rate is measured since the last call to ``line``, so the first window
  (which includes compilation) does not skew later figures.
  """

  def __init__(self, total_steps: int, start_step: int, episodes_per_step: int):
    self.total_steps = total_steps
    self.episodes_per_step = episodes_per_step
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self.steps_per_second = float("nan")

  def line(self, step: int, metrics: dict) -> str:
    now = time.perf_counter()
    if step > self._last_step:
      self.steps_per_second = (step - self._last_step) / (now - self._last_time)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) / self.steps_per_second
    values = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
    return (
      f"step {step}/{self.total_steps} {values} "
      f"{self.steps_per_second * self.episodes_per_step:.2f} episodes/s "
      f"ETA {format_duration(eta) if math.isfinite(eta) else '?'}"
    )


class MetricsWriter:
  """Appends ``{"step", "split", **metrics}`` rows to metrics.jsonl and TensorBoard.

  Only one process writes (``enabled``); the others ignore every call.
  ``kept_through``: the last step whose earlier rows stand, the checkpoint a
  resumed run starts from (0 for a fresh run). Later rows are dropped from
  metrics.jsonl (``drop_rows_after``) and TensorBoard is told to hide the earlier
  runs' events after it (``purge_step``), so a resumed curve has no duplicates.
  """

  def __init__(self, workdir: str, enabled: bool = True, kept_through: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # Protobuf only, no TensorFlow.

    os.makedirs(workdir, exist_ok=True)
    drop_rows_after(os.path.join(workdir, "metrics.jsonl"), kept_through)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
    # The suffix also keeps a quick resume, within the same second, from
    # overwriting the earlier file (the name is otherwise the second and host).
    self._tensorboard = SummaryWriter(
      os.path.join(workdir, "tensorboard"),
      purge_step=kept_through + 1,
      filename_suffix=f".resumed_after_{kept_through}" if kept_through else "",
    )

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      self._tensorboard.add_scalar(f"{split}/{name}", float(value), int(step))
    self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


def drop_rows_after(path: str, step: int) -> None:
  """Drops metrics.jsonl rows after ``step``: a resumed run logs those steps again.

  Without this, a run killed after its last checkpoint would leave rows that the
  resumed run repeats. The file is rewritten atomically; a missing file is fine.
  """
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  # A kill can leave a last line half-written: it does not parse and is dropped.
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError):
      continue
  if len(kept) != len(lines):
    write_text_atomically(path, "".join(kept))
