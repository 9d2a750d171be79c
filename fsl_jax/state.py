"""The training state, one pytree holding everything a resumed run needs, and its optimiser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from fsl_jax.errors import ConfigError


@flax.struct.dataclass
class TrainState:
  """step: int32 []; params, batch_stats: pytrees; opt_state: optax state; rng: key [2]."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  example_images: jax.Array,
  seed: int,
  init_params: Callable = lambda params: params,
) -> TrainState:
  """Initialises params and batch statistics from a batch shaped like the inputs.

  Args:
    model: a module called as ``model(images, train=...)``.
    tx: the meta-optimiser.
    example_images: uint8 [B, H, W, C]; only its shape and dtype matter.
    seed: the run's seed; params use fold_in(seed, 0), the step rng fold_in(seed, 1).
    init_params: model params -> the meta-learned params (the algorithm's).
  """
  root = jax.random.PRNGKey(seed)
  # One compiled program: op-by-op, init would compile dozens of small ones.
  init = jax.jit(model.init, static_argnames="train")
  variables = init(jax.random.fold_in(root, 0), example_images, train=False)
  params = init_params(variables["params"])
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    rng=jax.random.fold_in(root, 1),
  )


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(config: ml_collections.ConfigDict, lr_scale: float = 1.0):
  """The meta-optimiser of ``config.optim``: Adam or SGD, with a step-size schedule.

  * ``optim.name``: "adam" (every algorithm but Reptile) or "sgd" (Reptile's
    meta-step, theta <- theta - epsilon * (theta - mean phi)).
  * The schedule multiplies the rate by ``decay_rate`` every
    ``decay_every_episodes`` (Snell et al.: 1e-3, halved every 2000 episodes; the
    interval counts episodes, so it is divided by the meta-batch size), and, with
    ``anneal_to_zero``, also by 1 - step / num_steps (Nichol et al.'s linear
    annealing of the meta-step to 0).
  * ``lr_scale`` multiplies the whole schedule (divergence restarts lower it); the
    optimiser state's structure does not depend on it, so a checkpoint restores
    under any scale.
  """
  optim, train = config.optim, config.train
  if optim.name not in OPTIMIZERS:
    raise ConfigError(f"config.optim.name must be one of {OPTIMIZERS}, got {optim.name!r}.")
  decay = optax.exponential_decay(
    optim.learning_rate * lr_scale,
    transition_steps=max(1, optim.decay_every_episodes // train.meta_batch_size),
    decay_rate=optim.decay_rate,
    staircase=True,
  )
  schedule = decay
  if optim.anneal_to_zero:
    anneal = optax.linear_schedule(1.0, 0.0, transition_steps=max(1, train.num_steps))
    schedule = lambda step: decay(step) * anneal(step)
  return optax.adam(schedule) if optim.name == "adam" else optax.sgd(schedule)
