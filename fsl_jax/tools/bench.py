"""The benchmark command: ``python -m fsl_jax.bench [--workload NAME ...] [--repeats N]``.

A workload is the train step of a config file, changed only by the benchmark's
own overrides (``WORKLOADS``) and the command's flags. Each prints one JSON line
with the median and minimum seconds per step after warm-up, episodes/s, compile
time, the FLOPs of the compiled step from XLA's cost analysis, XLA's temp and
argument bytes, and the process's peak host memory, also net of the synthetic
dataset it holds. Peak memory is the process's: run one workload per process to
read it per workload. Compute workloads draw episodes from random images of the
dataset's shape (the cost does not depend on pixel values); sampler workloads
time the host data path alone.

The meta-batch is sharded over every device, as in training: to time D CPU
devices, set XLA_FLAGS=--xla_force_host_platform_device_count=D before starting.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from fsl_jax import task_chunks
from fsl_jax.algorithms import make_algorithm
from fsl_jax.data.class_images import ClassImages
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.runtime import host_allocator, host_memory, sharding
from fsl_jax.runtime.cpu_matmuls import CPU_MATMULS
from fsl_jax.state import create_train_state, make_optimizer
from fsl_jax.steps import make_train_step
from fsl_jax.tools import op_profile


@dataclasses.dataclass(frozen=True)
class Workload:
  """A benchmark: the train step of a config file, with the benchmark's own overrides.

  ``overrides`` are dotted config keys, e.g. ``("train.n_query", 5)``: the only
  places where a timed step differs from what the config trains.
  """

  name: str
  config_file: str  # A module of configs/, e.g. "proto_omniglot5w1s".
  overrides: tuple[tuple[str, Any], ...] = ()
  sampler_only: bool = False  # Time the host data path alone, no step.

  @property
  def algorithm(self) -> str:
    return "sampler" if self.sampler_only else self.config().algorithm

  def config(self) -> ml_collections.ConfigDict:
    config = importlib.import_module(f"configs.{self.config_file}").get_config()
    for key, value in self.overrides:
      *sections, field = key.split(".")
      section = functools.reduce(getattr, sections, config)
      setattr(section, field, value)
    return config


# The synthetic dataset of each config's data.dataset: as many classes and images
# per class as the real training split (Omniglot's 1028 background classes in
# four rotations; miniImageNet's 64 classes of 600 images).
SYNTHETIC_SPLITS = {
  "omniglot": dict(classes=4112, images_per_class=20, channels=1),
  "mini_imagenet": dict(classes=64, images_per_class=600, channels=3),
}
MAXPOOL = (("model.downsample", "max_pool"),)  # The reference PyTorch code's MAML model.
WORKLOADS = {
  w.name: w
  for w in [
    Workload("proto_omniglot_60w1s", "proto_omniglot5w1s"),
    Workload("matching_omniglot_5w1s", "matching_omniglot5w1s"),
    Workload("matching_mini_5w1s_fce", "matching_mini5w1s"),
    Workload("maml_omniglot_5w1s", "maml_omniglot5w1s"),
    Workload("maml_omniglot_20w1s", "maml_omniglot20w1s"),
    Workload("maml_omniglot_5w1s_maxpool", "maml_omniglot5w1s", MAXPOOL),
    Workload("maml_omniglot_20w1s_maxpool", "maml_omniglot20w1s", MAXPOOL),
    Workload("proto_mini_30w1s", "proto_mini5w1s"),
    # The reference code's benchmark setting: 5 queries per class (the config trains with 15).
    Workload("maml_mini_5w1s", "maml_mini5w1s", (("train.n_query", 5),)),
    Workload("imaml_omniglot_5w1s", "imaml_omniglot5w1s"),
    Workload("imaml_mini_5w1s", "imaml_mini5w1s", (("train.n_query", 5),)),
    Workload("sampler_omniglot", "proto_omniglot5w1s", sampler_only=True),
    Workload("sampler_mini", "matching_mini5w5s", sampler_only=True),
  ]
}

_WORKLOAD = flags.DEFINE_multi_enum(
  "workload", None, list(WORKLOADS), "Workloads to run; all when not given."
)
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed steps per workload, after warm-up.")
_CONV_IMPL = flags.DEFINE_enum(
  "conv_impl", "auto", ["auto", "xla", "im2col", "winograd"], "Convolution."
)
_CPU_MATMULS = flags.DEFINE_enum(
  "cpu_matmuls",
  None,
  list(CPU_MATMULS),
  "XLA:CPU's matmul library (config.cpu_matmuls); default: the workload's config's.",
)
_ORDERS = flags.DEFINE_multi_enum(
  "order", ["first", "second"], ["first", "second"], "MAML orders to run."
)
_DTYPE = flags.DEFINE_enum(
  "dtype", "float32", ["float32", "bfloat16"], "config.model.compute_dtype (params stay float32)."
)
_PROFILE_TOP = flags.DEFINE_integer(
  "profile_top", 0, "Also trace 3 steps and report the N slowest XLA operations (top_ops)."
)
_REMAT = flags.DEFINE_bool("remat", False, "MAML: jax.checkpoint each inner step.")
_ANIL = flags.DEFINE_bool("anil", False, "MAML: adapt only the head in the inner loop (ANIL).")
_TASKS_PER_CHUNK = flags.DEFINE_integer(
  "tasks_per_chunk",
  None,
  "config.train.tasks_per_chunk (0: whole meta-batch); default: the config's.",
)
_INNER_STEPS = flags.DEFINE_integer(
  "inner_steps", None, "MAML: override the workload's number of inner steps (memory studies)."
)


def workload_config(
  workload: Workload,
  first_order: bool,
  conv_impl: str,
  remat: bool = False,
  dtype: str = "float32",
  cpu_matmuls: str | None = None,
  anil: bool = False,
  inner_steps: int | None = None,
  tasks_per_chunk: int | None = None,
) -> ml_collections.ConfigDict:
  """The workload's config with the command's flags applied."""
  config = workload.config()
  if tasks_per_chunk is not None:
    config.train.tasks_per_chunk = tasks_per_chunk
  config.model.conv_impl = conv_impl
  config.model.compute_dtype = dtype
  config.cpu_matmuls = cpu_matmuls or config.cpu_matmuls
  if config.algorithm == "maml":
    config.maml.first_order = first_order
    config.maml.remat = remat
    config.maml.anil = anil
    if inner_steps is not None:
      config.maml.inner_steps = inner_steps
  return config


def episode_shape(config: ml_collections.ConfigDict) -> EpisodeShape:
  return EpisodeShape(config.train.n_way, config.train.k_shot, config.train.n_query)


def synthetic_images(config: ml_collections.ConfigDict) -> ClassImages:
  """Random uint8 images shaped like the config's training split (cost does not depend on pixels)."""
  split = SYNTHETIC_SPLITS[config.data.dataset]
  size = config.data.image_size
  shape = (split["classes"], split["images_per_class"], size, size, split["channels"])
  images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
  return ClassImages(images, tuple(f"class{i}" for i in range(split["classes"])))


def time_sampler(config: ml_collections.ConfigDict, repeats: int) -> dict:
  images = synthetic_images(config)
  sampler = EpisodeSampler(images, episode_shape(config), seed=0)
  per_round = 100
  times = []
  for r in range(repeats):
    start = time.perf_counter()
    sampler.episodes(r * per_round, per_round)
    times.append((time.perf_counter() - start) / per_round)
  return {
    "step_seconds_median": statistics.median(times),
    "step_seconds_min": min(times),
    "dataset_mb": images.images.nbytes / 2**20,
  }


def time_train_step(config: ml_collections.ConfigDict, repeats: int, profile_top: int = 0) -> dict:
  """Compiles the config's train step ahead of time, then times one step at a time.

  As in training (train.py), the host allocator hands back what compilation freed
  before the first step. Each step finishes before the next is dispatched, so
  peak host memory holds one step's buffers (training dispatches ahead, and on
  CPU a queued step's buffers are allocated at dispatch).
  """
  images = synthetic_images(config)
  sampler = EpisodeSampler(images, episode_shape(config), seed=0)
  mesh = sharding.make_mesh()
  model, algorithm = make_algorithm(config)
  size = config.train.meta_batch_size
  tx = make_optimizer(config)
  example = jnp.asarray(sampler.episode(0).support)
  state = create_train_state(model, tx, example, 0, algorithm.init_params)
  state = jax.device_put(state, sharding.replicated(mesh))
  sharding.check_batch_divides(size, mesh, "meta_batch_size")
  chunk = task_chunks.tasks_per_chunk(config, mesh)
  step = make_train_step(
    algorithm.loss, tx, config.train.n_way, mesh, config.cpu_matmuls, tasks_per_chunk=chunk
  )
  batches = [sharding.to_global(sampler.episodes(i * size, size), mesh) for i in range(4)]
  start = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_seconds = time.perf_counter() - start
  scratch = compiled.memory_analysis()
  released = host_allocator.release_free_memory(scratch.temp_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  times = []
  for i in range(2 + repeats):  # Two warm-up steps, then the timed ones.
    start = time.perf_counter()
    state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  times = times[2:]
  memory = jax.devices()[0].memory_stats() or {}
  profile = {}
  if profile_top:

    def three_steps():
      nonlocal state
      for i in range(3):
        state, out = compiled(state, batches[i % len(batches)])
      jax.block_until_ready(out)

    profile["top_ops"] = op_profile.top_ops(three_steps, 3, compiled.as_text(), profile_top)
  return {
    "step_seconds_median": statistics.median(times),
    "step_seconds_min": min(times),
    "compile_seconds": compile_seconds,
    "gflop_per_step": flops / 1e9,
    "gflops_per_second": flops / 1e9 / statistics.median(times),
    "device_peak_bytes": memory.get("peak_bytes_in_use"),
    # XLA's own account of the compiled step's memory, on every backend: scratch
    # buffers, and the arguments (state and episodes) it reads.
    "xla_temp_bytes": scratch.temp_size_in_bytes,
    "xla_argument_bytes": scratch.argument_size_in_bytes,
    "tasks_per_chunk": chunk,
    "released_after_compile": released is not None,
    "dataset_mb": images.images.nbytes / 2**20,
    "conv_impl": getattr(getattr(model, "backbone", model), "conv_impl", "xla"),
    "cpu_matmuls": config.cpu_matmuls,
    **profile,
  }


def run(
  workload: Workload,
  repeats: int,
  conv_impl: str,
  first_order=None,
  remat=False,
  dtype: str = "float32",
  profile_top: int = 0,
  cpu_matmuls: str | None = None,
  anil: bool = False,
  inner_steps: int | None = None,
  tasks_per_chunk: int | None = None,
) -> dict:
  """Times ``workload`` with the command's flags; returns its JSON line as a dict."""
  config = workload_config(
    workload,
    bool(first_order),
    conv_impl,
    remat,
    dtype,
    cpu_matmuls,
    anil,
    inner_steps,
    tasks_per_chunk,
  )
  if workload.sampler_only:
    timing = time_sampler(config, repeats)
  else:
    timing = time_train_step(config, repeats, profile_top)
  maml = config.algorithm == "maml" and not workload.sampler_only
  return {
    "workload": workload.name,
    "algorithm": workload.algorithm,
    "first_order": first_order,
    "dtype": None if workload.sampler_only else dtype,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "host_allocator": host_allocator.active(),
    **timing,
    "episodes_per_second": config.train.meta_batch_size / timing["step_seconds_median"],
    "peak_rss_mb": host_memory.peak_resident_mb(),
    # The process's peak less the synthetic dataset it holds (a training run holds
    # the real one instead).
    "peak_rss_net_of_dataset_mb": host_memory.peak_resident_mb() - timing["dataset_mb"],
    **({"remat": remat, "anil": anil, "inner_steps": config.maml.inner_steps} if maml else {}),
  }


def main(argv):
  del argv
  if _PROFILE_TOP.value:
    op_profile.enable_cpu_op_events()
  for name in _WORKLOAD.value or list(WORKLOADS):
    workload = WORKLOADS[name]
    orders = [o == "first" for o in _ORDERS.value] if workload.algorithm == "maml" else [None]
    for first_order in orders:
      result = run(
        workload,
        _REPEATS.value,
        _CONV_IMPL.value,
        first_order=first_order,
        remat=_REMAT.value,
        dtype=_DTYPE.value,
        profile_top=_PROFILE_TOP.value,
        cpu_matmuls=_CPU_MATMULS.value,
        anil=_ANIL.value,
        inner_steps=_INNER_STEPS.value,
        tasks_per_chunk=_TASKS_PER_CHUNK.value,
      )
      print(json.dumps(result), flush=True)


def run_main() -> None:
  """``python -m fsl_jax.bench``: with the fast host allocator, as training runs."""
  host_allocator.reexec_with_fast_allocator()
  app.run(main)


if __name__ == "__main__":
  run_main()
