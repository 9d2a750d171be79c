"""Loads a prepared dataset into class-indexed uint8 arrays in host memory.

The result of loading is one ``ClassImages`` per part (train/val/test):
``images[c, m]`` is drawing ``m`` of class ``c``, shape ``[C, M, H, W, channels]``,
uint8. At one byte per pixel even miniImageNet (100 classes x 600 images of
84x84x3) fits in host memory, so everything stays there (uint8; normalised on
device) and episodes are gathered with one fancy-indexing operation.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from fsl_jax.data import build_once, memory, mini_imagenet, omniglot, omniglot_splits
from fsl_jax.errors import ConfigError, DataError

MANUAL_DIR_ENV = "FSL_JAX_MANUAL_DIR"
_READ_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class ClassImages:
  """All images of some classes: ``images`` is ``[C, M, H, W, channels]`` uint8."""

  images: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    if self.images.ndim != 5 or self.images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [C, M, H, W, ch], got {self.images.shape}")
    if len(self.class_names) != self.images.shape[0]:
      raise ValueError("one class name per class is required")

  @property
  def num_classes(self) -> int:
    return self.images.shape[0]

  @property
  def images_per_class(self) -> int:
    return self.images.shape[1]


def resolve_manual_dir(manual_dir: str | None) -> str | None:
  """config.data.manual_dir, else $FSL_JAX_MANUAL_DIR, else None (download)."""
  manual_dir = manual_dir or os.environ.get(MANUAL_DIR_ENV) or None
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise DataError(
      f"manual_dir {manual_dir!r} is not a folder. Point --config.data.manual_dir "
      f"(or ${MANUAL_DIR_ENV}) at the folder that holds the dataset files."
    )
  return manual_dir


def prepare_omniglot(
  builder_config: str | omniglot.OmniglotConfig,
  data_dir: str | None,
  manual_dir: str | None,
) -> omniglot.OmniglotFewShot:
  """Builds (once, on process 0 of a multi-process run) and returns the Omniglot tfds
  builder for one config.

  A prepared dataset is reused only for the inputs it was built from: its
  recorded sha256s must equal the config's, and any zip now in ``manual_dir``
  must hash to the recorded value.
  """
  download = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder = build_once.prepared(
    lambda: omniglot.OmniglotFewShot(
      config=builder_config, data_dir=data_dir, file_format="array_record"
    ),
    lambda builder: builder.download_and_prepare(download_config=download),
  )
  zips = builder.builder_config.zips
  recorded = dict(builder.info.metadata.get("zip_sha256", {}))
  expected = {z.filename: z.sha256 for z in zips}
  if recorded != expected:
    raise DataError(
      f"the prepared dataset in {builder.data_dir} was built from {recorded}, not from "
      f"{expected}. Delete that folder or choose another --config.data.data_dir."
    )
  if manual_dir is not None:
    for z in zips:
      path = os.path.join(manual_dir, z.filename)
      if os.path.exists(path):
        omniglot.verify_zip(path, z)
  return builder


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """[H, W, ch] uint8 (ch 1 or 3) -> [size, size, ch] uint8, with a Lanczos filter."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  if image.shape[-1] == 1:
    pil = Image.fromarray(image[..., 0], mode="L")
    return np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS))[..., None]
  pil = Image.fromarray(image, mode="RGB")
  return np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS))


def read_classes(
  builder: omniglot.OmniglotFewShot, image_size: int
) -> dict[tuple[str, int], tuple[str, np.ndarray]]:
  """Reads every record once: (alphabet, character) -> (zip split, [M, S, S, 1]).

  A character present in several zips (Greek and Latin are in both small zips,
  with identical drawings) is taken from the first zip of the config. Drawings
  are ordered by drawer.
  """
  classes: dict[tuple[str, int], tuple[str, list]] = {}
  for z in builder.builder_config.zips:
    source = builder.as_data_source(split=z.split)
    found: dict[tuple[str, int], list] = defaultdict(list)
    for start in range(0, len(source), _READ_CHUNK):
      indices = list(range(start, min(start + _READ_CHUNK, len(source))))
      for record in source.__getitems__(indices):
        key = (record["alphabet"].decode(), int(record["character"]))
        found[key].append((int(record["drawer"]), resize(record["image"], image_size)))
    for key, drawings in found.items():
      if key not in classes:
        classes[key] = (z.split, drawings)
  out = {}
  for key, (split, drawings) in classes.items():
    drawings.sort(key=lambda d: d[0])
    out[key] = (split, np.stack([image for _, image in drawings]))
  return out


def rotate_classes(
  images: np.ndarray, names: list[str], rotations: tuple[int, ...]
) -> tuple[np.ndarray, list[str]]:
  """Each rotation (degrees, multiple of 90) makes a new class: [C, ...] -> [C*R, ...].

  Classes are ordered class-major: class c under rotation r is row c*R + r.
  """
  for angle in rotations:
    if angle % 90:
      raise DataError(f"rotations must be multiples of 90 degrees, got {angle}.")
  # [C, M, H, W, ch] -> [C, R, M, H, W, ch]; np.rot90 turns counter-clockwise.
  rotated = np.stack([np.rot90(images, k=angle // 90, axes=(2, 3)) for angle in rotations], 1)
  rotated = rotated.reshape((-1, *images.shape[1:]))
  rotated_names = [f"{name}/rot{angle:03d}" for name in names for angle in rotations]
  return np.ascontiguousarray(rotated), rotated_names


def load_omniglot(
  split: str,
  image_size: int = 28,
  train_rotations: tuple[int, ...] = (0, 90, 180, 270),
  eval_rotations: tuple[int, ...] = (0, 90, 180, 270),
  data_dir: str | None = None,
  manual_dir: str | None = None,
  builder_config: omniglot.OmniglotConfig | None = None,
) -> dict[str, ClassImages]:
  """Loads one few-shot split of Omniglot: part name -> ClassImages.

  Args:
    split: "vinyals", "lake", "small" or "small_all" (see omniglot_splits).
    image_size: side of the square images, resized from 105.
    train_rotations: rotations that multiply the training classes.
    eval_rotations: rotations that multiply the val and test classes.
    data_dir: where tfds writes prepared datasets; None for tfds's default.
    manual_dir: folder holding the official zips; None to download them.
    builder_config: overrides the split's builder config (tests use this).

  Returns:
    {"train": ClassImages, "val": ..., "test": ...}, the parts the split has.
  """
  rule = omniglot_splits.get_split(split)
  manual_dir = resolve_manual_dir(manual_dir)
  builder = prepare_omniglot(builder_config or rule.builder_config, data_dir, manual_dir)
  classes = read_classes(builder, image_size)
  by_part: dict[str, list] = defaultdict(list)
  for (alphabet, character), (zip_split, images) in sorted(classes.items()):
    part = rule.part_of(alphabet, character, zip_split)
    if part is not None:
      by_part[part].append((f"{alphabet}/character{character:02d}", images))
  out = {}
  for part in rule.parts:
    if not by_part[part]:
      raise DataError(f"split {split!r} has no {part} classes in {builder.data_dir}.")
    names = [name for name, _ in by_part[part]]
    counts = {images.shape[0] for _, images in by_part[part]}
    if len(counts) != 1:
      raise DataError(
        f"{part} classes of {split!r} have different numbers of drawings {sorted(counts)}; "
        f"the dataset in {builder.data_dir} is incomplete. Delete it and build again."
      )
    images = np.stack([images for _, images in by_part[part]])
    rotations = train_rotations if part == "train" else eval_rotations
    images, names = rotate_classes(images, names, tuple(rotations))
    out[part] = ClassImages(images, tuple(names))
  return out


MINI_IMAGENET_SPLITS = ("ravi", "custom")


def prepare_mini_imagenet(
  split: str, data_dir: str | None, manual_dir: str | None
) -> mini_imagenet.MiniImagenetFewShot:
  """Builds (once) and returns the miniImageNet tfds builder for config ``split``.

  A prepared dataset is reused unless a split file now in ``manual_dir`` has another
  size than the one it was built from.
  """
  if split not in MINI_IMAGENET_SPLITS:
    raise ConfigError(
      f"config.data.split must be one of {MINI_IMAGENET_SPLITS} for miniImageNet, got {split!r}."
    )

  def build(builder: mini_imagenet.MiniImagenetFewShot) -> None:
    mini_imagenet.detect_layout(manual_dir)  # Fails before tfds creates any folder.
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )

  builder = build_once.prepared(
    lambda: mini_imagenet.MiniImagenetFewShot(
      config=split, data_dir=data_dir, file_format="array_record"
    ),
    build,
  )
  recorded = dict(builder.info.metadata.get("source_sizes", {}))
  for name, size in recorded.items():
    path = os.path.join(manual_dir, name) if manual_dir else None
    if path and os.path.isfile(path) and os.path.getsize(path) != size:
      raise DataError(
        f"the prepared dataset in {builder.data_dir} was built from a {name} of {size} "
        f"bytes, but {path} has {os.path.getsize(path)}. Delete that folder or choose "
        "another --config.data.data_dir."
      )
  return builder


def read_mini_imagenet_split(
  builder: mini_imagenet.MiniImagenetFewShot, split: str, image_size: int
) -> ClassImages:
  """Decodes one split into ClassImages [C, M, S, S, 3], classes sorted by id.

  M is the smallest class's size (600 in Ravi's split). The memory needed is checked
  first, and the array is filled in place, so the peak is the array plus one chunk.
  """
  counts = mini_imagenet.class_counts(builder)[split]
  if not counts:
    raise DataError(f"the dataset in {builder.data_dir} records no {split} classes; rebuild it.")
  names = sorted(counts)
  per_class = min(counts.values())
  if len(set(counts.values())) > 1:
    logging.warning(
      "miniImageNet %s classes have %d to %d images; using the first %d of each.",
      split, per_class, max(counts.values()), per_class,
    )  # fmt: skip
  shape = (len(names), per_class, image_size, image_size, 3)
  memory.check_available(
    int(np.prod(shape)),
    f"decoding the miniImageNet {split} split ({shape[0]} classes x {shape[1]} images of "
    f"{image_size}x{image_size}x3 uint8)",
    ", or lower --config.data.image_size",
  )
  images = np.empty(shape, np.uint8)
  filled = np.zeros(shape[:2], bool)
  row_of = {name: c for c, name in enumerate(names)}
  source = builder.as_data_source(split=split)
  for start in range(0, len(source), _READ_CHUNK):
    for record in source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source))))):
      c, m = row_of[record["label"].decode()], int(record["index"])
      if m < per_class:
        images[c, m] = resize(record["image"], image_size)
        filled[c, m] = True
  if not filled.all():
    raise DataError(
      f"the {split} split in {builder.data_dir} lacks {int((~filled).sum())} of the images "
      "it records. Delete that folder and build again."
    )
  return ClassImages(images, tuple(names))


def load_mini_imagenet(
  split: str = "ravi",
  image_size: int = 84,
  data_dir: str | None = None,
  manual_dir: str | None = None,
) -> dict[str, ClassImages]:
  """Loads miniImageNet from the user's files: part name -> ClassImages.

  Args:
    split: "ravi" (the splits must be Ravi & Larochelle's 64/16/20 classes) or
      "custom" (your own split; differences only warn).
    image_size: side of the square images, resized from 84 if different.
    data_dir: where tfds writes prepared datasets; None for tfds's default.
    manual_dir: the folder holding one of the layouts in
      ``mini_imagenet.MANUAL_DOWNLOAD_INSTRUCTIONS``.

  Returns:
    {"train": ClassImages, "val": ..., "test": ...}, uint8 [C, M, S, S, 3].
  """
  manual_dir = resolve_manual_dir(manual_dir)
  builder = prepare_mini_imagenet(split, data_dir, manual_dir)
  out = {part: read_mini_imagenet_split(builder, part, image_size) for part in mini_imagenet.SPLITS}
  seen: dict[str, str] = {}
  for part, data in out.items():
    for name in data.class_names:
      if name in seen:
        raise DataError(
          f"class {name} is in both the {seen[name]} and the {part} split of "
          f"{builder.data_dir}; few-shot splits must not share classes. Fix the split files."
        )
      seen[name] = part
  return out
