"""A tfds builder for miniImageNet over the files a user already has, with no TensorFlow.

miniImageNet (Vinyals et al. 2016; the split of Ravi & Larochelle 2017) cannot be
downloaded: its images come from ImageNet. The builder reads one of three common
layouts from ``manual_dir`` and tells them apart by the files present:

1. ``csv``: Ravi & Larochelle's ``train.csv``, ``val.csv``, ``test.csv`` (header
   ``filename,label``) and a folder ``images/`` of JPEGs of any size, resized to
   84x84 with a Lanczos filter (as the original conversion script did).
2. ``cache``: ``mini-imagenet-cache-{train,val,test}.pkl`` (``...-validation.pkl`` is
   accepted for val), each a dict with ``image_data``, uint8 ``[N, 84, 84, 3]``, and
   ``class_dict``, class id -> list of row indices.
3. ``metaoptnet``: MetaOptNet's ``miniImageNet_category_split_train_phase_train.pickle``,
   ``..._val.pickle`` and ``..._test.pickle``, with keys ``data``, ``labels`` and
   ``catname2label`` (Python 2 pickles, read with latin1 encoding).

When several are present the CSV + images layout wins: it needs no unpickling.

**Unpickling an untrusted file can run arbitrary code.** Pickles are read only from
the ``manual_dir`` the user names, and through an unpickler that refuses every
global except numpy arrays, dtypes and Python containers. Still, use pickles only
from a source you trust; prefer the CSV + images layout.

Records hold the image as an 84x84 RGB PNG (lossless, so every layout stores the
same pixels for the same image), the class id (WordNet id), the image's position
within its class, and where it came from. Two builder configs: ``ravi`` checks that
the splits hold exactly Ravi & Larochelle's 64/16/20 classes and fails otherwise;
``custom`` only warns, for a user's own split.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pickle
from collections import Counter
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from fsl_jax.data import memory
from fsl_jax.data.mini_imagenet_splits import IMAGES_PER_CLASS, RAVI_CLASSES
from fsl_jax.errors import DataError

IMAGE_SIZE = 84
SPLITS = ("train", "val", "test")
CSV_FILES = {split: f"{split}.csv" for split in SPLITS}
IMAGES_DIR = "images"
CACHE_FILES = {
  "train": ("mini-imagenet-cache-train.pkl",),
  "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
  "test": ("mini-imagenet-cache-test.pkl",),
}
METAOPTNET_FILES = {
  "train": ("miniImageNet_category_split_train_phase_train.pickle",),
  "val": ("miniImageNet_category_split_val.pickle",),
  "test": ("miniImageNet_category_split_test.pickle",),
}
LAYOUTS = {
  "csv": {split: (name,) for split, name in CSV_FILES.items()},
  "cache": CACHE_FILES,
  "metaoptnet": METAOPTNET_FILES,
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
miniImageNet cannot be downloaded (its images come from ImageNet). Put ONE of these
layouts in a folder and pass it as --config.data.manual_dir=FOLDER (or set
FSL_JAX_MANUAL_DIR=FOLDER):
  1. CSV + images (preferred): FOLDER/train.csv, FOLDER/val.csv, FOLDER/test.csv
     (Ravi & Larochelle's split files, header 'filename,label') and FOLDER/images/
     holding every JPEG they name, of any size (resized to 84x84).
  2. Pickle caches: FOLDER/mini-imagenet-cache-train.pkl, FOLDER/mini-imagenet-cache-val.pkl
     (or ...-validation.pkl) and FOLDER/mini-imagenet-cache-test.pkl.
  3. MetaOptNet pickles: FOLDER/miniImageNet_category_split_train_phase_train.pickle,
     FOLDER/miniImageNet_category_split_val.pickle and
     FOLDER/miniImageNet_category_split_test.pickle.
Splits must hold Ravi & Larochelle's 64/16/20 classes (600 images each); for your own
split set --config.data.split=custom.
WARNING: unpickling an untrusted file can run arbitrary code. Pickles are read only
from FOLDER, through a restricted unpickler, but use them only from a source you
trust; the CSV + images layout needs no unpickling and is preferred when present."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """The layout found in manual_dir: its name and the file of each split."""

  name: str
  files: dict[str, str]  # split -> path


def _present(manual_dir: str, names: tuple[str, ...]) -> str | None:
  for name in names:
    path = os.path.join(manual_dir, name)
    if os.path.isfile(path):
      return path
  return None


def detect_layout(manual_dir: str | None) -> Layout:
  """The first layout (csv, cache, metaoptnet) with any file in manual_dir; all of it must be there.

  Raises DataError naming the missing files, or with the instructions if there is none.
  """
  if manual_dir is None:
    raise DataError(f"no manual_dir was given.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
  for name, files in LAYOUTS.items():
    found = {split: _present(manual_dir, names) for split, names in files.items()}
    if not any(found.values()):
      continue
    missing = [" or ".join(files[split]) for split, path in found.items() if path is None]
    if name == "csv" and not os.path.isdir(os.path.join(manual_dir, IMAGES_DIR)):
      missing.append(f"the folder {IMAGES_DIR}/ of JPEGs")
    if missing:
      present = sorted(os.path.basename(p) for p in found.values() if p)
      raise DataError(
        f"manual_dir {manual_dir} holds {', '.join(present)} of the {name} layout but "
        f"not {'; '.join(os.path.join(manual_dir, m) for m in missing)}. Add the missing "
        f"file(s).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
      )
    others = [
      other
      for other, other_files in LAYOUTS.items()
      if other != name and any(_present(manual_dir, n) for n in other_files.values())
    ]
    if others:
      logging.warning(
        "manual_dir %s holds several layouts; using %s, not %s.", manual_dir, name, others
      )
    return Layout(name, found)
  raise DataError(
    f"manual_dir {manual_dir} holds no miniImageNet files.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
  )


def check_classes(split: str, counts: dict[str, int], source: str, strict: bool) -> None:
  """Compares one split's classes with Ravi & Larochelle's.

  A wrong number of classes or other class ids is a DataError when ``strict``, else a
  warning. Images per class other than 600 are always only a warning.
  """
  expected = set(RAVI_CLASSES[split])
  found = set(counts)
  problem = None
  if len(found) != len(expected):
    problem = f"{source} has {len(found)} classes in the {split} split, expected {len(expected)}"
  elif found != expected:
    extra, lacking = sorted(found - expected), sorted(expected - found)
    problem = (
      f"{source} has other {split} classes than Ravi & Larochelle's split: "
      f"{len(extra)} unexpected (e.g. {extra[:3]}), {len(lacking)} missing (e.g. {lacking[:3]})"
    )
  if problem and strict:
    raise DataError(
      f"{problem}. Use Ravi & Larochelle's split files unchanged, or set "
      "--config.data.split=custom to train on your own split."
    )
  if problem:
    logging.warning("%s; going on, as config.data.split is 'custom'.", problem)
  sizes = sorted(set(counts.values()))
  if sizes != [IMAGES_PER_CLASS]:
    logging.warning(
      "%s: the %s classes have %s images, not %d each.", source, split, sizes, IMAGES_PER_CLASS
    )


def png_bytes(pixels: np.ndarray) -> bytes:
  """[84, 84, 3] uint8 -> PNG bytes (lossless; fast compression)."""
  out = io.BytesIO()
  Image.fromarray(pixels, mode="RGB").save(out, format="PNG", compress_level=1)
  return out.getvalue()


def decode_jpeg(path: str) -> np.ndarray:
  """A JPEG (any size and mode) -> [84, 84, 3] uint8, resized with Lanczos if needed."""
  try:
    with Image.open(path) as image:
      image = image.convert("RGB")
      if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
      return np.asarray(image, dtype=np.uint8)
  except FileNotFoundError as e:
    raise DataError(f"{path} is missing: the split file names it. Copy it into the folder.") from e
  except Exception as e:  # PIL raises several types for broken files.
    raise DataError(f"cannot decode {path} ({e}). The file is corrupt; copy it again.") from e


def read_csv(path: str) -> dict[str, list[str]]:
  """A Ravi split file -> class id -> its file names, sorted."""
  classes: dict[str, list[str]] = {}
  try:
    with open(path, newline="") as f:
      reader = csv.reader(f)
      header = next(reader, None)
      if header != ["filename", "label"]:
        raise DataError(f"{path} starts with {header}, expected the header 'filename,label'.")
      for line, row in enumerate(reader, start=2):
        if len(row) != 2:
          raise DataError(f"{path} line {line}: {row} is not 'filename,label'.")
        classes.setdefault(row[1], []).append(row[0])
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"cannot read {path} ({e}). Copy Ravi & Larochelle's file again.") from e
  if not classes:
    raise DataError(f"{path} names no images.")
  return {label: sorted(names) for label, names in sorted(classes.items())}


class _NumpyUnpickler(pickle.Unpickler):
  """Loads only numpy arrays, dtypes, scalars and plain containers; any other global is refused."""

  ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "bytearray"),
  }

  def find_class(self, module: str, name: str):
    if (module, name) not in self.ALLOWED:
      raise DataError(
        f"refusing to unpickle {module}.{name}: a miniImageNet pickle holds only numpy "
        "arrays, lists and dicts. The file is not what its name says; do not load it."
      )
    if module.startswith("numpy.core."):  # Pickled before numpy renamed it numpy._core.
      module = "numpy._core." + module.removeprefix("numpy.core.")
    return super().find_class(module, name)


def load_pickle(path: str) -> dict:
  """Unpickles a trusted miniImageNet pickle (latin1 for Python 2 files), checking memory first."""
  size = os.path.getsize(path)
  # Unpickling an array holds its bytes and the array at once: about twice the file.
  memory.check_available(2 * size, f"unpickling {path} ({size / 2**30:.2f} GiB)")
  try:
    with open(path, "rb") as f:
      payload = _NumpyUnpickler(f, encoding="latin1").load()
  except DataError:
    raise
  except Exception as e:  # EOFError, UnpicklingError, ValueError, ... for broken files.
    raise DataError(
      f"cannot unpickle {path} ({type(e).__name__}: {e}). The file is truncated or "
      "corrupt; copy it again."
    ) from e
  if not isinstance(payload, dict):
    raise DataError(f"{path} holds a {type(payload).__name__}, expected a dict.")
  return payload


def _image_array(path: str, images) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (84, 84, 3):
    raise DataError(
      f"{path} holds images of shape {images.shape} and dtype {images.dtype}, "
      "expected uint8 [N, 84, 84, 3]."
    )
  return images


def _rows_in_range(path: str, rows: dict[str, list[int]], n: int) -> dict[str, list[int]]:
  for label, indices in rows.items():
    if not indices or min(indices) < 0 or max(indices) >= n:
      raise DataError(f"{path}: class {label} has row indices outside 0..{n - 1}.")
  return rows


def read_cache(path: str) -> tuple[np.ndarray, dict[str, list[int]]]:
  """A ``mini-imagenet-cache-*.pkl`` -> (images [N, 84, 84, 3], class id -> rows)."""
  payload = load_pickle(path)
  if not {"image_data", "class_dict"} <= set(payload):
    raise DataError(f"{path} has keys {sorted(payload)}, expected 'image_data' and 'class_dict'.")
  images = _image_array(path, payload["image_data"])
  rows = {str(label): [int(i) for i in idx] for label, idx in payload["class_dict"].items()}
  return images, _rows_in_range(path, dict(sorted(rows.items())), len(images))


def read_metaoptnet(path: str) -> tuple[np.ndarray, dict[str, list[int]]]:
  """A MetaOptNet ``*.pickle`` -> (images [N, 84, 84, 3], class id -> rows)."""
  payload = load_pickle(path)
  if not {"data", "labels", "catname2label"} <= set(payload):
    raise DataError(
      f"{path} has keys {sorted(payload)}, expected 'data', 'labels' and 'catname2label'."
    )
  images = _image_array(path, payload["data"])
  labels = np.asarray(payload["labels"]).reshape(-1)
  if len(labels) != len(images):
    raise DataError(f"{path} has {len(images)} images but {len(labels)} labels.")
  name_of = {int(label): str(name) for name, label in payload["catname2label"].items()}
  rows: dict[str, list[int]] = {}
  for row, label in enumerate(labels.tolist()):
    if label not in name_of:
      raise DataError(f"{path}: row {row} has label {label}, which catname2label does not name.")
    rows.setdefault(name_of[label], []).append(row)
  return images, dict(sorted(rows.items()))


@dataclasses.dataclass
class MiniImagenetConfig(tfds.core.BuilderConfig):
  """``strict``: the splits must be Ravi & Larochelle's, else only a warning."""

  strict: bool = True


class MiniImagenetFewShot(tfds.core.GeneratorBasedBuilder):
  """miniImageNet from user-supplied files: train/val/test splits of 84x84 RGB images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "CSV + images, pickle caches or MetaOptNet pickles; PNG records."}
  BUILDER_CONFIGS = [
    MiniImagenetConfig(name="ravi", description="Ravi & Larochelle's 64/16/20 classes, checked."),
    MiniImagenetConfig(
      name="custom", description="Your own split: class lists only warn.", strict=False
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
          "label": tfds.features.Text(),  # WordNet id, e.g. n01532829.
          "index": np.int32,  # Position within its class.
          "source": tfds.features.Text(),  # File (and row, for pickles) it came from.
        }
      ),
      homepage="https://github.com/twitter-research/meta-learning-lstm",
      citation=(
        "@inproceedings{ravi2017optimization, title={Optimization as a model for few-shot "
        "learning}, author={Ravi, Sachin and Larochelle, Hugo}, booktitle={ICLR}, year={2017}}"
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    # The private field: the public property raises when manual_dir is unset.
    manual_dir = dl_manager._manual_dir
    layout = detect_layout(os.fspath(manual_dir) if manual_dir is not None else None)
    self.info.metadata["layout"] = layout.name
    self.info.metadata["source_sizes"] = {
      os.path.basename(p): os.path.getsize(p) for p in layout.files.values()
    }
    self.info.metadata["classes"] = {}
    return {split: self._generate_examples(layout, split) for split in SPLITS}

  def _record_classes(self, split: str, rows: dict[str, list], source: str) -> None:
    counts = {label: len(items) for label, items in rows.items()}
    check_classes(split, counts, source, self.builder_config.strict)
    self.info.metadata["classes"][split] = counts

  def _generate_examples(self, layout: Layout, split: str) -> Iterator[tuple[str, dict]]:
    path = layout.files[split]
    if layout.name == "csv":
      classes = read_csv(path)
      self._record_classes(split, classes, path)
      images_dir = os.path.join(os.path.dirname(path), IMAGES_DIR)
      for label, names in classes.items():
        for index, name in enumerate(names):
          image = decode_jpeg(os.path.join(images_dir, name))
          yield f"{label}/{index:05d}", _example(image, label, index, f"{IMAGES_DIR}/{name}")
      return
    reader = read_cache if layout.name == "cache" else read_metaoptnet
    images, rows = reader(path)
    self._record_classes(split, rows, path)
    name = os.path.basename(path)
    for label, indices in rows.items():
      for index, row in enumerate(indices):
        yield f"{label}/{index:05d}", _example(images[row], label, index, f"{name}#{row}")


def _example(image: np.ndarray, label: str, index: int, source: str) -> dict:
  return {"image": png_bytes(image), "label": label, "index": index, "source": source}


def class_counts(builder: MiniImagenetFewShot) -> dict[str, Counter]:
  """split -> class id -> images, as recorded when the dataset was built."""
  recorded = builder.info.metadata.get("classes", {})
  return {split: Counter(dict(recorded.get(split, {}))) for split in SPLITS}
