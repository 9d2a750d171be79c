"""Synthetic Omniglot zips in the exact layout of the official release.

``write_synthetic_omniglot_zip`` writes ``<stem>/<Alphabet>/characterNN/<id>_<drawer>.png``
entries: 105x105 mode '1' PNGs whose ink is the 0 pixel, as in the official zips.
Each drawing carries a known pattern (``ink_mask``): a 16-bit code that identifies
its (alphabet, character) drawn as a 4x4 grid of blocks, a bar whose length is the
drawer number, and a frame so every drawing has ink. Tests decode the records and
compare them pixel by pixel with ``ink_mask``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 105


def character_code(alphabet: str, character: int) -> int:
  """A 16-bit code for one character: 8 bits of the alphabet, 8 of the character."""
  if not 1 <= character <= 255:
    raise ValueError(f"character must be in 1..255, got {character}")
  return ((zlib.crc32(alphabet.encode()) & 0xFF) << 8) | character


def ink_mask(alphabet: str, character: int, drawer: int) -> np.ndarray:
  """[105, 105] bool, True where the synthetic drawing has ink."""
  mask = np.zeros((SIZE, SIZE), bool)
  mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True  # Frame.
  code = character_code(alphabet, character)
  for bit in range(16):
    if code >> bit & 1:
      row, col = divmod(bit, 4)
      mask[10 + 20 * row : 25 + 20 * row, 10 + 20 * col : 25 + 20 * col] = True
  mask[92:97, 5 : 5 + 4 * drawer] = True  # Drawer bar: 4 px per drawer.
  return mask


def png_bytes(mask: np.ndarray) -> bytes:
  """A mode '1' PNG of ``mask`` with ink (True) stored as the 0 pixel."""
  image = Image.fromarray(~mask).convert("1")
  assert image.mode == "1" and image.size == (SIZE, SIZE)
  out = io.BytesIO()
  image.save(out, format="PNG")
  return out.getvalue()


def write_synthetic_omniglot_zip(
  path: Path | str,
  stem: str,
  alphabets: dict[str, int],
  drawers: int = 20,
  corrupt: str | None = None,
) -> str:
  """Writes a zip like the official ones and returns its sha256.

  Args:
    path: the zip to write.
    stem: the top folder inside the zip, e.g. "images_background_small1".
    alphabets: alphabet name -> number of characters (character01..characterNN).
    drawers: drawings per character, drawers 01..drawers.
    corrupt: if given, the entry name (inside the zip) whose PNG bytes are replaced
      by garbage; the zip itself stays valid.
  """
  codes = {}
  for alphabet, count in alphabets.items():
    for character in range(1, count + 1):
      code = character_code(alphabet, character)
      if code in codes:
        raise ValueError(f"{alphabet} collides with {codes[code]}; rename it")
      codes[code] = alphabet
  entries = []
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
    archive.writestr(f"{stem}/", b"")
    image_id = 100
    for alphabet, count in alphabets.items():
      archive.writestr(f"{stem}/{alphabet}/", b"")
      for character in range(1, count + 1):
        folder = f"{stem}/{alphabet}/character{character:02d}"
        archive.writestr(f"{folder}/", b"")
        image_id += 1
        for drawer in range(1, drawers + 1):
          name = f"{folder}/{image_id:04d}_{drawer:02d}.png"
          data = png_bytes(ink_mask(alphabet, character, drawer))
          if name == corrupt:
            data = b"\x89PNG\r\n\x1a\n" + b"not a png at all" * 8
          archive.writestr(name, data)
          entries.append(name)
  if corrupt is not None and corrupt not in entries:
    raise ValueError(f"{corrupt} is not an entry of the zip")
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def on_small_split(config, data_dir, manual_dir):
  """``config`` reading the real small Omniglot: split "small", the shared zips, a built copy."""
  config.data.split = "small"
  config.data.data_dir = str(data_dir)
  config.data.manual_dir = str(manual_dir)
  return config
