"""Flax (Linen) models whose params and batch statistics are plain pytrees."""

from __future__ import annotations

import ml_collections

from fsl_jax.errors import ConfigError
from fsl_jax.models.conv4 import COMPUTE_DTYPES, CONV_IMPLS, DOWNSAMPLES, Conv4, default_conv_impl


def make_model(
  model: ml_collections.ConfigDict, num_outputs: int | None = None, per_task_weights: bool = False
) -> Conv4:
  """The backbone that config.model describes.

  conv_impl "auto" picks the fastest formulation per backend and per use: pass
  ``per_task_weights=True`` when the params will be ``vmap``ped per task (MAML).
  """
  if model.name != "conv4":
    raise ConfigError(f"config.model.name must be 'conv4', got {model.name!r}.")
  auto = model.conv_impl == "auto"
  impl = default_conv_impl(per_task_weights=per_task_weights) if auto else model.conv_impl
  if impl not in CONV_IMPLS:
    raise ConfigError(f"config.model.conv_impl must be 'auto' or one of {CONV_IMPLS}.")
  for key, allowed in (("downsample", DOWNSAMPLES), ("compute_dtype", COMPUTE_DTYPES)):
    if model[key] not in allowed:
      raise ConfigError(f"config.model.{key} must be one of {allowed}, got {model[key]!r}.")
  return Conv4(
    filters=model.filters,
    conv_impl=impl,
    pixel_mean=tuple(model.pixel_mean),
    pixel_std=tuple(model.pixel_std),
    num_outputs=num_outputs,
    num_blocks=model.num_blocks,
    downsample=model.downsample,
    compute_dtype=model.compute_dtype,
  )
