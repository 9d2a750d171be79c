"""The training state: one pytree holding everything a resumed run needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
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
  # One compiled program: op-by-op, init compiles dozens of small ones (~20 s on CPU).
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
