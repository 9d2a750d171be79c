"""Files written whole or not at all: a temporary file, then an atomic rename.

A reader (or a run killed mid-write and resumed) sees the old file or the new
one, never half of either.
"""

from __future__ import annotations

import json
import os


def write_text_atomically(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json_atomically(path: str, payload: dict) -> None:
  write_text_atomically(path, json.dumps(payload, indent=2))
