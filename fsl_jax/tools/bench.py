"""The benchmark command: ``python -m fsl_jax.bench [--workload NAME ...] [--repeats N]``.

Each workload prints one JSON line with the median and minimum seconds per
step after warm-up, episodes/s, compile time, peak host memory, and the FLOPs
of the compiled step from XLA's cost analysis. Compute workloads draw episodes
from random images of the dataset's shape (the cost does not depend on pixel
values); sampler workloads time the host data path alone.

The meta-batch is sharded over every device, as in training: to time D CPU
devices, set XLA_FLAGS=--xla_force_host_platform_device_count=D before starting.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from configs import common
from fsl_jax.algorithms import make_algorithm
from fsl_jax.data.class_images import ClassImages
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.runtime import host_allocator, sharding
from fsl_jax.runtime.cpu_matmuls import CPU_MATMULS
from fsl_jax.state import create_train_state, make_optimizer
from fsl_jax.steps import make_train_step
from fsl_jax.tools import op_profile


@dataclasses.dataclass(frozen=True)
class Workload:
  """A benchmark: episode shape and data shape as in the reference code's settings."""

  name: str
  algorithm: str  # "protonet", "matching", "maml" or "sampler".
  classes: int  # Classes in the synthetic dataset, as in the real training split.
  image_shape: tuple[int, int, int]
  shape: EpisodeShape
  meta_batch_size: int = 1
  inner_steps: int = 0
  inner_lr: float = 0.0
  filters: int = 64
  images_per_class: int = 20
  fce: bool = False  # Matching Networks' Full Context Embeddings.
  # "max_pool", or "stride": Finn et al.'s Omniglot model (stride-2 convs, spatial mean).
  downsample: str = "max_pool"
  cpu_matmuls: str = "ynnpack"  # As the library's config for this setting.


OMNIGLOT = dict(classes=4112, image_shape=(28, 28, 1))
MINI = dict(classes=64, image_shape=(84, 84, 3), images_per_class=600)
WORKLOADS = {
  w.name: w
  for w in [
    Workload("proto_omniglot_60w1s", "protonet", shape=EpisodeShape(60, 1, 5), **OMNIGLOT),
    Workload("matching_omniglot_5w1s", "matching", shape=EpisodeShape(5, 1, 15), **OMNIGLOT),
    Workload("matching_mini_5w1s_fce", "matching", shape=EpisodeShape(5, 1, 15), fce=True, **MINI),
    Workload(
      "maml_omniglot_5w1s",
      "maml",
      shape=EpisodeShape(5, 1, 1),
      meta_batch_size=32,
      inner_steps=1,
      inner_lr=0.4,
      downsample="stride",
      cpu_matmuls="eigen",  # As configs/maml_omniglot*.py.
      **OMNIGLOT,
    ),
    Workload(
      "maml_omniglot_20w1s",
      "maml",
      shape=EpisodeShape(20, 1, 1),
      meta_batch_size=16,
      inner_steps=5,
      inner_lr=0.1,
      downsample="stride",
      cpu_matmuls="eigen",  # As configs/maml_omniglot*.py.
      **OMNIGLOT,
    ),
    Workload("proto_mini_30w1s", "protonet", shape=EpisodeShape(30, 1, 15), **MINI),
    Workload(
      "maml_mini_5w1s",
      "maml",
      shape=EpisodeShape(5, 1, 5),  # The reference code's benchmark setting (configs use 15).
      meta_batch_size=4,
      inner_steps=5,
      inner_lr=0.01,
      filters=32,
      **MINI,
    ),
    Workload("sampler_omniglot", "sampler", shape=EpisodeShape(60, 1, 5), **OMNIGLOT),
    Workload("sampler_mini", "sampler", shape=EpisodeShape(5, 5, 15), **MINI),
  ]
}


def maxpool_variant(name: str) -> Workload:
  """MAML Omniglot workload ``name`` on the reference PyTorch code's max-pool model
  (``--config.model.downsample=max_pool``): ``NAME_maxpool``."""
  return dataclasses.replace(WORKLOADS[name], name=f"{name}_maxpool", downsample="max_pool")


WORKLOADS.update(
  {w.name: w for w in map(maxpool_variant, ("maml_omniglot_5w1s", "maml_omniglot_20w1s"))}
)

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
  "XLA:CPU's matmul library (config.cpu_matmuls); default: the workload's.",
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
) -> ml_collections.ConfigDict:
  """The library config that trains ``workload``."""
  config = common.get_base_config()
  config.algorithm = workload.algorithm
  config.model.conv_impl = conv_impl
  config.model.compute_dtype = dtype
  config.cpu_matmuls = cpu_matmuls or workload.cpu_matmuls
  config.model.filters = workload.filters
  config.model.downsample = workload.downsample
  channels = workload.image_shape[-1]
  config.model.pixel_mean = (0.5,) * channels
  config.model.pixel_std = (0.25,) * channels
  for section in (config.train, config.eval):
    section.n_way = workload.shape.n_way
    section.k_shot = workload.shape.k_shot
    section.n_query = workload.shape.n_query
  config.train.meta_batch_size = workload.meta_batch_size
  if workload.algorithm == "protonet":
    config.protonet = dict(distance="euclidean", cosine_scale=10.0)
  if workload.algorithm == "matching":
    config.matching = common.matching("omniglot", 5, 1, "fce" if workload.fce else None).matching
  if workload.algorithm == "maml":
    common.set_maml(
      config,
      inner_lr=workload.inner_lr,
      inner_steps=workload.inner_steps,
      test_inner_steps=workload.inner_steps,
      meta_batch_size=workload.meta_batch_size,
    )
    config.maml.first_order = first_order
    config.maml.remat = remat
    config.maml.anil = anil
  return config


def synthetic_images(workload: Workload) -> ClassImages:
  rng = np.random.default_rng(0)
  shape = (workload.classes, workload.images_per_class, *workload.image_shape)
  images = rng.integers(0, 256, size=shape, dtype=np.uint8)
  return ClassImages(images, tuple(f"class{i}" for i in range(workload.classes)))


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_sampler(workload: Workload, repeats: int) -> dict:
  sampler = EpisodeSampler(synthetic_images(workload), workload.shape, seed=0)
  per_round = 100
  times = []
  for r in range(repeats):
    start = time.perf_counter()
    sampler.episodes(r * per_round, per_round)
    times.append((time.perf_counter() - start) / per_round)
  return {"step_seconds_median": statistics.median(times), "step_seconds_min": min(times)}


def time_train_step(
  workload: Workload, config: ml_collections.ConfigDict, repeats: int, profile_top: int = 0
) -> dict:
  sampler = EpisodeSampler(synthetic_images(workload), workload.shape, seed=0)
  mesh = sharding.make_mesh()
  model, algorithm = make_algorithm(config)
  tx = make_optimizer(config.optim, workload.meta_batch_size)
  example = jnp.asarray(sampler.episode(0).support)
  state = create_train_state(model, tx, example, 0, algorithm.init_params)
  state = jax.device_put(state, sharding.replicated(mesh))
  step = make_train_step(algorithm.loss, tx, workload.shape.n_way, mesh, config.cpu_matmuls)
  size = workload.meta_batch_size
  sharding.check_batch_divides(size, mesh, "meta_batch_size")
  batches = [sharding.to_global(sampler.episodes(i * size, size), mesh) for i in range(4)]
  start = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  for i in range(2):  # Warm-up.
    state, metrics = compiled(state, batches[i % len(batches)])
  jax.block_until_ready(metrics)
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
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
    # XLA's own estimate of the step's scratch memory, on every backend.
    "xla_temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
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
) -> dict:
  if workload.algorithm == "sampler":
    timing = time_sampler(workload, repeats)
  else:
    config = workload_config(
      workload, bool(first_order), conv_impl, remat, dtype, cpu_matmuls, anil
    )
    timing = time_train_step(workload, config, repeats, profile_top)
  return {
    "workload": workload.name,
    "algorithm": workload.algorithm,
    "first_order": first_order,
    "dtype": dtype if workload.algorithm != "sampler" else None,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "host_allocator": host_allocator.active(),
    **timing,
    "episodes_per_second": workload.meta_batch_size / timing["step_seconds_median"],
    "peak_rss_mb": peak_rss_mb(),
    **(
      {"remat": remat, "anil": anil, "inner_steps": workload.inner_steps}
      if workload.algorithm == "maml"
      else {}
    ),
  }


def main(argv):
  del argv
  if _PROFILE_TOP.value:
    op_profile.enable_cpu_op_events()
  for name in _WORKLOAD.value or list(WORKLOADS):
    workload = WORKLOADS[name]
    if _INNER_STEPS.value is not None and workload.algorithm == "maml":
      workload = dataclasses.replace(workload, inner_steps=_INNER_STEPS.value)
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
      )
      print(json.dumps(result), flush=True)


def run_main() -> None:
  """``python -m fsl_jax.bench``: with the fast host allocator, as training runs."""
  host_allocator.reexec_with_fast_allocator()
  app.run(main)


if __name__ == "__main__":
  run_main()
