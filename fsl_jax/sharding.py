"""One device mesh with a "data" axis: episodes sharded P("data"), state replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsl_jax.errors import ConfigError


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis name "data"."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def sharded_along_batch(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def check_batch_divides(batch_size: int, mesh: Mesh, what: str) -> None:
  """Raises ConfigError unless ``batch_size`` episodes split evenly over the mesh."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ConfigError(
      f"{what} = {batch_size} does not divide over {devices} devices. Use a multiple "
      f"of {devices}, or run on fewer devices (e.g. CUDA_VISIBLE_DEVICES)."
    )


def to_global(tree, mesh: Mesh):
  """Host-local arrays with a leading batch axis -> global jax.Arrays sharded P("data").

  Each process passes its own slice of the batch; the global batch is their
  concatenation in process order.
  """
  sharding = sharded_along_batch(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)
