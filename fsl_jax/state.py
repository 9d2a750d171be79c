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


def make_optimizer(optim: ml_collections.ConfigDict, meta_batch_size: int, lr_scale: float = 1.0):
  """Adam whose learning rate is multiplied by ``decay_rate`` every ``decay_every_episodes``.

  Snell et al.: lr 1e-3, halved every 2000 episodes. The schedule counts steps,
  so the interval is divided by the meta-batch size. ``lr_scale`` multiplies the
  whole schedule (divergence restarts lower it); the optimiser state's structure
  does not depend on it, so a checkpoint restores under any scale.
  """
  schedule = optax.exponential_decay(
    optim.learning_rate * lr_scale,
    transition_steps=max(1, optim.decay_every_episodes // meta_batch_size),
    decay_rate=optim.decay_rate,
    staircase=True,
  )
  return optax.adam(schedule)
