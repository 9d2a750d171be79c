"""Flax (Linen) models whose params and batch statistics are plain pytrees.

``conv4.Conv4`` is conv-4 as the papers describe it; ``cpu.conv4.CpuConv4``
computes the same function, with the same parameter tree, in formulations that
are faster on XLA:CPU. ``make_model`` picks one per backend.
"""

from __future__ import annotations

import jax
import ml_collections

from fsl_jax.errors import ConfigError
from fsl_jax.models.conv4 import COMPUTE_DTYPES, DOWNSAMPLES, Conv4
from fsl_jax.models.cpu.conv4 import CONV_IMPLS, CpuConv4


def default_conv_impl(
  backend: str | None = None, per_task_weights: bool = False, tasks_per_chunk: int = 0
) -> str:
  """The fastest formulation per backend, as measured by ``python -m fsl_jax.bench``.

  "xla" (the reference ``Conv4``) off the CPU. On CPU, Winograd for shared weights
  (ProtoNets, Matching Networks) and for per-task weights (MAML) differentiated
  one task at a time (``tasks_per_chunk`` 1), where each product is one task's;
  im2col for per-task weights ``vmap``ped over several tasks, whose batched
  Winograd products are slower than im2col's single batched product
  (docs/performance.md has the measurements).
  """
  if (backend or jax.default_backend()) != "cpu":
    return "xla"
  return "im2col" if per_task_weights and tasks_per_chunk != 1 else "winograd"


def make_model(
  model: ml_collections.ConfigDict,
  num_outputs: int | None = None,
  per_task_weights: bool = False,
  tasks_per_chunk: int = 0,
) -> Conv4 | CpuConv4:
  """The backbone that config.model describes.

  conv_impl "xla" is the reference ``Conv4``; "im2col" and "winograd" are
  ``CpuConv4``; "auto" picks the fastest per backend and per use: pass
  ``per_task_weights=True`` when the params will be ``vmap``ped per task (MAML),
  and the tasks per chunk of its gradient (``fsl_jax.task_chunks``).
  """
  if model.name != "conv4":
    raise ConfigError(f"config.model.name must be 'conv4', got {model.name!r}.")
  auto = model.conv_impl == "auto"
  impl = (
    default_conv_impl(per_task_weights=per_task_weights, tasks_per_chunk=tasks_per_chunk)
    if auto
    else model.conv_impl
  )
  if impl not in CONV_IMPLS:
    raise ConfigError(f"config.model.conv_impl must be 'auto' or one of {CONV_IMPLS}.")
  for key, allowed in (("downsample", DOWNSAMPLES), ("compute_dtype", COMPUTE_DTYPES)):
    if model[key] not in allowed:
      raise ConfigError(f"config.model.{key} must be one of {allowed}, got {model[key]!r}.")
  common = dict(
    filters=model.filters,
    pixel_mean=tuple(model.pixel_mean),
    pixel_std=tuple(model.pixel_std),
    num_outputs=num_outputs,
    num_blocks=model.num_blocks,
    downsample=model.downsample,
    compute_dtype=model.compute_dtype,
  )
  if impl == "xla":
    return Conv4(**common)
  # Adapted per task, a grayscale image layer ran faster as im2col than as image_conv.
  return CpuConv4(conv_impl=impl, image_conv_layer=not per_task_weights, **common)
