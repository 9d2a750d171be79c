"""A synthetic all_runs.zip in the exact layout of Lake et al.'s one-shot task.

``write_lake_runs`` writes ``run01/`` .. ``run20/``, each with
``training/class01..20.png`` (20 distinct 105x105 mode '1' drawings, ink = 0 as
in the release), ``test/item01..20.png`` in a shuffled class order, and
``class_labels.txt`` with lines ``runNN/test/itemMM.png runNN/training/classKK.png``.

Each test item is a pixel copy of its class's training drawing, except in run r
(1-based) the first ``wrong_items(r)`` items, which are copies of another class's
drawing. A model that recognises identical drawings therefore errs on exactly
those items: run r's error is ``5 * wrong_items(r)`` percent.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from fixtures_omniglot import ink_mask, png_bytes

RUNS, WAYS = 20, 20


def wrong_items(run: int) -> int:
  """Items of run ``run`` (1-based) drawn from the wrong class: 0, 1, 2, 3, 0, 1, ..."""
  return (run - 1) % 4


def expected_error_percent() -> list[float]:
  return [100.0 * wrong_items(r) / WAYS for r in range(1, RUNS + 1)]


def class_mask(run: int, klass: int) -> np.ndarray:
  """[105, 105] bool: a drawing unique to (run, class)."""
  return ink_mask(f"alphabet{run:02d}", klass, drawer=1 + run % 5)


def run_files(run: int, relative: bool = False) -> dict[str, bytes]:
  """The files of run ``run`` (1-based): path within the run folder -> bytes."""
  rng = np.random.default_rng(run)
  order = rng.permutation(WAYS) + 1  # order[m-1]: true class of test item m.
  files = {f"training/class{c:02d}.png": png_bytes(class_mask(run, c)) for c in range(1, WAYS + 1)}
  lines = []
  prefix = "" if relative else f"run{run:02d}/"
  for m, true_class in enumerate(order, start=1):
    drawn = true_class
    if m <= wrong_items(run):
      drawn = true_class % WAYS + 1  # Another class's drawing.
    files[f"test/item{m:02d}.png"] = png_bytes(class_mask(run, int(drawn)))
    lines.append(f"{prefix}test/item{m:02d}.png {prefix}training/class{true_class:02d}.png")
  files["class_labels.txt"] = ("\n".join(lines) + "\n").encode()
  return files


def write_lake_runs(path: Path | str, as_zip: bool, relative: bool = False) -> str:
  """Writes the 20 runs as a zip (run folders at its top level) or a folder; returns path."""
  path = Path(path)
  if as_zip:
    with zipfile.ZipFile(path, "w") as z:
      for run in range(1, RUNS + 1):
        z.writestr(f"run{run:02d}/", b"")
        for name, data in run_files(run, relative).items():
          z.writestr(f"run{run:02d}/{name}", data)
  else:
    for run in range(1, RUNS + 1):
      for name, data in run_files(run, relative).items():
        target = path / f"run{run:02d}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
  return str(path)
