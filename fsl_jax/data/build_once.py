"""A tfds dataset built by one process of a multi-process run, then read by all.

Hosts of one run usually share ``config.data.data_dir`` (a network file system,
or one machine's disk in the loopback launcher). If every process built a missing
dataset, they would write the same files at the same time. So process 0 builds
while the others wait at a barrier; then every process opens the prepared
dataset. A process whose ``data_dir`` is its own (not shared) finds nothing
after the barrier and builds its own copy, which races with no one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

Builder = TypeVar("Builder", bound=tfds.core.DatasetBuilder)


def prepared(make_builder: Callable[[], Builder], build: Callable[[Builder], None]) -> Builder:
  """The builder ``make_builder()`` returns, with its dataset prepared exactly once.

  Args:
    make_builder: opens the builder (cheap; reads what is on disk).
    build: ``builder -> None``, prepares a missing dataset (``download_and_prepare``).

  Returns:
    A builder whose ``is_prepared()`` holds, opened after the build.
  """
  builder = make_builder()
  if jax.process_count() == 1:
    if not builder.is_prepared():
      build(builder)
    return builder
  if jax.process_index() == 0 and not builder.is_prepared():
    build(builder)
  # Every process reaches this barrier, built or not, so the decision to build is
  # never split between processes that saw the folder in different states.
  multihost_utils.sync_global_devices(f"fsl_jax data prepared: {builder.info.full_name}")
  builder = make_builder()  # Opened again: the one above predates the files.
  if not builder.is_prepared():  # A data_dir of this host alone.
    build(builder)
    builder = make_builder()
  return builder
