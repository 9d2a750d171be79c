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
axis, device d holds tasks [d*T_d, (d+1)*T_d), T_d = T/D. Under ``jax.shard_map``
each device scans its own T_d tasks, c at a time, keeping its partial means in
the scan's carry; one all-reduce (``pmean``) after the scan averages them over
the devices. No task moves between devices, and a step communicates once,
whatever the number of chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

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
    mesh: the mesh the tasks are sharded over along "data", if any. With several
      devices, each scans its own chunks (``jax.shard_map``) and the means are
      all-reduced once, after the scan.

  The mean is over all T tasks in both cases; the chunked result differs from the
  unchunked one by float rounding alone.
  """
  value_and_grad = jax.value_and_grad(mean_over_tasks(task_loss), has_aux=True)
  if not tasks_per_chunk:
    return value_and_grad

  def local_chunks(params, tasks):
    """The mean over this device's T_d tasks, c at a time: a scan over T_d / c chunks."""
    chunks = jax.tree.map(lambda x: x.reshape(-1, tasks_per_chunk, *x.shape[1:]), tasks)
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

  if mesh is None or mesh.devices.size == 1:
    return local_chunks

  def per_device(params, tasks):
    return jax.lax.pmean(local_chunks(params, tasks), "data")

  # Without varying-axes checks (check_vma), each device's gradient with respect to
  # the replicated params is its own tasks' alone, and the pmean averages them
  # once. (With the checks, JAX would sum the gradient over the devices inside
  # every chunk, and the models' custom differentiation rules would need typing
  # for them.) tests/test_task_chunks.py checks the result against one device.
  return jax.shard_map(
    per_device,
    mesh=mesh,
    in_specs=(PartitionSpec(), PartitionSpec("data")),
    out_specs=PartitionSpec(),
    check_vma=False,
  )


# Tasks per device per chunk when config.train.tasks_per_chunk is None, by backend.
# On CPU, one task at a time was as fast as or faster than the whole meta-batch on
# every MAML workload of the benchmark, at a fraction of the memory
# (docs/performance.md, "Task chunks"). GPUs and TPUs were not measured: they keep
# the whole per-device meta-batch in one vmap, which fills a wide device.
MEASURED_DEFAULTS = {"cpu": 1}


def configured(train_config, backend: str | None = None) -> int:
  """config.train.tasks_per_chunk, with None as ``MEASURED_DEFAULTS`` for the backend (else 0)."""
  chunk = train_config.tasks_per_chunk
  if chunk is None:
    return MEASURED_DEFAULTS.get(backend or jax.default_backend(), 0)
  return chunk


def tasks_per_chunk(config, mesh: Mesh, backend: str | None = None) -> int:
  """``configured`` tasks per chunk, checked against the meta-batch and the mesh.

  iMAML's ``lax.custom_root`` does not trace inside ``jax.shard_map``, so with
  several devices its chunks are off by default and an explicit chunk size is a
  ConfigError.
  """
  chunk = configured(config.train, backend)
  implicit = config.algorithm == "maml" and config.maml.meta_gradient == "implicit"
  if implicit and mesh.devices.size > 1 and chunk:
    if config.train.tasks_per_chunk is None:
      return 0
    raise ConfigError(
      "iMAML (config.maml.meta_gradient=implicit) cannot take its meta-batch gradient in "
      f"chunks on {mesh.devices.size} devices: set --config.train.tasks_per_chunk=0."
    )
  check_tasks_per_chunk(chunk, config.train.meta_batch_size, mesh.devices.size)
  return chunk
