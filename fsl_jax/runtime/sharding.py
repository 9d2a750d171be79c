"""One device mesh with a "data" axis: episodes sharded P("data"), state replicated.

Rules for batch sizes on D devices (all processes together):
- Training: ``config.train.meta_batch_size`` must be a multiple of D; otherwise
  ``check_batch_divides`` raises a ConfigError naming the fix. It is never changed
  silently, because it is part of the objective (the meta-gradient is the mean over
  the meta-batch). ProtoNets train on one episode per step by default, so on D > 1
  devices set ``--config.train.meta_batch_size=D`` (or a multiple), knowing that a
  step then sees D episodes (the learning-rate decay counts episodes, not steps).
- Evaluation: ``config.eval.batch_size`` is rounded up to a multiple of D
  (``eval_batch_size``). Results do not depend on it: episode i is the same on any
  device count, and the extra episodes at the end are dropped.
"""

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
    multiple = devices * max(1, round(batch_size / devices))
    raise ConfigError(
      f"{what} = {batch_size} does not divide over {devices} devices (each device takes "
      f"an equal share of the episodes). Set --{what}={multiple} (any multiple of "
      f"{devices}), or run on fewer devices (e.g. CUDA_VISIBLE_DEVICES)."
    )


def eval_batch_size(batch_size: int, mesh: Mesh) -> int:
  """``batch_size`` rounded up to a multiple of the mesh's device count."""
  devices = mesh.devices.size
  return -(-batch_size // devices) * devices


def to_global(tree, mesh: Mesh):
  """Host-local arrays with a leading batch axis -> global jax.Arrays sharded P("data").

  Each process passes its own slice of the batch; the global batch is their
  concatenation in process order.
  """
  sharding = sharded_along_batch(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)
