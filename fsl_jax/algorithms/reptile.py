"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Inner loop: from the meta-params theta, k (``inner_steps``) steps of an optimiser
(Adam with beta1 = 0 by default, as Nichol et al.; ``inner_optimizers.minimize``)
on minibatches B_1 .. B_k of the support set alone; Reptile uses no query images
to adapt:

    phi_0 = theta,   phi_{s+1} = phi_s + Update(grad L_{B_{s+1}}(phi_s)),   phi = phi_k.

The minibatches hold ``inner_batch_size`` support images each, read in order from
a stream of random permutations of the support set (a fresh one for each pass,
made from the episode's rng), so every image is used once per pass and a
minibatch may straddle two passes, as in the authors' code (``_mini_batches``).

Meta-update: theta moves towards the adapted params. With a meta-batch of T tasks,

    theta <- theta - epsilon * g,   g = theta - (1/T) sum_t phi_t,

and g, the pseudo-gradient, goes through optax like any gradient, so the outer
optimiser stays a config choice (config.optim). Nichol et al. use SGD with epsilon
= 1 annealed linearly to 0 (optim.name = "sgd", learning_rate = 1.0,
anneal_to_zero = True, decay_rate = 1.0); Adam on g is their other option.

g is the gradient of a per-episode surrogate loss,

    L_t(theta) = 0.5 * || theta - stop_gradient(phi_t(theta)) ||^2,
    dL_t / dtheta = theta - phi_t,

so the train step's ``jax.value_and_grad`` of the meta-batch mean of L_t
(``fsl_jax/steps.py``) is exactly g, and no derivative of phi is ever taken: the
inner loop runs from ``stop_gradient(theta)``, so it is never differentiated and
its memory does not grow with k.

With k = 1 step of plain SGD at rate alpha on the whole support set,
g = alpha * grad L_support(theta): Reptile is then joint training on the tasks'
losses (Nichol et al.'s equations 6-7). Only k > 1 brings in the higher-order
terms that make it meta-learn (AvgGradInner in their section 5's expansion).

The reported metrics are the query loss and accuracy of the adapted phi, not the
surrogate (which is what the train step differentiates). Evaluation
(``train=False``) adapts with ``test_inner_steps`` minibatches of
``test_inner_batch_size`` and returns that query loss as the loss.

Batch norm is transductive, as in fsl_jax's MAML: every forward pass normalises
with the statistics of the images it is given (each inner minibatch, then the
query set), and batch_stats pass through unchanged. That is Nichol et al.'s
"transduction" (their --transductive flag; the authors' code pools the support set
with one query per class there, where this uses the query set alone).

Differences from the authors' code: the inner optimiser's state (Adam's second
moment) starts afresh for every task, so the loss is a pure function of theta and
the episode (and Adam's first bias-corrected step is about inner_lr * sign(g));
theirs persists across training tasks and is reset at evaluation.

Params are the model's params theta: ``init_params`` is the identity.
"""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.algorithms.inner_optimizers import (
  INNER_OPTIMIZERS,
  make_inner_optimizer,
  minimize,
)
from fsl_jax.algorithms.maml import cross_entropy
from fsl_jax.algorithms.metric_episode import query_metrics
from fsl_jax.data.episodes import Episode
from fsl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ReptileSettings:
  """Static Reptile hyperparameters (config.reptile); defaults: Omniglot 5-way."""

  inner_lr: float = 1e-3
  inner_steps: int = 5
  test_inner_steps: int = 50
  inner_batch_size: int = 10
  test_inner_batch_size: int = 5
  inner_optimizer: str = "adam"  # Adam with beta1 = 0, or "sgd".

  def __post_init__(self):
    if self.inner_optimizer not in INNER_OPTIMIZERS:
      raise ConfigError(
        f"config.reptile.inner_optimizer must be one of {INNER_OPTIMIZERS}, "
        f"got {self.inner_optimizer!r}."
      )
    if self.inner_steps < 1:
      raise ConfigError(
        f"config.reptile.inner_steps must be >= 1 (with 0 steps phi = theta and the "
        f"meta-update is 0), got {self.inner_steps}."
      )
    if self.test_inner_steps < 0:
      raise ConfigError(
        f"config.reptile.test_inner_steps must be >= 0, got {self.test_inner_steps}."
      )
    for key in ("inner_batch_size", "test_inner_batch_size"):
      if getattr(self, key) < 1:
        raise ConfigError(f"config.reptile.{key} must be >= 1, got {getattr(self, key)}.")


def check_inner_batch(batch_size: int, support_size: int, *, train: bool) -> None:
  """Raises ConfigError if a minibatch of ``batch_size`` cannot be drawn without replacement."""
  if batch_size <= support_size:
    return
  key = "inner_batch_size" if train else "test_inner_batch_size"
  section = "train" if train else "eval"
  raise ConfigError(
    f"config.reptile.{key} = {batch_size} is larger than the support set of the "
    f"{section} episodes ({support_size} images = config.{section}.n_way * "
    f"config.{section}.k_shot): minibatches are drawn without replacement. Set "
    f"config.reptile.{key} to at most {support_size}, or raise config.{section}.k_shot."
  )


def minibatch_indices(
  rng: jax.Array, support_size: int, batch_size: int, num_steps: int
) -> jax.Array:
  """The support images of each inner step: int32 [S, B] indices into [0, M).

  Consecutive slices of P = ceil(S * B / M) concatenated random permutations of
  the M support images, one permutation per pass: each image appears once per
  pass, and the result is a function of ``rng`` alone.
  """
  if num_steps == 0:
    return jnp.zeros((0, batch_size), jnp.int32)
  num_passes = -(-num_steps * batch_size // support_size)
  keys = jax.random.split(rng, num_passes)
  passes = jax.vmap(lambda key: jax.random.permutation(key, support_size))(keys)  # [P, M]
  stream = passes.reshape(-1)[: num_steps * batch_size]  # [S*B]
  return stream.reshape(num_steps, batch_size).astype(jnp.int32)


def squared_distance(a, b) -> jax.Array:
  """|| a - b ||^2 over all leaves of two pytrees of the same structure."""
  squares = jax.tree.map(lambda x, y: jnp.sum(jnp.square(x - y)), a, b)
  return sum(jax.tree.leaves(squares))


def episode_loss(
  model: nn.Module,
  params,
  batch_stats,
  episode: Episode,
  rng: jax.Array,
  *,
  settings: ReptileSettings,
  train: bool,
):
  """Reptile's surrogate loss of one episode (training), or its query loss (evaluation).

  Args:
    model: uint8 images [B, H, W, C] -> logits [B, n_way].
    params: theta, the model's params.
    batch_stats: the model's batch-norm averages; unused (transductive) and returned as is.
    episode: support [N*K, H, W, C], query [N*Q, H, W, C], labels in [0, N).
    rng: the episode's key; it orders the support set into minibatches.
    settings: Reptile hyperparameters.
    train: training adapts with ``inner_steps`` minibatches of ``inner_batch_size``
      and returns 0.5 ||theta - stop_gradient(phi)||^2; evaluation adapts with
      ``test_inner_steps`` minibatches of ``test_inner_batch_size`` and returns
      the query loss.

  Returns:
    (loss, (metrics, batch_stats)); metrics = {"loss", "accuracy"} of the adapted
    phi on the query set, plus "predictions" [N*Q] when not training.
  """
  chex.assert_rank([episode.support, episode.query], 4)  # [N*K | N*Q, H, W, C]
  support_size = episode.support.shape[0]  # M = N*K, static.
  batch_size = settings.inner_batch_size if train else settings.test_inner_batch_size
  num_steps = settings.inner_steps if train else settings.test_inner_steps
  check_inner_batch(batch_size, support_size, train=train)

  def logits(p, images):
    variables = {"params": p, "batch_stats": batch_stats}
    out, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return out

  indices = minibatch_indices(rng, support_size, batch_size, num_steps)  # [S, B]

  def minibatch_loss(phi, s):
    images = jnp.take(episode.support, indices[s], axis=0)  # [B, H, W, C]
    labels = jnp.take(episode.support_labels, indices[s], axis=0)  # [B]
    return cross_entropy(logits(phi, images), labels)

  tx = make_inner_optimizer(settings.inner_optimizer, settings.inner_lr)
  # The inner loop starts from a constant: it is run, never differentiated.
  phi = minimize(jax.grad(minibatch_loss), jax.lax.stop_gradient(params), tx, num_steps)

  query_logits = logits(phi, episode.query)  # [N*Q, N]
  query_loss = cross_entropy(query_logits, episode.query_labels)
  metrics = query_metrics(query_loss, query_logits, episode.query_labels, train)
  if not train:
    return query_loss, (metrics, batch_stats)
  # d/dtheta = theta - phi, Reptile's pseudo-gradient; phi is already a constant.
  surrogate = 0.5 * squared_distance(params, phi)
  return surrogate, (metrics, batch_stats)
