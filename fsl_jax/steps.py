"""The jitted train and eval steps, shared by every algorithm.

An algorithm supplies a pure per-episode loss

    loss_fn(params, batch_stats, episode, rng, *, n_way, train, step)
        -> (loss, (metrics, new_batch_stats))

and these functions ``vmap`` it over a meta-batch of T episodes. The meta-loss is
the mean over episodes, L(theta) = (1/T) sum_t L_t(theta), so its gradient is the
mean of the per-episode gradients, taken all at once or a chunk of tasks at a
time (task_chunks.py). Each step compiles once per episode shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fsl_jax import task_chunks
from fsl_jax.data.episodes import Episode
from fsl_jax.runtime import divergence, sharding
from fsl_jax.runtime.cpu_matmuls import compiler_options
from fsl_jax.state import TrainState


def make_train_step(
  loss_fn: Callable,
  tx: optax.GradientTransformation,
  n_way: int,
  mesh: Mesh | None = None,
  cpu_matmuls: str = "ynnpack",
  tasks_per_chunk: int = 0,
):
  """Returns jit((state, episodes [T, ...]) -> (state, metrics)), donating ``state``.

  Metrics are means over the meta-batch, plus ``grad_norm`` and
  ``first_bad_step`` (int32: this step's 1-based number if its loss or gradient
  is not finite, and then the step changes nothing but ``state.step``;
  else INT32_MAX; see divergence.py). Batch statistics become the mean of the
  per-episode updates. The step rng is fold_in(state.rng, step), split per episode.
  With a ``mesh``, the episodes come sharded P("data") and the new state and the
  metrics are pinned replicated P(): XLA all-reduces the mean gradient.
  ``cpu_matmuls`` ("ynnpack" or "eigen") picks XLA:CPU's matmul library (cpu_matmuls.py).
  ``tasks_per_chunk`` > 0 differentiates that many tasks per device at a time and
  accumulates the mean gradient (task_chunks.py): memory for one chunk, not the
  whole meta-batch; 0 differentiates the whole meta-batch in one ``vmap``.
  """

  def task_loss(params, task, batch_stats, step):
    episode, rng = task
    return loss_fn(params, batch_stats, episode, rng, n_way=n_way, train=True, step=step)

  def train_step(state: TrainState, episodes: Episode):
    meta_batch_size = episodes.query_labels.shape[0]
    rngs = jax.random.split(jax.random.fold_in(state.rng, state.step), meta_batch_size)
    per_task = functools.partial(task_loss, batch_stats=state.batch_stats, step=state.step)
    value_and_grad = task_chunks.mean_value_and_grad(per_task, tasks_per_chunk, mesh)
    (loss, (metrics, batch_stats)), grads = value_and_grad(state.params, (episodes, rngs))
    metrics["grad_norm"] = optax.tree.norm(grads)
    # A non-finite step changes nothing but the step counter (see divergence.py).
    finite = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])

    def update(old):
      params, _, opt_state = old
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), batch_stats, opt_state

    params, batch_stats, opt_state = divergence.update_if_finite(
      finite, update, (state.params, state.batch_stats, state.opt_state)
    )
    metrics["first_bad_step"] = divergence.first_bad_step(finite, state.step + 1)
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics

  options = dict(donate_argnums=(0,), compiler_options=compiler_options(cpu_matmuls))
  if mesh is None:
    return jax.jit(train_step, **options)
  return jax.jit(train_step, out_shardings=sharding.replicated(mesh), **options)


def make_eval_step(
  loss_fn: Callable,
  n_way: int,
  mesh: Mesh | None = None,
  cpu_matmuls: str = "ynnpack",
):
  """Returns jit((state, episodes [E, ...]) -> metrics with arrays [E]), one per episode.

  Metrics are the algorithm's: "loss" and "accuracy" [E], and, where the algorithm
  gives them, "predictions" [E, N*Q], the predicted class of every query. With a
  ``mesh``, the episodes and the metrics are sharded P("data"). ``cpu_matmuls``
  as for ``make_train_step``.
  """

  def eval_step(state: TrainState, episodes: Episode):
    count = episodes.query_labels.shape[0]
    rngs = jax.random.split(state.rng, count)  # Train steps use fold_in(rng, step).

    def one(episode, rng):
      _, (metrics, _) = loss_fn(
        state.params, state.batch_stats, episode, rng, n_way=n_way, train=False, step=state.step
      )
      return metrics

    return jax.vmap(one)(episodes, rngs)

  options = dict(compiler_options=compiler_options(cpu_matmuls))
  if mesh is None:
    return jax.jit(eval_step, **options)
  return jax.jit(eval_step, out_shardings=sharding.sharded_along_batch(mesh), **options)
