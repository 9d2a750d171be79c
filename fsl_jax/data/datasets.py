"""config.data -> {"train", "val", "test"} ClassImages, whatever the dataset."""

from __future__ import annotations

import ml_collections

from fsl_jax.data.class_images import ClassImages, load_mini_imagenet, load_omniglot
from fsl_jax.errors import ConfigError

DATASETS = ("omniglot", "mini_imagenet")


def load_dataset(data: ml_collections.ConfigDict) -> dict[str, ClassImages]:
  """Loads the few-shot split ``data.split`` of ``data.dataset`` into host memory."""
  if data.dataset == "omniglot":
    return load_omniglot(
      split=data.split,
      image_size=data.image_size,
      train_rotations=tuple(data.train_rotations),
      eval_rotations=tuple(data.eval_rotations),
      data_dir=data.data_dir,
      manual_dir=data.manual_dir,
    )
  if data.dataset == "mini_imagenet":
    return load_mini_imagenet(
      split=data.split,
      image_size=data.image_size,
      data_dir=data.data_dir,
      manual_dir=data.manual_dir,
    )
  raise ConfigError(f"config.data.dataset must be one of {DATASETS}, got {data.dataset!r}.")
