"""Synthetic miniImageNet copies in the three layouts the builder reads.

File names and class ids are Ravi & Larochelle's, read from the shared split csvs;
only the first ``images_per_class`` images of each class are written. Each image
is a smooth pattern that identifies its (class, index), saved as a JPEG of any
size. ``expected`` holds what the builder must store: the JPEG decoded and, if its
size is not 84x84, resized with a Lanczos filter. The pickles hold exactly those
pixels, so every layout must load to the same arrays.

``pattern`` draws images whose classes have nothing in common, so nothing can be
learnt from them; ``tinted_pattern`` draws images that a few-shot learner can learn
to classify and an untrained one cannot, for end-to-end runs that must learn.
"""

from __future__ import annotations

import csv
import io
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
CACHE = {split: f"mini-imagenet-cache-{split}.pkl" for split in SPLITS}
METAOPTNET = {
  "train": "miniImageNet_category_split_train_phase_train.pickle",
  "val": "miniImageNet_category_split_val.pickle",
  "test": "miniImageNet_category_split_test.pickle",
}
LAYOUTS = ("csv", "cache", "metaoptnet")


def ravi_files(ravi_dir: Path, images_per_class: int) -> dict[str, dict[str, list[str]]]:
  """split -> class id -> its first ``images_per_class`` file names, from the real csvs."""
  out = {}
  for split in SPLITS:
    classes: dict[str, list[str]] = {}
    with open(ravi_dir / f"{split}.csv", newline="") as f:
      for row in csv.DictReader(f):
        classes.setdefault(row["label"], []).append(row["filename"])
    out[split] = {
      label: sorted(names)[:images_per_class] for label, names in sorted(classes.items())
    }
  return out


def pattern(filename: str, size: tuple[int, int]) -> np.ndarray:
  """[height, width, 3] uint8: a smooth image seeded by the file name (compresses well)."""
  rng = np.random.default_rng(zlib.crc32(filename.encode()))
  coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR))


def tinted_pattern(filename: str, size: tuple[int, int]) -> np.ndarray:
  """[height, width, 3] uint8: a class's tint under an image's own brightness pattern.

  Brightness: a smooth random pattern of each image (+-100 around 128), the same in
  the three channels. Colour: the class's tint (+-30 per channel, summing to 0, so
  brightness is untouched) plus a little per-image noise; the class is the file
  name's first 9 characters (Ravi's names are the class id and a number). Untrained
  conv features are dominated by the brightness pattern; features that learn to look
  at colour differences (filters whose channel weights sum to 0) ignore it, and that
  carries over to new classes, whose tints are new.
  """
  image_rng = np.random.default_rng(zlib.crc32(filename.encode()))
  class_rng = np.random.default_rng(zlib.crc32(filename[:9].encode()))
  brightness = image_rng.uniform(-100, 100, size=(6, 6, 1))
  tint = class_rng.uniform(-1, 1, size=3)
  tint = 30 * (tint - tint.mean())
  noise = image_rng.normal(0, 4, size=3)
  coarse = np.clip(128 + brightness + tint + noise - noise.mean(), 0, 255).astype(np.uint8)
  return np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR))


def jpeg_bytes(pixels: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="JPEG", quality=90)
  return out.getvalue()


def decoded(jpeg: bytes) -> np.ndarray:
  """What the builder must store for a JPEG: RGB, Lanczos-resized to 84x84 if needed."""
  image = Image.open(io.BytesIO(jpeg)).convert("RGB")
  if image.size != (84, 84):
    image = image.resize((84, 84), Image.Resampling.LANCZOS)
  return np.asarray(image)


def write_synthetic_mini_imagenet(
  root: Path,
  ravi_dir: Path,
  images_per_class: int,
  layouts: tuple[str, ...] = LAYOUTS,
  jpeg_size: tuple[int, int] = (84, 84),
  draw: Callable[[str, tuple[int, int]], np.ndarray] = pattern,
) -> dict[str, dict[str, np.ndarray]]:
  """Writes one folder per layout under ``root`` (``root/csv``, ``root/cache``, ...).

  ``draw(file_name, jpeg_size)`` makes each image: ``pattern`` or ``tinted_pattern``.

  Returns:
    expected: split -> class id -> [images_per_class, 84, 84, 3] uint8.
  """
  files = ravi_files(ravi_dir, images_per_class)
  expected: dict[str, dict[str, np.ndarray]] = {}
  csv_dir = root / "csv"
  if "csv" in layouts:
    (csv_dir / "images").mkdir(parents=True)
  for split, classes in files.items():
    expected[split] = {}
    rows = []
    for label, names in classes.items():
      images = []
      for name in names:
        jpeg = jpeg_bytes(draw(name, jpeg_size))
        if "csv" in layouts:
          (csv_dir / "images" / name).write_bytes(jpeg)
        images.append(decoded(jpeg))
        rows.append((name, label))
      expected[split][label] = np.stack(images)
    if "csv" in layouts:
      with open(csv_dir / f"{split}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
    # Pickles interleave classes (row r is image r // C of class r % C), so the builder
    # must follow class_dict / labels rather than assume contiguous rows.
    labels = sorted(classes)
    order = [(label, m) for m in range(images_per_class) for label in labels]
    data = np.stack([expected[split][label][m] for label, m in order])  # [N, 84, 84, 3]
    if "cache" in layouts:
      class_dict = {
        label: [r for r, (lab, _) in enumerate(order) if lab == label] for label in labels
      }
      (root / "cache").mkdir(exist_ok=True)
      with open(root / "cache" / CACHE[split], "wb") as f:
        pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=4)
    if "metaoptnet" in layouts:
      offset = {"train": 0, "val": 64, "test": 80}[split]
      catname2label = {label: offset + i for i, label in enumerate(labels)}
      (root / "metaoptnet").mkdir(exist_ok=True)
      with open(root / "metaoptnet" / METAOPTNET[split], "wb") as f:
        payload = {
          "data": data,
          "labels": [catname2label[lab] for lab, _ in order],
          "catname2label": catname2label,
        }
        pickle.dump(payload, f, protocol=2)  # MetaOptNet's files are Python 2 pickles.
  return expected
