"""A tfds builder over the official Omniglot zips (Lake et al. 2015), with no TensorFlow.

The official release (github.com/brendenlake/omniglot, folder ``python/``) ships
four zips. Each holds ``<zip stem>/<Alphabet>/characterNN/<id>_<drawer>.png``:
105x105 1-bit PNGs, one drawing by each of 20 drawers per character.

Two builder configs, one per pair of zips:

* ``full``: ``images_background.zip`` (30 alphabets, 964 characters) and
  ``images_evaluation.zip`` (20 alphabets, 659 characters).
* ``small``: ``images_background_small1.zip`` and ``images_background_small2.zip``,
  the "minimal" background sets (5 alphabets each; Greek and Latin are in both).

Each zip becomes one tfds split named after it (``background``, ``evaluation``,
``small1``, ``small2``). Few-shot splits (vinyals, lake, small, small_all) are
rules over the class metadata, applied at load time: see ``omniglot_splits.py``.

Pixels: the PNGs are mode '1' and PIL decodes them to 0/1 with ink = 0. Records
hold a grayscale PNG with ink = 255 on a 0 background, at full 105x105, so the
training image size is a load-time choice.

Files: a zip in ``manual_dir`` is used as is; otherwise it is downloaded from the
official release. Either way its sha256 is checked against the official one
(the checksums tfds registers for these URLs) before a single image is read, and
the prepared dataset records the checksums it was built from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import urllib.parse
import zipfile
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from fsl_jax.errors import DataError

OFFICIAL_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
IMAGE_SIZE = 105


@dataclasses.dataclass(frozen=True)
class OmniglotZip:
  """One official zip: its file name, the tfds split it becomes, and its sha256."""

  filename: str
  split: str
  sha256: str

  @property
  def url(self) -> str:
    return OFFICIAL_URL + self.filename


BACKGROUND = OmniglotZip(
  "images_background.zip",
  "background",
  "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
)
EVALUATION = OmniglotZip(
  "images_evaluation.zip",
  "evaluation",
  "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
)
SMALL1 = OmniglotZip(
  "images_background_small1.zip",
  "small1",
  "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
)
SMALL2 = OmniglotZip(
  "images_background_small2.zip",
  "small2",
  "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
)


@dataclasses.dataclass
class OmniglotConfig(tfds.core.BuilderConfig):
  """A builder config: which zips, with which checksums, make the dataset."""

  zips: tuple[OmniglotZip, ...] = ()


def manual_instructions(zips: tuple[OmniglotZip, ...]) -> str:
  """The message that tells a user exactly which files to put where."""
  lines = [f"  {z.filename}  (from {z.url}, sha256 {z.sha256})" for z in zips]
  return (
    "Put these files, unchanged, in one folder and pass it as "
    "--config.data.manual_dir=FOLDER (or set FSL_JAX_MANUAL_DIR=FOLDER):\n" + "\n".join(lines)
  )


def sha256_of(path: os.PathLike | str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def host_reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
  """Whether a TCP connection to host:port opens within ``timeout`` seconds."""
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def verify_zip(path: os.PathLike | str, expected: OmniglotZip) -> None:
  """Raises DataError naming the file unless its sha256 is the official one."""
  actual = sha256_of(path)
  if actual != expected.sha256:
    raise DataError(
      f"{path} is not the official {expected.filename}: its sha256 is {actual}, "
      f"expected {expected.sha256}. The file is corrupt, truncated or a different "
      f"release. Download it again from {expected.url}."
    )


def ink_png(png: bytes, source: str) -> bytes:
  """Decodes an Omniglot PNG and re-encodes it as 8-bit grayscale, ink = 255.

  Raises DataError naming ``source`` if the PNG cannot be decoded or has the
  wrong size.
  """
  try:
    with Image.open(io.BytesIO(png)) as image:
      pixels = np.asarray(image.convert("L"), dtype=np.uint8)
  except Exception as e:  # PIL raises several types for broken files.
    raise DataError(f"cannot decode {source}: {e}. The zip is corrupt; download it again.") from e
  if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
    raise DataError(f"{source} is {pixels.shape}, expected {IMAGE_SIZE}x{IMAGE_SIZE}.")
  # Mode '1' decodes to {0, 255} after convert('L'), ink being 0.
  inked = np.where(pixels < 128, 255, 0).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(inked, mode="L").save(out, format="PNG")
  return out.getvalue()


def read_zip(path: os.PathLike | str, zip_name: str) -> Iterator[tuple[str, dict]]:
  """Yields (key, example) for every drawing in one official zip, in a fixed order."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise DataError(f"{path} is not a readable zip ({e}). Download it again.") from e
  with archive:
    names = sorted(n for n in archive.namelist() if n.endswith(".png"))
    if not names:
      raise DataError(f"{path} holds no PNG files; it is not an Omniglot zip.")
    for name in names:
      parts = name.split("/")
      if len(parts) != 4 or not parts[2].startswith("character"):
        raise DataError(
          f"{path}: unexpected entry {name!r}; expected "
          "'<zip stem>/<Alphabet>/characterNN/<id>_<drawer>.png'."
        )
      _, alphabet, character, filename = parts
      drawer = filename.rsplit(".", 1)[0].rsplit("_", 1)[-1]
      try:
        png = archive.read(name)
      except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read {name} ({e}). Download the zip again.") from e
      yield (
        f"{zip_name}/{alphabet}/{character}/{filename}",
        {
          "image": ink_png(png, f"{path}:{name}"),
          "alphabet": alphabet,
          "character": int(character.removeprefix("character")),
          "drawer": int(drawer),
          "source_zip": zip_name,
        },
      )


class OmniglotFewShot(tfds.core.GeneratorBasedBuilder):
  """Omniglot from the official zips, one split per zip, for few-shot learning."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Official zips, ink = 255, alphabet/character/drawer metadata."}
  BUILDER_CONFIGS = [
    OmniglotConfig(
      name="full",
      description="images_background.zip + images_evaluation.zip (1623 characters).",
      zips=(BACKGROUND, EVALUATION),
    ),
    OmniglotConfig(
      name="small",
      description="images_background_small1.zip + images_background_small2.zip.",
      zips=(SMALL1, SMALL2),
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions((BACKGROUND, EVALUATION, SMALL1, SMALL2))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), encoding_format="png"),
          "alphabet": tfds.features.Text(),
          "character": np.int32,
          "drawer": np.int32,
          "source_zip": tfds.features.Text(),
        }
      ),
      homepage="https://github.com/brendenlake/omniglot",
      citation=(
        "@article{lake2015human, title={Human-level concept learning through "
        "probabilistic program induction}, author={Lake, Brenden M and "
        "Salakhutdinov, Ruslan and Tenenbaum, Joshua B}, journal={Science}, "
        "volume={350}, number={6266}, pages={1332--1338}, year={2015}}"
      ),
      metadata=tfds.core.MetadataDict(
        zip_sha256={z.filename: z.sha256 for z in self.builder_config.zips}
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    paths = {z.filename: self._locate(z, dl_manager) for z in self.builder_config.zips}
    for z in self.builder_config.zips:
      verify_zip(paths[z.filename], z)
    return {
      z.split: self._generate_examples(paths[z.filename], z.filename.removesuffix(".zip"))
      for z in self.builder_config.zips
    }

  def _locate(self, z: OmniglotZip, dl_manager: tfds.download.DownloadManager) -> str:
    """The zip in manual_dir if it is there, else a download of it."""
    # The private field: the public property raises when manual_dir is unset.
    manual_dir = dl_manager._manual_dir
    if manual_dir is not None:
      candidate = os.path.join(os.fspath(manual_dir), z.filename)
      if os.path.exists(candidate):
        return candidate
    where = f"It is not in manual_dir {manual_dir}" if manual_dir else "No manual_dir was given"
    advice = manual_instructions(self.builder_config.zips)
    # Offline, tfds's downloader retries for minutes; fail in seconds instead.
    if not host_reachable(urllib.parse.urlparse(z.url).hostname):
      raise DataError(f"cannot find {z.filename}. {where}, and {z.url} is unreachable.\n{advice}")
    try:
      return os.fspath(dl_manager.download(z.url))
    except Exception as e:  # Any network failure ends in the same advice.
      raise DataError(
        f"cannot find {z.filename}. {where}, and downloading {z.url} failed ({e}).\n{advice}"
      ) from e

  def _generate_examples(self, path: str, zip_name: str):
    yield from read_zip(path, zip_name)
