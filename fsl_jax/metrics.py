"""Metrics: confidence intervals, the progress line, and jsonl/TensorBoard writers."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np


def mean_and_ci95(values) -> tuple[float, float]:
  """Mean and the 95% confidence half-width 1.96 * std / sqrt(n) (std with ddof=0)."""
  values = np.asarray(values, dtype=np.float64)
  return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


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
  resumed run starts from (0 for a fresh run). The caller drops later rows from
  metrics.jsonl (``drop_rows_after``); TensorBoard is told to hide the earlier
  runs' events after it (``purge_step``), so a resumed curve has no duplicates.
  """

  def __init__(self, workdir: str, enabled: bool = True, kept_through: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # Protobuf only, no TensorFlow.

    os.makedirs(workdir, exist_ok=True)
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
