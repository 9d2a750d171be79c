"""The split rules reproduce the published Vinyals split and the small split exactly."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from fsl_jax.data import omniglot_splits
from fsl_jax.data.class_images import load_omniglot
from fsl_jax.errors import ConfigError

ROTATIONS = ("rot000", "rot090", "rot180", "rot270")


def read_lines(path: Path) -> list[str]:
  lines = path.read_text().splitlines()
  assert lines and all(line.strip() == line and line for line in lines), path
  return lines


def characters_of(lines: list[str]) -> set[tuple[str, int]]:
  out = set()
  for line in lines:
    alphabet, character, rotation = line.split("/")
    assert rotation in ROTATIONS and character.startswith("character"), line
    out.add((alphabet, int(character.removeprefix("character"))))
  return out


def with_rotations(characters) -> set[str]:
  return {f"{a}/character{c:02d}/{r}" for a, c in characters for r in ROTATIONS}


@pytest.fixture(scope="module")
def vinyals_files(shared_data) -> dict[str, list[str]]:
  folder = shared_data / "omniglot" / "vinyals_split"
  return {name: read_lines(folder / f"{name}.txt") for name in ("train", "val", "test", "trainval")}


def test_vinyals_rule_reproduces_the_published_split(vinyals_files):
  inventory = set().union(*(characters_of(vinyals_files[p]) for p in ("train", "val", "test")))
  assert len(inventory) == 1623  # Every Omniglot character, once.
  parts = {"train": set(), "val": set(), "test": set()}
  for alphabet, character in inventory:
    # The zip a character comes from must not matter to this rule.
    answers = {
      omniglot_splits.vinyals_part(alphabet, character, zip_split)
      for zip_split in ("background", "evaluation")
    }
    assert len(answers) == 1, (alphabet, character)
    parts[answers.pop()].add((alphabet, character))
  assert {p: len(c) for p, c in parts.items()} == {"train": 1028, "val": 172, "test": 423}
  for part, characters in parts.items():
    lines = vinyals_files[part]
    assert len(lines) == len(set(lines)) == 4 * len(characters), part
    assert with_rotations(characters) == set(lines), part
  trainval = vinyals_files["trainval"]
  assert len(trainval) == len(set(trainval))
  assert set(trainval) == set(vinyals_files["train"]) | set(vinyals_files["val"])
  # Gurmukhi is split by character: 42..45 test, the rest train.
  gurmukhi = {c: p for p, cs in parts.items() for a, c in cs if a == "Gurmukhi"}
  assert {c for c, p in gurmukhi.items() if p == "test"} == {42, 43, 44, 45}
  assert {p for c, p in gurmukhi.items() if c not in range(42, 46)} == {"train"}


@pytest.fixture(scope="module")
def small_characters(shared_data) -> dict[str, set[tuple[str, int]]]:
  """(alphabet, character) of each real small zip, from the zips' entry names."""
  out = {}
  for split in ("small1", "small2"):
    path = shared_data / "omniglot" / f"images_background_{split}.zip"
    with zipfile.ZipFile(path) as archive:
      names = [n.split("/") for n in archive.namelist() if n.endswith(".png")]
    out[split] = {(parts[1], int(parts[2].removeprefix("character"))) for parts in names}
  return out


def test_small_rules_on_the_real_small_zips(small_characters):
  assert len(small_characters["small1"]) == 24 + 22 + 24 + 40 + 26
  assert len(small_characters["small2"]) == 24 + 47 + 26 + 42 + 17
  everything = small_characters["small1"] | small_characters["small2"]
  assert len(everything) == 242  # Greek and Latin are in both zips.

  counts = {"train": 0, "val": 0, "test": 0, None: 0}
  for split, characters in small_characters.items():
    for alphabet, character in characters:
      part = omniglot_splits.small_part(alphabet, character, split)
      # Only small2's characters that small1 lacks are test; nothing is left out.
      if (alphabet, character) in small_characters["small1"] and split == "small2":
        assert part == "train", (alphabet, character)
        continue
      counts[part] += 1
  assert counts == {"train": 114, "val": 22, "test": 106, None: 0}

  all_rule = omniglot_splits.get_split("small_all")
  assert all_rule.parts == ("train",) and all_rule.builder_config == "small"
  assert {all_rule.part_of(a, c, s) for s, cs in small_characters.items() for a, c in cs} == {
    "train"
  }
  assert len({(a, c) for cs in small_characters.values() for a, c in cs}) == 242


def test_minimal_splits_are_exactly_one_small_background_set(small_characters):
  """small1 and small2 are Lake et al.'s minimal setting: all of one zip, nothing else."""
  everything = small_characters["small1"] | small_characters["small2"]
  for name, size in (("small1", 136), ("small2", 156)):
    rule = omniglot_splits.get_split(name)
    assert rule.parts == ("train",) and rule.builder_config == "small"
    assert name in omniglot_splits.MINIMAL_SPLITS
    # Greek and Latin are read from small1's zip, so the rule must go by alphabet.
    chosen = {(a, c) for a, c in everything if rule.part_of(a, c, "small1") == "train"}
    assert chosen == {(a, c) for a, c in everything if rule.part_of(a, c, "small2") == "train"}
    assert chosen == small_characters[name] and len(chosen) == size
    assert len({a for a, _ in chosen}) == 5
  assert "small_all" not in omniglot_splits.MINIMAL_SPLITS
  assert "small" not in omniglot_splits.MINIMAL_SPLITS


def test_get_split():
  assert omniglot_splits.get_split("vinyals").builder_config == "full"
  assert omniglot_splits.get_split("small").part_of is omniglot_splits.small_part
  assert omniglot_splits.get_split("lake").parts == ("train", "test")
  with pytest.raises(ConfigError, match=r"'nope'.*config\.data\.split"):
    omniglot_splits.get_split("nope")


def test_small_all_loads_every_distinct_character_once(omniglot_small_data_dir, shared_data):
  """Reuses the session's prepared "small" config: no rebuild, one class per character."""
  loaded = load_omniglot(
    "small_all",
    train_rotations=(0,),
    data_dir=str(omniglot_small_data_dir),
    manual_dir=str(shared_data / "omniglot"),
  )
  assert sorted(loaded) == ["train"]
  names = loaded["train"].class_names
  assert len(names) == len(set(names)) == 242
  assert loaded["train"].images.shape == (242, 20, 28, 28, 1)
  assert {name.split("/")[0] for name in names} == {
    "Balinese",
    "Early_Aramaic",
    "Greek",
    "Korean",
    "Latin",
    "Japanese_(katakana)",
    "Sanskrit",
    "Tagalog",
  }
