"""The benchmark command: its JSON fields, FLOP counts per inner step, and the profile."""

import dataclasses
import json
import subprocess
import sys

import pytest

from configs import maml_omniglot5w1s, maml_omniglot20w1s
from fsl_jax.data.episodes import EpisodeShape
from fsl_jax.tools import bench

TINY = bench.Workload(
  "tiny_maml",
  "maml",
  classes=6,
  image_shape=(28, 28, 1),
  shape=EpisodeShape(2, 1, 1),
  meta_batch_size=2,
  inner_steps=1,
  inner_lr=0.1,
  filters=4,
  images_per_class=3,
)
FIELDS = {
  "workload",
  "algorithm",
  "first_order",
  "dtype",
  "backend",
  "devices",
  "host_allocator",
  "step_seconds_median",
  "step_seconds_min",
  "episodes_per_second",
  "compile_seconds",
  "peak_rss_mb",
  "device_peak_bytes",
  "gflop_per_step",
  "gflops_per_second",
  "xla_temp_bytes",
}


@pytest.fixture(scope="module")
def two_runs():
  """The tiny workload with 1 and with 2 inner steps, first order, profiled."""
  return [
    bench.run(dataclasses.replace(TINY, inner_steps=s), 1, "im2col", True, profile_top=3 * (s == 1))
    for s in (1, 2)
  ]


def test_a_compute_line_has_every_field_and_consistent_values(two_runs):
  line = two_runs[0]
  assert not FIELDS - set(line), FIELDS - set(line)
  assert line["workload"] == "tiny_maml" and line["first_order"] is True
  assert line["dtype"] == "float32" and line["backend"] == "cpu" and line["devices"] == 1
  assert 0 < line["step_seconds_min"] <= line["step_seconds_median"]
  assert line["episodes_per_second"] == pytest.approx(2 / line["step_seconds_median"])
  assert line["gflops_per_second"] == pytest.approx(
    line["gflop_per_step"] / line["step_seconds_median"]
  )
  assert line["compile_seconds"] > 0 and line["peak_rss_mb"] > 0 and line["xla_temp_bytes"] > 0
  json.dumps(line)  # One JSON line.


def test_flops_count_every_inner_step(two_runs):
  """The unrolled inner loop: a second inner step adds FLOPs (a rolled loop's body counts once)."""
  one, two = (run["gflop_per_step"] for run in two_runs)
  assert two > 1.3 * one


def test_the_profile_names_the_slowest_operations(two_runs):
  ops = two_runs[0]["top_ops"]
  assert 1 <= len(ops) <= 3
  assert all(op["ms_per_step"] > 0 and op["shape"] for op in ops)
  assert [op["ms_per_step"] for op in ops] == sorted(
    (op["ms_per_step"] for op in ops), reverse=True
  )
  assert any("train_step" in op["source"] for op in ops)


def test_the_sampler_workload_times_the_data_path():
  workload = dataclasses.replace(TINY, name="tiny_sampler", algorithm="sampler")
  line = bench.run(workload, 2, "im2col")
  assert line["dtype"] is None and "compile_seconds" not in line
  assert 0 < line["step_seconds_min"] <= line["step_seconds_median"]


def test_the_command_prints_one_json_line_per_workload():
  result = subprocess.run(
    [sys.executable, "-m", "fsl_jax.bench", "--workload=sampler_omniglot", "--repeats=1"],
    capture_output=True,
    text=True,
    check=True,
  )
  lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  assert [line["workload"] for line in lines] == ["sampler_omniglot"]
  assert lines[0]["episodes_per_second"] > 0


@pytest.mark.parametrize(
  "workload, config",
  [
    ("maml_omniglot_5w1s", maml_omniglot5w1s),
    ("maml_omniglot_20w1s", maml_omniglot20w1s),
    ("maml_omniglot_5w1s_maxpool", maml_omniglot5w1s),
    ("maml_omniglot_20w1s_maxpool", maml_omniglot20w1s),
  ],
)
def test_maml_omniglot_workloads_time_the_model_the_configs_train(workload, config):
  """The default workloads are the configs' model; the _maxpool ones its documented variant."""
  trained = config.get_config()
  timed = bench.workload_config(bench.WORKLOADS[workload], first_order=False, conv_impl="auto")
  if workload.endswith("_maxpool"):
    trained.model.downsample = "max_pool"
  for key in ("downsample", "filters", "num_blocks"):
    assert timed.model[key] == trained.model[key], key
  for key in ("inner_lr", "inner_steps"):
    assert timed.maml[key] == trained.maml[key], key
  assert timed.train.meta_batch_size == trained.train.meta_batch_size
  assert timed.cpu_matmuls == trained.cpu_matmuls
  assert (timed.train.n_way, timed.train.k_shot) == (trained.train.n_way, trained.train.k_shot)
