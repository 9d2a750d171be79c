"""Lake et al.'s official one-shot classification task: 20 runs of 20-way 1-shot.

The Omniglot release ships it as ``python/one-shot-classification/all_runs.zip``:
run folders ``run01/`` .. ``run20/`` at the top level, each with one drawing of
each of 20 characters of one alphabet (``training/class01.png`` ..
``class20.png``), 20 test drawings (``test/item01.png`` .. ``item20.png``) and
``class_labels.txt``, one line per test item naming its true class:

    run01/test/item01.png run01/training/class12.png

Paths may also be relative to the run folder (``test/item01.png
training/class12.png``); both forms are read. Every test item is of a different
class, so a run is a 20-way 1-shot episode with one query per class once the
queries are put in class order. The images are 105x105 1-bit PNGs, turned into
ink = 255 and resized exactly like the training data.
"""

from __future__ import annotations

import io
import os
import posixpath
import zipfile

import numpy as np
from PIL import Image

from fsl_jax.data.class_images import resize
from fsl_jax.data.episodes import Episode
from fsl_jax.data.omniglot import ink_png
from fsl_jax.errors import DataError

NUM_RUNS = 20
N_WAY = 20
LABELS_FILE = "class_labels.txt"


class _Files:
  """Reads files by '/'-separated path from a zip or a folder."""

  def __init__(self, path: str):
    self.path = path
    self._zip = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
    if self._zip is None and not os.path.isdir(path):
      raise DataError(
        f"Lake runs {path!r} is neither a zip nor a folder. Point "
        "--config.eval.lake_runs at all_runs.zip from the Omniglot repository "
        "(python/one-shot-classification/all_runs.zip) or at its unpacked folder."
      )
    if self._zip is not None:
      names = {n.rstrip("/") for n in self._zip.namelist()}
      # A zip may wrap the runs in one folder (all_runs/run01/...); find the prefix.
      self.prefix = _find_prefix(names)
    else:
      self.prefix = ""

  def read(self, name: str) -> bytes:
    full = posixpath.join(self.prefix, name) if self.prefix else name
    try:
      if self._zip is not None:
        return self._zip.read(full)
      with open(os.path.join(self.path, *full.split("/")), "rb") as f:
        return f.read()
    except (KeyError, FileNotFoundError) as e:
      raise DataError(
        f"{self.path} has no {full}. Lake runs need run01..run20 with "
        f"training/classNN.png, test/itemNN.png and {LABELS_FILE}."
      ) from e

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()


def _find_prefix(names: set[str]) -> str:
  if f"run01/{LABELS_FILE}" in names:
    return ""
  for name in sorted(names):
    if name.endswith(f"/run01/{LABELS_FILE}"):
      return name[: -len(f"/run01/{LABELS_FILE}")]
  return ""


def parse_labels(text: str, run: str) -> dict[str, str]:
  """class_labels.txt -> {"test/itemMM.png": "training/classKK.png"}, paths within the run.

  A leading ``runNN/`` is stripped, so both the release's form and run-relative
  paths are accepted; any other folder is an error.
  """

  def within_run(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if len(parts) == 3 and parts[0] == run:
      parts = parts[1:]
    if len(parts) != 2 or parts[0] not in ("test", "training"):
      raise DataError(f"{run}/{LABELS_FILE}: unexpected path {path!r}.")
    return "/".join(parts)

  pairs = {}
  for line in text.splitlines():
    if not line.strip():
      continue
    fields = line.split()
    if len(fields) != 2:
      raise DataError(f"{run}/{LABELS_FILE}: expected two paths per line, got {line!r}.")
    item, label = within_run(fields[0]), within_run(fields[1])
    if not item.startswith("test/") or not label.startswith("training/"):
      raise DataError(f"{run}/{LABELS_FILE}: expected 'test/... training/...', got {line!r}.")
    pairs[item] = label
  return pairs


def decode(png: bytes, source: str, image_size: int) -> np.ndarray:
  """An official 1-bit PNG -> [S, S, 1] uint8 with ink = 255, as the training data."""
  inked = ink_png(png, source)  # Checks the 105x105 size, inverts to ink = 255.
  pixels = np.asarray(Image.open(io.BytesIO(inked)), dtype=np.uint8)[..., None]
  return resize(pixels, image_size)


def read_run(files: _Files, run: str, image_size: int) -> Episode:
  """One run as a 20-way 1-shot episode; query n is the test item of class n."""
  labels = parse_labels(files.read(f"{run}/{LABELS_FILE}").decode(), run)
  classes = [f"training/class{n:02d}.png" for n in range(1, N_WAY + 1)]
  by_class = {label: item for item, label in labels.items()}
  if len(labels) != N_WAY or sorted(by_class) != classes:
    raise DataError(
      f"{files.path}: {run}/{LABELS_FILE} must give each of the {N_WAY} training classes "
      f"exactly one test item; it names {sorted(set(labels.values()))}."
    )

  def load(name: str) -> np.ndarray:
    return decode(files.read(f"{run}/{name}"), f"{files.path}:{run}/{name}", image_size)

  labels_n = np.arange(N_WAY, dtype=np.int32)
  return Episode(
    support=np.stack([load(c) for c in classes]),  # [20, S, S, 1]
    support_labels=labels_n,  # [20]
    query=np.stack([load(by_class[c]) for c in classes]),  # [20, S, S, 1]
    query_labels=labels_n,  # [20]
  )


def load_lake_runs(path: str, image_size: int = 28) -> Episode:
  """All 20 runs of ``path`` (all_runs.zip or its folder) stacked: Episode [20, ...].

  Run r (0-based) is ``run{r+1:02d}``. In every run, support image n is
  ``training/class{n+1:02d}.png`` and query n is the test item whose true class
  that is, so support_labels and query_labels are both 0..19.
  """
  files = _Files(path)
  try:
    runs = [read_run(files, f"run{r:02d}", image_size) for r in range(1, NUM_RUNS + 1)]
  finally:
    files.close()
  return Episode(*(np.stack(parts) for parts in zip(*runs, strict=True)))
