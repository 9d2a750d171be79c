"""The meta-batch gradient in chunks of tasks, so memory is bounded in the meta-batch size.

The meta-loss is the mean of T per-task losses, L(theta) = (1/T) sum_t L_t(theta).
Differentiating one ``vmap`` over all T tasks keeps every task's residuals (for
second-order MAML, every task's unrolled inner loop) alive at once, so memory
grows linearly in T. Splitting the T tasks into C chunks of c = T/C tasks,

    grad L(theta) = (1/C) sum_{i=1..C} grad L^(i)(theta),
    L^(i)(theta)  = (1/c) sum_{t in chunk i} L_t(theta),

and accumulating the sum in a ``lax.scan`` whose body differentiates one chunk
(a ``vmap`` over c tasks) keeps one chunk's residuals at a time. The result
equals the unchunked gradient up to float rounding (the summation order
differs), and so do the mean loss and the mean auxiliary outputs.

The scan is an ordinary JAX program, so the returned function takes every
transformation: ``jit``, ``vmap``, ``jvp`` and ``grad`` of the gradient (a
Hessian-vector product through the meta-gradient differentiates the scan, which
then stores each chunk's residuals again, as any reverse pass must).

Chunks are per device. With the tasks sharded over D devices along their leading
axis, device d holds tasks [d*T_d, (d+1)*T_d), T_d = T/D. Chunk i takes tasks
i*c .. i*c + c - 1 of every device's block, so each device differentiates c of its
own tasks per scan iteration and no task moves between devices:

    [T, ...] -> [D, C, c, ...] -> [C, D, c, ...] -> [C, D*c, ...], sharded P(None, "data").
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsl_jax.errors import ConfigError


def check_tasks_per_chunk(tasks_per_chunk: int, meta_batch_size: int, devices: int) -> None:
  """Raises ConfigError unless each device's share of the meta-batch splits into chunks."""
  per_device = meta_batch_size // devices
  if tasks_per_chunk < 0 or (tasks_per_chunk and per_device % tasks_per_chunk):
    divisors = [c for c in range(1, per_device + 1) if per_device % c == 0]
    raise ConfigError(
      f"config.train.tasks_per_chunk = {tasks_per_chunk} does not divide the "
      f"{per_device} tasks each of {devices} device(s) holds (meta_batch_size "
      f"{meta_batch_size}). Set --config.train.tasks_per_chunk to one of {divisors}, "
      "or 0 for the whole meta-batch at once."
    )


def split_into_chunks(tree, tasks_per_chunk: int, mesh: Mesh | None = None):
  """Leaves [T, ...] -> [C, D*c, ...]: chunk i is c tasks of each of the D devices' blocks.

  With a ``mesh`` the chunks' task axis is pinned sharded P(None, "data"), so that
  each device keeps its own tasks.
  """
  devices = 1 if mesh is None else mesh.devices.size

  def split(x):
    chunks = x.shape[0] // devices // tasks_per_chunk
    x = x.reshape(devices, chunks, tasks_per_chunk, *x.shape[1:])
    x = jnp.swapaxes(x, 0, 1).reshape(chunks, devices * tasks_per_chunk, *x.shape[3:])
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, "data")))
    return x

  return jax.tree.map(split, tree)


def mean_over_tasks(task_loss: Callable) -> Callable:
  """(params, tasks [B, ...]) -> (mean loss, mean aux) of ``task_loss`` vmapped over B tasks.

  ``task_loss(params, task) -> (scalar loss, aux pytree of float arrays)``.
  """

  def mean_loss(params, tasks):
    losses, aux = jax.vmap(task_loss, in_axes=(None, 0))(params, tasks)
    return jnp.mean(losses), jax.tree.map(lambda x: jnp.mean(x, axis=0), aux)

  return mean_loss


def mean_value_and_grad(
  task_loss: Callable, tasks_per_chunk: int = 0, mesh: Mesh | None = None
) -> Callable:
  """Returns (params, tasks [T, ...]) -> ((mean loss, mean aux), grad of the mean loss).

  Args:
    task_loss: (params, task) -> (scalar loss, aux pytree of float arrays), for one
      task (a slice of ``tasks`` without its leading axis).
    tasks_per_chunk: c, tasks per device per chunk; 0 differentiates all T tasks in
      one ``vmap``. Each device's T/D tasks must be a multiple of c
      (``check_tasks_per_chunk``).
    mesh: the mesh the tasks are sharded over along "data", if any.

  The mean is over all T tasks in both cases; the chunked result differs from the
  unchunked one by float rounding alone.
  """
  value_and_grad = jax.value_and_grad(mean_over_tasks(task_loss), has_aux=True)
  if not tasks_per_chunk:
    return value_and_grad

  def chunked(params, tasks):
    chunks = split_into_chunks(tasks, tasks_per_chunk, mesh)
    count = jax.tree.leaves(chunks)[0].shape[0]
    if count == 1:
      return value_and_grad(params, jax.tree.map(lambda x: x[0], chunks))

    def add_chunk(total, chunk):
      return jax.tree.map(jnp.add, total, value_and_grad(params, chunk)), None

    first = jax.tree.map(lambda x: x[0], chunks)
    zeros = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(value_and_grad, params, first)
    )
    total, _ = jax.lax.scan(add_chunk, zeros, chunks)
    return jax.tree.map(lambda x: x / count, total)

  return chunked


def tasks_per_chunk(config, mesh: Mesh) -> int:
  """config.train.tasks_per_chunk, checked against the meta-batch and the mesh."""
  chunk = config.train.tasks_per_chunk
  chunk = 0 if chunk is None else chunk
  check_tasks_per_chunk(chunk, config.train.meta_batch_size, mesh.devices.size)
  return chunk
