"""The benchmark command: its JSON fields, FLOP counts per inner step, and the profile."""

import dataclasses
import importlib
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from fsl_jax.tools import bench

TINY = bench.Workload(
  "tiny_maml",
  "maml_omniglot5w1s",
  (
    ("model.filters", 4),
    ("train.n_way", 2),
    ("eval.n_way", 2),
    ("train.meta_batch_size", 2),
    ("maml.inner_lr", 0.1),
  ),
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
  "xla_argument_bytes",
  "tasks_per_chunk",
  "dataset_mb",
  "peak_rss_net_of_dataset_mb",
}


@pytest.fixture(scope="module")
def two_runs():
  """The tiny workload with 1 and with 2 inner steps, first order, unchunked, profiled."""
  return [
    bench.run(TINY, 1, "im2col", True, profile_top=3 * (s == 1), inner_steps=s, tasks_per_chunk=0)
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
  assert line["compile_seconds"] > 0 and line["xla_temp_bytes"] > 0
  # The synthetic Omniglot training split: 4112 classes of 20 images of 28x28 uint8.
  assert line["dataset_mb"] == pytest.approx(4112 * 20 * 28 * 28 / 2**20)
  assert line["peak_rss_mb"] > line["dataset_mb"] + 100  # At least the dataset and JAX.
  assert line["peak_rss_net_of_dataset_mb"] == pytest.approx(
    line["peak_rss_mb"] - line["dataset_mb"], abs=50
  )
  json.dumps(line)  # One JSON line.


def test_xla_bytes_count_the_state_and_the_episodes_and_chunks_cut_the_scratch(two_runs):
  """Arguments: params, Adam's two moments and the 2-task meta-batch of uint8 images."""
  config = bench.workload_config(TINY, True, "im2col")
  model, algorithm = bench.make_algorithm(config)
  images = jnp.zeros((2, 28, 28, 1), jnp.uint8)
  params = algorithm.init_params(model.init(jax.random.key(0), images, train=True)["params"])
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  episode_bytes = 2 * (2 * 1 + 2 * config.train.n_query) * 28 * 28  # [T, N*(K+Q), 28, 28, 1]
  line = two_runs[0]
  assert 3 * param_bytes + episode_bytes <= line["xla_argument_bytes"]
  assert line["xla_argument_bytes"] <= 3 * param_bytes + episode_bytes + 4096
  assert line["tasks_per_chunk"] == 0
  chunked = bench.run(TINY, 1, "im2col", True, inner_steps=1, tasks_per_chunk=1)
  assert chunked["tasks_per_chunk"] == 1
  assert chunked["xla_temp_bytes"] < 0.75 * line["xla_temp_bytes"]


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
  workload = dataclasses.replace(TINY, name="tiny_sampler", sampler_only=True)
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


def flat(config) -> dict:
  """{"a.b": value} for every leaf of a ConfigDict."""
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update({f"{key}.{k}": v for k, v in flat(value).items()})
    else:
      out[key] = value
  return out


@pytest.mark.parametrize("name", [n for n, w in bench.WORKLOADS.items() if not w.sampler_only])
def test_a_workload_times_its_config_file_changed_only_by_its_overrides(name):
  """Every setting the step sees comes from the config file, but the stated overrides and flags."""
  workload = bench.WORKLOADS[name]
  module = importlib.import_module(f"configs.{workload.config_file}")
  trained = flat(module.get_config())
  timed = flat(bench.workload_config(workload, first_order=False, conv_impl="auto"))
  changed = {key for key in trained if trained[key] != timed[key]}
  assert set(trained) == set(timed)
  allowed = {key for key, _ in workload.overrides} | {"maml.first_order", "maml.anil"}
  assert changed <= allowed, changed - allowed
  for key, value in workload.overrides:
    assert timed[key] == value


def test_the_maxpool_workloads_differ_from_the_strided_ones_in_the_model_only():
  for name in ("maml_omniglot_5w1s", "maml_omniglot_20w1s"):
    strided = flat(bench.workload_config(bench.WORKLOADS[name], False, "auto"))
    maxpool = flat(bench.workload_config(bench.WORKLOADS[f"{name}_maxpool"], False, "auto"))
    assert strided["model.downsample"] == "stride" and maxpool["model.downsample"] == "max_pool"
    assert {k for k in strided if strided[k] != maxpool[k]} == {"model.downsample"}
