"""Confidence intervals, the progress line and the metric writers."""

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog

from fsl_jax.evaluate import mean_and_ci95
from fsl_jax.runtime.metrics_log import MetricsWriter, Progress, format_duration


def test_ci95_is_1_96_std_over_sqrt_n():
  values = [0.0, 1.0, 1.0, 1.0]
  mean, ci = mean_and_ci95(values)
  assert mean == pytest.approx(0.75)
  assert ci == pytest.approx(1.96 * np.std(values) / math.sqrt(4))


def test_progress_line_has_rate_and_eta(monkeypatch):
  clock = iter([0.0, 10.0])
  monkeypatch.setattr("fsl_jax.runtime.metrics_log.time.perf_counter", lambda: next(clock))
  progress = Progress(total_steps=100, start_step=0, episodes_per_step=2)
  line = progress.line(20, {"loss": 0.5})
  assert "step 20/100" in line and "loss 0.5000" in line
  assert "4.00 episodes/s" in line  # 20 steps in 10 s, 2 episodes each.
  assert "ETA 0m40s" in line  # 80 steps at 2 steps/s.
  assert format_duration(3725) == "1h02m05s"


def test_writer_writes_jsonl_and_tensorboard_and_a_disabled_one_writes_nothing(tmp_path):
  writer = MetricsWriter(str(tmp_path / "a"))
  writer.write(3, "train", {"loss": np.float32(1.5)})
  writer.write(4, "val", {"accuracy": 0.25})
  writer.close()
  rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
  assert rows == [
    {"step": 3, "split": "train", "loss": 1.5},
    {"step": 4, "split": "val", "accuracy": 0.25},
  ]
  events = list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0

  silent = MetricsWriter(str(tmp_path / "b"), enabled=False)
  silent.write(1, "train", {"loss": 1.0})
  silent.close()
  assert not (tmp_path / "b").exists()


def read_events(path: Path) -> list[Event]:
  """The records of a TensorBoard event file: [length u64][crc][Event][crc] each."""
  data, events, at = path.read_bytes(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at : at + 8])
    events.append(Event.FromString(data[at + 12 : at + 12 + length]))
    at += 12 + length + 4
  return events


def test_a_resumed_writer_tells_tensorboard_to_hide_the_earlier_events_after_its_checkpoint(
  tmp_path,
):
  first = MetricsWriter(str(tmp_path))
  for step in range(1, 7):  # Crashed after step 6; the checkpoint is at step 3.
    first.write(step, "train", {"loss": 1.0 / step})
  first.close()
  resumed = MetricsWriter(str(tmp_path), kept_through=3)
  resumed.write(4, "train", {"loss": 0.5})
  resumed.close()
  files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(files) == 2
  by_file = [read_events(path) for path in files]
  starts = [
    [e.step for e in events if e.session_log.status == SessionLog.START] for events in by_file
  ]
  # TensorBoard drops earlier events at steps >= a START's step: 4..6 of the
  # first file. A fresh writer (kept_through=0) purges from step 1.
  assert sorted(starts) == [[1], [4]]
  scalars = [[e.step for e in events if e.summary.value] for events in by_file]
  assert sorted(scalars) == [[1, 2, 3, 4, 5, 6], [4]]
