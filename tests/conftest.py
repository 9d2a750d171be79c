"""Shared fixtures: the shared data folder and the real small Omniglot, built once.

The session also shares one JAX compilation cache, new for each session: tests
and the ``python -m fsl_jax.main`` subprocesses they start compile the same quick
configs many times over, and later compiles of the same program load it instead.
Tests that count compiles count traces (``_cache_size``), which a cache hit does
not change.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest
from fixtures_omniglot import write_synthetic_omniglot_zip

from fsl_jax.data.class_images import load_omniglot

# The repo and shared/ are siblings: /work/main and /work/shared, in CI as here.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config):
  """Points this process and its subprocesses at a new, empty compilation cache."""
  cache_dir = tempfile.mkdtemp(prefix="fsl_jax_test_jax_cache_")
  config.fsl_jax_cache_dir = cache_dir
  # Every compile is cached, however small or quick.
  for option, value in (
    ("jax_compilation_cache_dir", cache_dir),
    ("jax_persistent_cache_min_compile_time_secs", 0.0),
    ("jax_persistent_cache_min_entry_size_bytes", 0),
  ):
    os.environ[option.upper()] = str(value)  # For the subprocesses.
    jax.config.update(option, value)


def pytest_unconfigure(config):
  shutil.rmtree(getattr(config, "fsl_jax_cache_dir", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
  """shared/data next to the repo; fails (never skips) when it is missing."""
  assert SHARED_DATA.is_dir(), (
    f"shared data folder {SHARED_DATA} is missing. Tests expect shared/data next to "
    "the repository (the repository's parent folder must hold shared/data/omniglot)."
  )
  return SHARED_DATA


@pytest.fixture(scope="session")
def omniglot_manual_dir(shared_data: Path) -> Path:
  """The folder holding the official small Omniglot zips."""
  folder = shared_data / "omniglot"
  for name in ("images_background_small1.zip", "images_background_small2.zip"):
    assert (folder / name).is_file(), f"{folder / name} is missing from the shared data."
  return folder


@pytest.fixture(scope="session")
def _omniglot_small_build(tmp_path_factory, omniglot_manual_dir: Path):
  """Builds the real "small" config once per session: (data_dir, loaded dict)."""
  data_dir = tmp_path_factory.mktemp("omniglot_small_tfds")
  loaded = load_omniglot("small", data_dir=str(data_dir), manual_dir=str(omniglot_manual_dir))
  return data_dir, loaded


@pytest.fixture(scope="session")
def omniglot_small_data_dir(_omniglot_small_build) -> Path:
  """The tfds data_dir that holds the prepared real "small" config."""
  return _omniglot_small_build[0]


@pytest.fixture(scope="session")
def omniglot_small(_omniglot_small_build):
  """load_omniglot("small") on the real zips: {"train", "val", "test"} ClassImages."""
  return _omniglot_small_build[1]


@pytest.fixture
def synthetic_zip_writer():
  """write_synthetic_omniglot_zip, as a fixture (it is also importable directly)."""
  return write_synthetic_omniglot_zip
