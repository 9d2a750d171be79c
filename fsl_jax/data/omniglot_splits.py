"""Few-shot splits of Omniglot, defined by rule over (alphabet, character, zip).

Each rule maps a class to "train", "val", "test" or None (not used), and names the
builder config (which zips) it needs.

* ``vinyals``: the standard split of Vinyals et al. (2016), as published with Snell
  et al.'s code: 1028 train, 172 val and 423 test characters from both full zips.
  Test is 12 whole alphabets plus Gurmukhi characters 42-45; val is 5 alphabets;
  train is everything else.
* ``lake``: images_background for training, images_evaluation for test, with no
  validation split (the final checkpoint is tested), as the reference PyTorch code.
* ``small``: the minimal background sets. Train on Balinese, Greek, Korean and
  Latin, validate on Early_Aramaic, test on the 106 characters that only
  small2 has (Japanese_(katakana), Sanskrit, Tagalog).
* ``small1``, ``small2``: Lake et al.'s "minimal" setting, one of the two small
  5-alphabet background sets for training, no val or test; for scoring on Lake's
  20 one-shot runs against the minimal-setting figures. small1 is Balinese,
  Early_Aramaic, Greek, Korean and Latin (136 characters); small2 is Greek,
  Japanese_(katakana), Latin, Sanskrit and Tagalog (156 characters).
* ``small_all``: all 242 distinct characters of small1 and small2 (8 alphabets)
  for training, no val or test: more data than either minimal set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from fsl_jax.errors import ConfigError

VINYALS_TEST_ALPHABETS = frozenset(
  {
    "Kannada",
    "Keble",
    "Malayalam",
    "Manipuri",
    "Mongolian",
    "Old_Church_Slavonic_(Cyrillic)",
    "Oriya",
    "Sylheti",
    "Syriac_(Serto)",
    "Tengwar",
    "Tibetan",
    "ULOG",
  }
)
VINYALS_TEST_GURMUKHI = range(42, 46)  # Gurmukhi characters 42..45 are test.
VINYALS_VAL_ALPHABETS = frozenset(
  {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}
)

# The alphabets of each minimal background set (Greek and Latin are in both).
SMALL1_ALPHABETS = frozenset({"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"})
SMALL2_ALPHABETS = frozenset({"Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"})
SMALL_TRAIN_ALPHABETS = frozenset({"Balinese", "Greek", "Korean", "Latin"})
SMALL_VAL_ALPHABETS = frozenset({"Early_Aramaic"})
SMALL_TEST_ALPHABETS = frozenset({"Japanese_(katakana)", "Sanskrit", "Tagalog"})

PARTS = ("train", "val", "test")


def vinyals_part(alphabet: str, character: int, zip_split: str) -> str | None:
  del zip_split
  if alphabet in VINYALS_TEST_ALPHABETS:
    return "test"
  if alphabet == "Gurmukhi" and character in VINYALS_TEST_GURMUKHI:
    return "test"
  if alphabet in VINYALS_VAL_ALPHABETS:
    return "val"
  return "train"


def lake_part(alphabet: str, character: int, zip_split: str) -> str | None:
  del alphabet, character
  return {"background": "train", "evaluation": "test"}[zip_split]


def small_part(alphabet: str, character: int, zip_split: str) -> str | None:
  del character, zip_split
  for part, alphabets in (
    ("train", SMALL_TRAIN_ALPHABETS),
    ("val", SMALL_VAL_ALPHABETS),
    ("test", SMALL_TEST_ALPHABETS),
  ):
    if alphabet in alphabets:
      return part
  return None


def minimal_part(alphabets: frozenset[str]) -> Callable[[str, int, str], str | None]:
  """Training on one minimal background set: its characters are "train", others unused.

  By alphabet, not by zip: a character in both zips is read from the first.
  """

  def part_of(alphabet: str, character: int, zip_split: str) -> str | None:
    del character, zip_split
    return "train" if alphabet in alphabets else None

  return part_of


def small_all_part(alphabet: str, character: int, zip_split: str) -> str | None:
  del alphabet, character, zip_split
  return "train"


@dataclasses.dataclass(frozen=True)
class SplitRule:
  """A few-shot split: the builder config it reads and the class -> part rule."""

  name: str
  builder_config: str  # "full" or "small": which official zips it needs.
  part_of: Callable[[str, int, str], str | None]
  parts: tuple[str, ...]  # The parts this split has, e.g. no "val" for lake.


SPLITS = {
  "vinyals": SplitRule("vinyals", "full", vinyals_part, PARTS),
  "lake": SplitRule("lake", "full", lake_part, ("train", "test")),
  "small": SplitRule("small", "small", small_part, PARTS),
  "small1": SplitRule("small1", "small", minimal_part(SMALL1_ALPHABETS), ("train",)),
  "small2": SplitRule("small2", "small", minimal_part(SMALL2_ALPHABETS), ("train",)),
  "small_all": SplitRule("small_all", "small", small_all_part, ("train",)),
}

# Splits that are Lake et al.'s minimal setting: one 5-alphabet background set.
MINIMAL_SPLITS = ("small1", "small2")


def get_split(name: str) -> SplitRule:
  if name not in SPLITS:
    raise ConfigError(
      f"unknown Omniglot split {name!r}; set config.data.split to one of {sorted(SPLITS)}."
    )
  return SPLITS[name]
