"""The benchmark command: ``python -m fsl_jax.bench [--workload NAME ...] [--repeats N]``.

Each workload prints one JSON line with the median and minimum seconds per
step after warm-up, episodes/s, compile time, peak host memory, and the FLOPs
of the compiled step from XLA's cost analysis. Compute workloads draw episodes
from random images of the dataset's shape (the cost does not depend on pixel
values); sampler workloads time the host data path alone.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import common
from fsl_jax import sharding
from fsl_jax.algorithms import make_loss
from fsl_jax.data.class_images import ClassImages
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.models import make_model
from fsl_jax.state import create_train_state
from fsl_jax.steps import make_train_step
from fsl_jax.train import make_optimizer


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  algorithm: str  # "protonet" or "sampler".
  classes: int  # Classes in the synthetic dataset, as in the real training split.
  image_shape: tuple[int, int, int]
  shape: EpisodeShape
  meta_batch_size: int = 1


WORKLOADS = {
  w.name: w
  for w in [
    Workload("proto_omniglot_60w1s", "protonet", 4112, (28, 28, 1), EpisodeShape(60, 1, 5)),
    Workload("sampler_omniglot", "sampler", 4112, (28, 28, 1), EpisodeShape(60, 1, 5)),
  ]
}

_WORKLOAD = flags.DEFINE_multi_enum(
  "workload", None, list(WORKLOADS), "Workloads to run; all when not given."
)
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed steps per workload, after warm-up.")
_CONV_IMPL = flags.DEFINE_enum("conv_impl", "auto", ["auto", "xla", "im2col"], "Convolution.")


def synthetic_images(workload: Workload, images_per_class: int = 20) -> ClassImages:
  rng = np.random.default_rng(0)
  shape = (workload.classes, images_per_class, *workload.image_shape)
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


def time_train_step(workload: Workload, repeats: int, conv_impl: str) -> dict:
  config = common.get_base_config()
  config.algorithm = workload.algorithm
  config.protonet = dict(distance="euclidean", cosine_scale=10.0)
  config.model.conv_impl = conv_impl
  config.train.n_way = workload.shape.n_way
  sampler = EpisodeSampler(synthetic_images(workload), workload.shape, seed=0)
  mesh = sharding.make_mesh()
  model = make_model(config.model)
  tx = make_optimizer(config.optim, workload.meta_batch_size)
  state = create_train_state(model, tx, jnp.asarray(sampler.episode(0).support), 0)
  step = make_train_step(make_loss(config, model), tx, workload.shape.n_way)
  batches = [
    sharding.to_global(
      sampler.episodes(i * workload.meta_batch_size, workload.meta_batch_size), mesh
    )
    for i in range(4)
  ]
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
  return {
    "step_seconds_median": statistics.median(times),
    "step_seconds_min": min(times),
    "compile_seconds": compile_seconds,
    "gflop_per_step": flops / 1e9,
    "gflops_per_second": flops / 1e9 / statistics.median(times),
    "device_peak_bytes": memory.get("peak_bytes_in_use"),
    "conv_impl": model.conv_impl,
  }


def run(workload: Workload, repeats: int, conv_impl: str) -> dict:
  if workload.algorithm == "sampler":
    timing = time_sampler(workload, repeats)
  else:
    timing = time_train_step(workload, repeats, conv_impl)
  return {
    "workload": workload.name,
    "algorithm": workload.algorithm,
    "first_order": None,
    "dtype": "float32",
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    **timing,
    "episodes_per_second": workload.meta_batch_size / timing["step_seconds_median"],
    "peak_rss_mb": peak_rss_mb(),
  }


def main(argv):
  del argv
  for name in _WORKLOAD.value or list(WORKLOADS):
    print(json.dumps(run(WORKLOADS[name], _REPEATS.value, _CONV_IMPL.value)), flush=True)


if __name__ == "__main__":
  app.run(main)
