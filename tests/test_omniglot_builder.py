"""The Omniglot tfds builder: decoding, checksums, error messages, and the real small zips."""

from __future__ import annotations

import io
import re
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from fixtures_omniglot import ink_mask, write_synthetic_omniglot_zip
from PIL import Image

from fsl_jax.data import omniglot
from fsl_jax.data.class_images import MANUAL_DIR_ENV, load_omniglot, resize
from fsl_jax.errors import DataError

SMALL1 = "images_background_small1.zip"
SMALL2 = "images_background_small2.zip"
# Enough alphabets for every part of the "small" split: Balinese and Greek train,
# Early_Aramaic val, Tagalog test; Greek is in both zips, as in the real ones.
SMALL1_ALPHABETS = {"Balinese": 2, "Early_Aramaic": 2, "Greek": 3}
SMALL2_ALPHABETS = {"Greek": 3, "Tagalog": 2}
DRAWERS = 5  # Not 20, so nothing may assume the official count.


@pytest.fixture(autouse=True)
def _no_manual_dir_env(monkeypatch):
  """$FSL_JAX_MANUAL_DIR would change where the builder looks; tests pass folders."""
  monkeypatch.delenv(MANUAL_DIR_ENV, raising=False)


@pytest.fixture
def offline(monkeypatch):
  """Downloads fail at once, as they do with no network; records each attempt."""
  attempts = []

  def download(self, url_or_urls):
    del self
    attempts.append(url_or_urls)
    raise OSError("network is unreachable")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  # The host answers, so the builder goes on to (fail to) download.
  monkeypatch.setattr(omniglot, "host_reachable", lambda host: True)
  return attempts


def write_synthetic_pair(manual_dir: Path, corrupt: str | None = None) -> omniglot.OmniglotConfig:
  """Writes two synthetic zips named like the small ones; returns a config naming them."""
  manual_dir.mkdir(exist_ok=True)
  sha1 = write_synthetic_omniglot_zip(
    manual_dir / SMALL1, "images_background_small1", SMALL1_ALPHABETS, DRAWERS, corrupt
  )
  sha2 = write_synthetic_omniglot_zip(
    manual_dir / SMALL2, "images_background_small2", SMALL2_ALPHABETS, DRAWERS
  )
  return omniglot.OmniglotConfig(
    name="synthetic",
    zips=(
      omniglot.OmniglotZip(SMALL1, "small1", sha1),
      omniglot.OmniglotZip(SMALL2, "small2", sha2),
    ),
  )


def inked(alphabet: str, character: int, drawer: int) -> np.ndarray:
  """[105, 105, 1] uint8: what the builder must store for a synthetic drawing."""
  return np.where(ink_mask(alphabet, character, drawer), 255, 0).astype(np.uint8)[..., None]


def assert_not_prepared(config, data_dir: Path) -> None:
  builder = omniglot.OmniglotFewShot(config=config, data_dir=str(data_dir))
  assert not builder.is_prepared(), "a failed build must not leave a dataset to reuse"


# --- Synthetic zips --------------------------------------------------------------------------


def test_synthetic_build_decodes_pixels_and_metadata(tmp_path):
  config = write_synthetic_pair(tmp_path / "manual")
  data_dir = tmp_path / "data"
  loaded = load_omniglot(
    "small", data_dir=str(data_dir), manual_dir=str(tmp_path / "manual"), builder_config=config
  )

  builder = omniglot.OmniglotFewShot(config=config, data_dir=str(data_dir))
  assert builder.is_prepared()
  for split, stem, alphabets in (
    ("small1", "images_background_small1", SMALL1_ALPHABETS),
    ("small2", "images_background_small2", SMALL2_ALPHABETS),
  ):
    expected = {
      (alphabet, character, drawer)
      for alphabet, count in alphabets.items()
      for character in range(1, count + 1)
      for drawer in range(1, DRAWERS + 1)
    }
    assert builder.info.splits[split].num_examples == len(expected)
    source = builder.as_data_source(split=split)
    assert len(source) == len(expected)
    seen = []
    for index in range(len(source)):
      record = source[index]
      key = (record["alphabet"].decode(), int(record["character"]), int(record["drawer"]))
      seen.append(key)
      assert record["source_zip"].decode() == stem
      image = record["image"]
      assert image.shape == (105, 105, 1) and image.dtype == np.uint8
      np.testing.assert_array_equal(image, inked(*key), err_msg=f"{split} {key}")
    assert sorted(seen) == sorted(expected)

  # Parts of the "small" rule; 4 rotations per character; drawings ordered by drawer.
  names = {part: data.class_names for part, data in loaded.items()}
  assert sorted(loaded) == ["test", "train", "val"]
  assert {n.rsplit("/", 1)[0] for n in names["train"]} == {
    "Balinese/character01",
    "Balinese/character02",
    "Greek/character01",
    "Greek/character02",
    "Greek/character03",
  }
  assert {n.rsplit("/", 1)[0] for n in names["val"]} == {
    "Early_Aramaic/character01",
    "Early_Aramaic/character02",
  }
  assert {n.rsplit("/", 1)[0] for n in names["test"]} == {
    "Tagalog/character01",
    "Tagalog/character02",
  }
  assert loaded["train"].images.shape == (5 * 4, DRAWERS, 28, 28, 1)
  assert loaded["val"].images.shape == (2 * 4, DRAWERS, 28, 28, 1)
  assert loaded["test"].images.shape == (2 * 4, DRAWERS, 28, 28, 1)
  for part, alphabet, character in (("train", "Greek", 2), ("test", "Tagalog", 1)):
    row = names[part].index(f"{alphabet}/character{character:02d}/rot000")
    for m in range(DRAWERS):
      np.testing.assert_array_equal(
        loaded[part].images[row, m], resize(inked(alphabet, character, m + 1), 28)
      )


def test_recorded_checksums_block_reuse_with_other_checksums(tmp_path):
  manual_dir = tmp_path / "manual"
  config = write_synthetic_pair(manual_dir)
  data_dir = tmp_path / "data"
  first = load_omniglot(
    "small", data_dir=str(data_dir), manual_dir=str(manual_dir), builder_config=config
  )
  expected = {z.filename: z.sha256 for z in config.zips}

  builder = omniglot.OmniglotFewShot(config=config, data_dir=str(data_dir))
  assert dict(builder.info.metadata["zip_sha256"]) == expected

  # Same name, other checksums: the folder is the same, so the recorded values must win.
  other = omniglot.OmniglotConfig(name="synthetic", zips=(omniglot.SMALL1, omniglot.SMALL2))
  reread = omniglot.OmniglotFewShot(config=other, data_dir=str(data_dir))
  assert reread.is_prepared()
  assert dict(reread.info.metadata["zip_sha256"]) == expected, "metadata must come from disk"
  with pytest.raises(DataError) as error:
    load_omniglot("small", data_dir=str(data_dir), manual_dir=str(manual_dir), builder_config=other)
  message = str(error.value)
  assert str(reread.data_dir) in message
  assert omniglot.SMALL1.sha256 in message and config.zips[0].sha256 in message

  # The matching config reuses the prepared dataset, with identical contents.
  again = load_omniglot(
    "small", data_dir=str(data_dir), manual_dir=str(manual_dir), builder_config=config
  )
  for part in first:
    np.testing.assert_array_equal(again[part].images, first[part].images)
    assert again[part].class_names == first[part].class_names


def test_changed_zip_in_manual_dir_blocks_reuse(tmp_path):
  manual_dir = tmp_path / "manual"
  config = write_synthetic_pair(manual_dir)
  data_dir = tmp_path / "data"
  load_omniglot("small", data_dir=str(data_dir), manual_dir=str(manual_dir), builder_config=config)
  # Another release of small2 in manual_dir: the prepared data no longer matches it.
  write_synthetic_omniglot_zip(
    manual_dir / SMALL2, "images_background_small2", {"Tagalog": 3}, DRAWERS
  )
  with pytest.raises(DataError, match=re.escape(str(manual_dir / SMALL2))):
    load_omniglot(
      "small", data_dir=str(data_dir), manual_dir=str(manual_dir), builder_config=config
    )


def test_official_config_rejects_zip_with_wrong_checksum(tmp_path, offline):
  manual_dir = tmp_path / "manual"
  write_synthetic_pair(manual_dir)
  data_dir = tmp_path / "data"
  with pytest.raises(DataError) as error:
    load_omniglot("small", data_dir=str(data_dir), manual_dir=str(manual_dir))
  message = str(error.value)
  assert str(manual_dir / SMALL1) in message
  assert omniglot.SMALL1.sha256 in message  # The expected checksum, to compare with.
  assert omniglot.sha256_of(manual_dir / SMALL1) in message
  assert offline == [], "a zip present in manual_dir must not be downloaded"
  assert_not_prepared("small", data_dir)


def test_corrupt_png_names_the_entry(tmp_path):
  entry = "images_background_small1/Early_Aramaic/character02/0104_03.png"
  manual_dir = tmp_path / "manual"
  config = write_synthetic_pair(manual_dir, corrupt=entry)
  with zipfile.ZipFile(manual_dir / SMALL1) as archive:
    assert archive.testzip() is None, "the zip itself must be valid; only the PNG is broken"
    assert entry in archive.namelist()
  data_dir = tmp_path / "data"
  with pytest.raises(DataError, match=re.escape(entry)):
    load_omniglot(
      "small", data_dir=str(data_dir), manual_dir=str(manual_dir), builder_config=config
    )
  assert_not_prepared(config, data_dir)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_zip_names_the_file(tmp_path, damage):
  manual_dir = tmp_path / "manual"
  write_synthetic_pair(manual_dir)
  path = manual_dir / SMALL2
  data = path.read_bytes()
  path.write_bytes(
    b"this is not a zip file\n" * 50 if damage == "garbage" else data[: len(data) // 2]
  )
  # The config names the damaged file's real checksum: it passes the check, fails at reading.
  config = omniglot.OmniglotConfig(
    name="damaged",
    zips=(
      omniglot.OmniglotZip(SMALL1, "small1", omniglot.sha256_of(manual_dir / SMALL1)),
      omniglot.OmniglotZip(SMALL2, "small2", omniglot.sha256_of(path)),
    ),
  )
  data_dir = tmp_path / "data"
  with pytest.raises(DataError, match=re.escape(f"{path} is not a readable zip")):
    load_omniglot(
      "small", data_dir=str(data_dir), manual_dir=str(manual_dir), builder_config=config
    )
  assert_not_prepared(config, data_dir)


@pytest.mark.parametrize(
  ("split", "files"),
  [
    ("small", (SMALL1, SMALL2)),
    ("vinyals", ("images_background.zip", "images_evaluation.zip")),
  ],
)
def test_missing_files_offline_say_what_to_put_where(tmp_path, offline, split, files):
  manual_dir = tmp_path / "empty"
  manual_dir.mkdir()
  with pytest.raises(DataError) as error:
    load_omniglot(split, data_dir=str(tmp_path / "data"), manual_dir=str(manual_dir))
  message = str(error.value)
  assert offline, "the builder must have tried (and failed) to download"
  for name in files:
    assert name in message
    assert omniglot.OFFICIAL_URL + name in message
  assert str(manual_dir) in message
  assert "--config.data.manual_dir" in message and MANUAL_DIR_ENV in message
  assert "network is unreachable" in message


def test_manual_dir_that_is_not_a_folder(tmp_path, offline, monkeypatch):
  a_file = tmp_path / SMALL1
  a_file.write_bytes(b"zip")
  for manual_dir in (a_file, tmp_path / "does_not_exist"):
    with pytest.raises(DataError, match="is not a folder"):
      load_omniglot("small", data_dir=str(tmp_path / "data"), manual_dir=str(manual_dir))
  # The same check applies to the folder named by the environment variable.
  monkeypatch.setenv(MANUAL_DIR_ENV, str(a_file))
  with pytest.raises(DataError, match=re.escape(MANUAL_DIR_ENV)):
    load_omniglot("small", data_dir=str(tmp_path / "data"))
  assert offline == [], "nothing may be downloaded when manual_dir is wrong"


# --- The real small zips ---------------------------------------------------------------------

ROTATIONS = 4
NAME = re.compile(r"^[A-Za-z_()]+/character\d\d/rot(000|090|180|270)$")


@pytest.mark.parametrize(
  ("part", "characters", "alphabets"),
  [
    ("train", 114, {"Balinese", "Greek", "Korean", "Latin"}),
    ("val", 22, {"Early_Aramaic"}),
    ("test", 106, {"Japanese_(katakana)", "Sanskrit", "Tagalog"}),
  ],
)
def test_real_small_parts(omniglot_small, part, characters, alphabets):
  data = omniglot_small[part]
  assert data.images.shape == (characters * ROTATIONS, 20, 28, 28, 1)
  assert data.images.dtype == np.uint8
  assert len(set(data.class_names)) == len(data.class_names)
  assert all(NAME.match(name) for name in data.class_names), data.class_names[:8]
  assert {name.split("/")[0] for name in data.class_names} == alphabets
  # Ink is bright on a dark background: mostly 0, some near 255, a low mean.
  images = data.images.astype(np.float64)
  assert 5 < images.mean() < 60, images.mean()
  assert (data.images == 0).mean() > 0.6
  assert data.images.max() == 255
  per_drawing_ink = (data.images > 127).mean(axis=(2, 3, 4))
  assert per_drawing_ink.min() > 0, "every drawing has some ink"


def test_real_small_covers_all_characters_once(omniglot_small):
  assert sorted(omniglot_small) == ["test", "train", "val"]
  names = [n for data in omniglot_small.values() for n in data.class_names]
  assert len(names) == len(set(names)) == 242 * ROTATIONS
  assert "Greek/character01/rot000" in omniglot_small["train"].class_names


@pytest.mark.parametrize("part", ["train", "val", "test"])
def test_real_small_rotations(omniglot_small, part):
  data = omniglot_small[part]
  for c in range(data.num_classes // ROTATIONS):
    base = data.class_names[c * ROTATIONS].removesuffix("/rot000")
    assert data.class_names[c * ROTATIONS] == f"{base}/rot000"
    for r in range(ROTATIONS):
      assert data.class_names[c * ROTATIONS + r] == f"{base}/rot{90 * r:03d}"
      np.testing.assert_array_equal(
        data.images[c * ROTATIONS + r], np.rot90(data.images[c * ROTATIONS], r, axes=(1, 2))
      )
  # The rotations are different images, not copies.
  assert not np.array_equal(data.images[1], data.images[0])


@pytest.mark.parametrize(
  ("zip_name", "entry", "part", "class_name"),
  [
    (
      SMALL1,
      "images_background_small1/Greek/character01/0394_01.png",
      "train",
      "Greek/character01",
    ),
    (SMALL2, "images_background_small2/Tagalog/character05/", "test", "Tagalog/character05"),
  ],
)
def test_real_small_pixels_match_the_zip(
  omniglot_small, omniglot_small_data_dir, omniglot_manual_dir, zip_name, entry, part, class_name
):
  """A drawing in the zip, inked and resized, is exactly the loaded image."""
  with zipfile.ZipFile(omniglot_manual_dir / zip_name) as archive:
    entries = sorted(n for n in archive.namelist() if n.startswith(entry.rsplit("/", 1)[0] + "/"))
    entries = [n for n in entries if n.endswith(".png")]
    assert len(entries) == 20
    first = entries[0] if entry.endswith("/") else entry
    assert first.endswith("_01.png")
    with Image.open(io.BytesIO(archive.read(first))) as image:
      assert image.mode == "1" and image.size == (105, 105)
      ink = np.where(np.asarray(image), 0, 255).astype(np.uint8)[..., None]  # Ink is 0 there.
  assert 0 < (ink == 255).mean() < 0.5

  # The tfds record holds it at 105x105 with ink = 255.
  builder = omniglot.OmniglotFewShot(config="small", data_dir=str(omniglot_small_data_dir))
  source = builder.as_data_source(
    split=zip_name.removeprefix("images_background_").removesuffix(".zip")
  )
  alphabet, character = class_name.split("/")
  matches = [
    record
    for record in (source[i] for i in range(len(source)))
    if record["alphabet"].decode() == alphabet
    and int(record["character"]) == int(character.removeprefix("character"))
    and int(record["drawer"]) == 1
  ]
  assert len(matches) == 1
  np.testing.assert_array_equal(matches[0]["image"], ink)

  data = omniglot_small[part]
  row = data.class_names.index(f"{class_name}/rot000")
  np.testing.assert_array_equal(data.images[row, 0], resize(ink, 28))


def test_unreachable_host_fails_at_once_without_downloading(tmp_path, offline, monkeypatch):
  monkeypatch.setattr(omniglot, "host_reachable", lambda host: False)
  manual_dir = tmp_path / "empty"
  manual_dir.mkdir()
  with pytest.raises(DataError, match="is unreachable") as error:
    load_omniglot("small", data_dir=str(tmp_path / "data"), manual_dir=str(manual_dir))
  assert offline == [], "no download may be tried when the host cannot be reached"
  assert SMALL1 in str(error.value) and "--config.data.manual_dir" in str(error.value)


def test_host_reachable_is_false_for_a_closed_local_port():
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]  # Bound but not listening: connections are refused.
    assert not omniglot.host_reachable("127.0.0.1", port=port, timeout=1.0)
