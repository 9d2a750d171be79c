"""Inner loops that are run, not differentiated: iMAML's inner solve and Reptile's adaptation.

Both adapt a task's parameters phi with an optax optimiser for a fixed number of
steps. The meta-gradient never flows through these steps (iMAML differentiates
the solution implicitly, Reptile uses no derivative of phi at all), so the
optimiser may be anything optax offers, and the loop is a ``lax.scan`` whose
memory does not grow with its length when it is not differentiated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from fsl_jax.errors import ConfigError

INNER_OPTIMIZERS = ("sgd", "adam")


def make_inner_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
  """Plain gradient descent ("sgd"), or Adam with beta1 = 0 ("adam").

  Adam's first moment is off (beta1 = 0), as in Nichol et al.'s Reptile: with
  few steps per task, momentum from earlier steps only delays the update.
  """
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "adam":
    return optax.adam(learning_rate, b1=0.0)
  raise ConfigError(f"the inner optimiser must be one of {INNER_OPTIMIZERS}, got {name!r}.")


def minimize(
  gradient: Callable,
  params,
  tx: optax.GradientTransformation,
  num_steps: int,
  unroll: int | bool = 1,
):
  """``num_steps`` updates of ``tx`` from ``params`` along ``gradient``.

  Args:
    gradient: (phi, s) -> a pytree like phi, the direction at step s (an int32
      scalar: Reptile's minibatch index); usually jax.grad of a loss.
    params: phi_0.
    tx: the inner optimiser; its state starts fresh for every call.
    num_steps: S, static; 0 returns ``params``.
    unroll: passed to ``lax.scan``.

  Returns:
    phi_S.
  """

  def step(carry, s):
    phi, state = carry
    updates, state = tx.update(gradient(phi, s), state, phi)
    return (optax.apply_updates(phi, updates), state), None

  (phi, _), _ = jax.lax.scan(
    step, (params, tx.init(params)), jax.numpy.arange(num_steps), unroll=unroll
  )
  return phi
