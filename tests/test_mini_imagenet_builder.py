"""The miniImageNet tfds builder: three layouts, class checks, errors that name the file, memory."""

from __future__ import annotations

import csv
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_mini_imagenet import CACHE, LAYOUTS, METAOPTNET, write_synthetic_mini_imagenet

from fsl_jax.data import memory, mini_imagenet
from fsl_jax.data.class_images import MANUAL_DIR_ENV, load_mini_imagenet, resize
from fsl_jax.data.mini_imagenet_splits import RAVI_CLASSES
from fsl_jax.errors import DataError

IMAGES_PER_CLASS = 3
JPEG_SIZE = (96, 80)  # Not 84x84, so the CSV layout must resize.


@pytest.fixture(autouse=True)
def _no_manual_dir_env(monkeypatch):
  monkeypatch.delenv(MANUAL_DIR_ENV, raising=False)


@pytest.fixture(scope="session")
def ravi_dir(shared_data: Path) -> Path:
  folder = shared_data / "mini_imagenet" / "ravi_split"
  for split in ("train", "val", "test"):
    assert (folder / f"{split}.csv").is_file(), f"{folder / split}.csv is missing."
  return folder


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory, ravi_dir):
  """All three layouts of the same images, built and loaded once: (root, expected, loaded)."""
  root = tmp_path_factory.mktemp("mini")
  expected = write_synthetic_mini_imagenet(root, ravi_dir, IMAGES_PER_CLASS, LAYOUTS, JPEG_SIZE)
  loaded = {
    layout: load_mini_imagenet(
      "ravi", 84, data_dir=str(root / f"data_{layout}"), manual_dir=str(root / layout)
    )
    for layout in LAYOUTS
  }
  return root, expected, loaded


def copy_layout(synthetic, layout: str, tmp_path: Path) -> Path:
  """A private copy of one layout's folder, to break."""
  return Path(shutil.copytree(synthetic[0] / layout, tmp_path / layout))


def assert_not_prepared(split: str, data_dir: Path) -> None:
  builder = mini_imagenet.MiniImagenetFewShot(config=split, data_dir=str(data_dir))
  assert not builder.is_prepared(), "a failed build must not leave a dataset to reuse"


# --- Building ---------------------------------------------------------------------------------


def test_each_layout_builds_to_identical_arrays(synthetic):
  _, expected, loaded = synthetic
  for layout in LAYOUTS:
    assert sorted(loaded[layout]) == ["test", "train", "val"]
    for split, ways in (("train", 64), ("val", 16), ("test", 20)):
      data = loaded[layout][split]
      assert data.class_names == tuple(sorted(RAVI_CLASSES[split]))
      assert data.images.shape == (ways, IMAGES_PER_CLASS, 84, 84, 3)
      assert data.images.dtype == np.uint8
      want = np.stack([expected[split][name] for name in data.class_names])
      np.testing.assert_array_equal(data.images, want, err_msg=f"{layout} {split}")
  # The synthetic images differ from each other, so equality above is not vacuous.
  train = loaded["csv"]["train"].images
  assert not np.array_equal(train[0, 0], train[0, 1]) and not np.array_equal(train[0], train[1])


def test_records_say_which_layout_and_file_they_came_from(synthetic):
  root, _, _ = synthetic
  for layout, source in (
    ("csv", "images/n0153282900000005.jpg"),
    ("cache", f"{CACHE['train']}#0"),
    ("metaoptnet", f"{METAOPTNET['train']}#0"),
  ):
    builder = mini_imagenet.MiniImagenetFewShot(
      config="ravi", data_dir=str(root / f"data_{layout}")
    )
    assert builder.is_prepared() and builder.info.metadata["layout"] == layout
    assert builder.info.splits["train"].num_examples == 64 * IMAGES_PER_CLASS
    records = builder.as_data_source(split="train").__getitems__(list(range(64 * 3)))
    first = [r for r in records if r["label"] == b"n01532829" and r["index"] == 0]
    assert [r["source"].decode() for r in first] == [source]


def test_image_size_resizes_on_load_with_lanczos(synthetic):
  root, expected, _ = synthetic
  loaded = load_mini_imagenet("ravi", 42, str(root / "data_csv"), str(root / "csv"))
  data = loaded["val"]
  assert data.images.shape == (16, IMAGES_PER_CLASS, 42, 42, 3)
  np.testing.assert_array_equal(
    data.images[2, 1], resize(expected["val"][data.class_names[2]][1], 42)
  )


def test_csv_and_images_win_when_several_layouts_are_present(synthetic, tmp_path):
  root = synthetic[0]
  for layout in ("metaoptnet", "cache", "csv"):  # Each added layout outranks the earlier.
    shutil.copytree(root / layout, tmp_path, dirs_exist_ok=True)
    assert mini_imagenet.detect_layout(str(tmp_path)).name == layout


# --- Errors that name the file ----------------------------------------------------------------


@pytest.mark.parametrize(
  "layout, removed",
  [("csv", "val.csv"), ("cache", CACHE["test"]), ("metaoptnet", METAOPTNET["train"])],
)
def test_a_missing_split_file_is_named(synthetic, tmp_path, layout, removed):
  manual = copy_layout(synthetic, layout, tmp_path)
  (manual / removed).unlink()
  with pytest.raises(DataError, match="Add the missing") as error:
    load_mini_imagenet("ravi", 84, str(tmp_path / "data"), str(manual))
  assert str(manual / removed) in str(error.value)
  assert_not_prepared("ravi", tmp_path / "data")


def test_no_files_at_all_gives_the_instructions(tmp_path):
  with pytest.raises(DataError, match="holds no miniImageNet files") as error:
    load_mini_imagenet("ravi", 84, str(tmp_path / "data"), str(tmp_path))
  for name in ("train.csv", "images/", CACHE["train"], METAOPTNET["val"], "run arbitrary code"):
    assert name in str(error.value)


def rewrite_csv(path: Path, keep) -> None:
  """Rewrites a split csv, keeping the rows for which keep(row) is true (or a new row)."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  out = [rows[0]] + [new for row in rows[1:] if (new := keep(row))]
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(out)


def test_a_wrong_class_count_is_an_error_naming_the_file(synthetic, tmp_path):
  manual = copy_layout(synthetic, "csv", tmp_path)
  dropped = sorted(RAVI_CLASSES["val"])[0]
  rewrite_csv(manual / "val.csv", lambda row: row if row[1] != dropped else None)
  with pytest.raises(DataError, match="has 15 classes in the val split, expected 16") as error:
    load_mini_imagenet("ravi", 84, str(tmp_path / "data"), str(manual))
  assert str(manual / "val.csv") in str(error.value)
  assert "--config.data.split=custom" in str(error.value)
  assert_not_prepared("ravi", tmp_path / "data")


def read_rows(path: Path) -> list[list[str]]:
  with open(path, newline="") as f:
    return list(csv.reader(f))[1:]


def test_other_class_ids_are_an_error_but_a_custom_split_only_warns(synthetic, tmp_path, caplog):
  manual = copy_layout(synthetic, "csv", tmp_path)
  moved = sorted(RAVI_CLASSES["train"])[0]  # A training class moved into test, replacing one.
  replaced = sorted(RAVI_CLASSES["test"])[0]
  moved_rows = [row for row in read_rows(manual / "train.csv") if row[1] == moved]
  assert len(moved_rows) == IMAGES_PER_CLASS
  rewrite_csv(manual / "train.csv", lambda row: row if row[1] != moved else None)
  rewrite_csv(manual / "test.csv", lambda row: row if row[1] != replaced else None)
  with open(manual / "test.csv", "a", newline="") as f:
    csv.writer(f).writerows(moved_rows)
  with pytest.raises(DataError, match="has 63 classes in the train split, expected 64") as error:
    load_mini_imagenet("ravi", 84, str(tmp_path / "data"), str(manual))
  assert str(manual / "train.csv") in str(error.value)

  with caplog.at_level(logging.WARNING):
    loaded = load_mini_imagenet("custom", 84, str(tmp_path / "data"), str(manual))
  assert "has 63 classes in the train split" in caplog.text
  assert "other test classes than Ravi" in caplog.text
  assert loaded["train"].num_classes == 63 and loaded["test"].num_classes == 20
  assert moved in loaded["test"].class_names and replaced not in loaded["test"].class_names


def test_a_class_in_two_splits_is_an_error(synthetic, tmp_path):
  manual = copy_layout(synthetic, "csv", tmp_path)
  row = read_rows(manual / "train.csv")[0]
  with open(manual / "val.csv", "a", newline="") as f:
    csv.writer(f).writerow(row)
  with pytest.raises(DataError, match=f"class {row[1]} is in both the train and the val split"):
    load_mini_imagenet("custom", 84, str(tmp_path / "data"), str(manual))


@pytest.mark.parametrize("layout", ["cache", "metaoptnet"])
def test_a_truncated_pickle_is_named(synthetic, tmp_path, layout):
  manual = copy_layout(synthetic, layout, tmp_path)
  path = manual / (CACHE if layout == "cache" else METAOPTNET)["val"]
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match="truncated or corrupt") as error:
    load_mini_imagenet("ravi", 84, str(tmp_path / "data"), str(manual))
  assert str(path) in str(error.value)
  assert_not_prepared("ravi", tmp_path / "data")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_corrupt_or_missing_jpeg_is_named(synthetic, tmp_path, damage):
  manual = copy_layout(synthetic, "csv", tmp_path)
  path = manual / "images" / "n0193011200000004.jpg"  # In test.csv.
  if damage == "garbage":
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 4)
  elif damage == "truncated":
    path.write_bytes(path.read_bytes()[:200])
  else:
    path.unlink()
  with pytest.raises(DataError, match="missing" if damage == "missing" else "corrupt") as error:
    load_mini_imagenet("ravi", 84, str(tmp_path / "data"), str(manual))
  assert str(path) in str(error.value)
  assert_not_prepared("ravi", tmp_path / "data")


class _Exploit:
  def __init__(self, canary: Path):
    self.canary = canary

  def __reduce__(self):
    return (Path.touch, (self.canary,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
  canary = tmp_path / "canary"
  path = tmp_path / CACHE["train"]
  with open(path, "wb") as f:
    pickle.dump({"image_data": _Exploit(canary), "class_dict": {}}, f)
  with pytest.raises(DataError, match="refusing to unpickle pathlib"):
    mini_imagenet.read_cache(str(path))
  assert not canary.exists()


# --- Memory -----------------------------------------------------------------------------------


def test_too_little_memory_is_an_error_naming_the_numbers_and_the_fix(synthetic, monkeypatch):
  root = synthetic[0]
  needed = 64 * IMAGES_PER_CLASS * 84 * 84 * 3  # The train split as uint8.
  monkeypatch.setattr(memory, "available_bytes", lambda: int(needed / memory.HEADROOM) - 1024)
  with pytest.raises(DataError, match="decoding the miniImageNet train split") as error:
    load_mini_imagenet("ravi", 84, str(root / "data_csv"), str(root / "csv"))
  message = str(error.value)
  assert f"{needed / 2**30:.2f} GiB" in message and "lower --config.data.image_size" in message
  # Just enough: it loads.
  monkeypatch.setattr(memory, "available_bytes", lambda: int(needed / memory.HEADROOM) + 1024)
  assert load_mini_imagenet("ravi", 84, str(root / "data_csv"), str(root / "csv"))["train"]


def test_a_pickle_too_large_for_memory_is_refused_before_unpickling(synthetic, monkeypatch):
  path = synthetic[0] / "cache" / CACHE["train"]
  monkeypatch.setattr(memory, "available_bytes", lambda: os.path.getsize(path))
  with pytest.raises(DataError, match=f"unpickling {path}"):
    mini_imagenet.read_cache(str(path))


def test_available_bytes_reads_this_host():
  assert 0 < memory.available_bytes() < 1 << 50


def test_a_prepared_dataset_from_other_split_files_is_not_reused(synthetic, tmp_path):
  root = synthetic[0]
  manual = copy_layout(synthetic, "csv", tmp_path)
  with open(manual / "test.csv", "a") as f:
    f.write("n0193011200000099.jpg,n01930112\n")
  with pytest.raises(DataError, match=r"was built from a test\.csv of"):
    load_mini_imagenet("ravi", 84, str(root / "data_csv"), str(manual))
