"""MAML (Finn, Abbeel & Levine, ICML 2017), first and second order, in plain JAX.

Inner loop: S steps of gradient descent on the support loss, from the meta-params
theta (``inner_adapt``, a ``lax.scan`` of ``jax.grad`` steps):

    theta_0 = theta,   theta_{s+1} = theta_s - alpha * grad L_support(theta_s).

Meta-loss: the query loss after adaptation, L_query(theta_S), averaged over the
meta-batch by ``vmap`` (``fsl_jax/steps.py``). Its gradient is

    d L_query(theta_S) / d theta
        = grad L_query(theta_S) * prod_s (I - alpha * Hessian L_support(theta_s)).

* Second order differentiates through the scan, Hessian-vector products and all.
* First order (``first_order=True``) puts ``stop_gradient`` on the inner
  gradients, so d theta_S / d theta = I and the meta-gradient is
  grad L_query(theta_S).
* ``remat=True`` wraps each inner step in ``jax.checkpoint``: the backward pass
  recomputes each step's activations instead of storing them all, so
  second-order memory stays flat as S grows.
* ``unroll=True`` (the default) unrolls the scan when tracing. XLA then fuses and
  schedules across inner steps, and its cost analysis counts every step (a
  rolled loop's body is counted once). Second-order steps run faster on CPU at
  the price of longer compiles (docs/performance.md has the measurements); set
  it False for long inner loops. With ``remat`` the loop stays rolled: unrolled,
  XLA's buffer assignment does not keep the memory flat.

Options beyond the reference code, each a config switch:

* Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
  Learning"): alpha is a learnable pytree shaped like theta, meta-learned with it.
* ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): only the linear
  head is adapted in the inner loop; the body is meta-learned but never adapted.
* Multi-step loss (Antoniou et al. 2019, "How to train your MAML", MAML++): the
  meta-loss is sum_s w_s L_query(theta_s) over s = 1..S. The weights start
  uniform and are annealed linearly, over ``msl_anneal_steps`` training steps,
  to all weight on the last step.

Batch norm is transductive, as in Finn et al. and the reference PyTorch code:
every forward pass, in training and at test time, normalises with the batch
statistics of the images it is given (the support set in the inner loop, the
query set for the meta-loss). Running averages are never used, and batch_stats
pass through unchanged. The batch-norm scale and offset are adapted like every
other parameter.

``meta_gradient="implicit"`` replaces the unrolled inner loop by iMAML's
regularised inner solve and its implicit meta-gradient (``imaml.py``);
``first_order`` then takes d phi* / d theta = I, as it takes d theta_S / d theta = I here.

Meta-params are ``{"model": theta}``, plus ``"inner_lr": alpha`` with Meta-SGD.
"""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fsl_jax.algorithms import imaml
from fsl_jax.data.episodes import Episode
from fsl_jax.errors import ConfigError

META_GRADIENTS = ("unrolled", "implicit")


@dataclasses.dataclass(frozen=True)
class MamlSettings:
  """Static MAML hyperparameters (config.maml)."""

  inner_lr: float = 0.4
  inner_steps: int = 1
  test_inner_steps: int = 3
  first_order: bool = False
  remat: bool = False
  unroll: bool = True
  meta_sgd: bool = False
  anil: bool = False
  multi_step_loss: bool = False
  msl_anneal_steps: int = 10_000
  meta_gradient: str = "unrolled"  # Or "implicit" (iMAML, with ``imaml``).
  imaml: imaml.ImamlSettings = dataclasses.field(default_factory=imaml.ImamlSettings)

  def __post_init__(self):
    if self.meta_gradient not in META_GRADIENTS:
      raise ConfigError(
        f"config.maml.meta_gradient must be one of {META_GRADIENTS}, got {self.meta_gradient!r}."
      )
    if self.meta_gradient == "implicit" and (self.meta_sgd or self.multi_step_loss):
      raise ConfigError(
        "config.maml.meta_gradient=implicit depends on the inner solution alone, so it has no "
        "gradient for Meta-SGD's rates or MAML++'s per-step losses: set "
        "config.maml.meta_sgd=False and config.maml.multi_step_loss=False."
      )


def init_meta_params(model_params, settings: MamlSettings) -> dict:
  """theta -> {"model": theta} (+ {"inner_lr": alpha, shaped like theta} for Meta-SGD)."""
  meta = {"model": model_params}
  if settings.meta_sgd:
    meta["inner_lr"] = jax.tree.map(lambda p: jnp.full_like(p, settings.inner_lr), model_params)
  return meta


def inner_learning_rates(meta_params: dict, settings: MamlSettings):
  """alpha as a pytree like theta: learnt (Meta-SGD) or constant; 0 off the head for ANIL."""
  model_params = meta_params["model"]
  if settings.meta_sgd:
    rates = meta_params["inner_lr"]
  else:
    rates = jax.tree.map(lambda p: jnp.asarray(settings.inner_lr, p.dtype), model_params)
  if settings.anil:
    rates = {
      name: jax.tree.map(lambda r, keep=(name == "head"): r * keep, sub)
      for name, sub in rates.items()
    }
  return rates


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def inner_adapt(
  loss_fn,
  params,
  rates,
  num_steps: int,
  first_order: bool,
  remat: bool = False,
  per_step_fn=None,
  unroll: bool = False,
):
  """S steps of gradient descent on ``loss_fn``, as a ``lax.scan``.

  Args:
    loss_fn: params -> scalar support loss.
    params: theta_0, a pytree.
    rates: alpha, a pytree like params (or broadcastable leaves).
    num_steps: S (static); 0 returns params unchanged.
    first_order: stop_gradient on the inner gradients.
    remat: jax.checkpoint each step, trading compute for flat memory.
    unroll: unroll the scan when tracing (one XLA program per step, no while loop).
    per_step_fn: optional theta_s -> pytree, evaluated after each step and
      stacked along a leading axis of length S (for the multi-step loss).

  Returns:
    (theta_S, stacked per_step_fn outputs or None).
  """

  def step(fast, _):
    grads = jax.grad(loss_fn)(fast)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    fast = jax.tree.map(lambda p, g, a: p - a * g, fast, grads, rates)
    return fast, (per_step_fn(fast) if per_step_fn is not None else None)

  if remat:
    step = jax.checkpoint(step)
  return jax.lax.scan(step, params, None, length=num_steps, unroll=unroll)


def multi_step_weights(num_steps: int, train_step: jax.Array, anneal_steps: int) -> jax.Array:
  """MAML++ weights [S]: uniform at step 0, all on the last step after ``anneal_steps``."""
  progress = jnp.clip(train_step / max(anneal_steps, 1), 0.0, 1.0)
  uniform = jnp.full((num_steps,), 1.0 / num_steps)
  last = jax.nn.one_hot(num_steps - 1, num_steps)
  return (1.0 - progress) * uniform + progress * last


def adapt(
  support_loss,
  meta_params: dict,
  settings: MamlSettings,
  num_steps: int,
  first_order: bool,
  per_step_fn=None,
):
  """theta -> the adapted params: unrolled (``inner_adapt``) or implicit (``imaml``).

  Args:
    support_loss: params -> scalar support loss.
    meta_params: {"model": theta} (+ "inner_lr" with Meta-SGD).
    settings: MAML hyperparameters.
    num_steps: inner steps (static).
    first_order: d adapted / d theta = I.
    per_step_fn: as in ``inner_adapt`` (unrolled only).

  Returns:
    (adapted params, stacked per_step_fn outputs or None).
  """
  theta, rates = meta_params["model"], inner_learning_rates(meta_params, settings)
  # ANIL adapts the head alone: the inner loop's params are the head, with the body
  # fixed inside the losses, so no inner gradient is taken (or differentiated) for it.
  adapts = (lambda head: {**theta, "head": head}) if settings.anil else (lambda p: p)
  inner_params = theta["head"] if settings.anil else theta
  inner_loss = lambda p: support_loss(adapts(p))
  if settings.meta_gradient == "implicit":
    adapted = imaml.implicit_adapt(
      inner_loss,
      inner_params,
      settings=settings.imaml,
      inner_lr=settings.inner_lr,
      num_steps=num_steps,
      unroll=settings.unroll,
      first_order=first_order,
    )
    return adapts(adapted), None
  adapted, per_step = inner_adapt(
    inner_loss,
    inner_params,
    rates["head"] if settings.anil else rates,
    num_steps,
    first_order=first_order,
    remat=settings.remat,
    unroll=settings.unroll and not settings.remat,
    per_step_fn=(lambda p: per_step_fn(adapts(p))) if per_step_fn is not None else None,
  )
  return adapts(adapted), per_step


def episode_loss(
  model: nn.Module,
  meta_params: dict,
  batch_stats,
  episode: Episode,
  *,
  settings: MamlSettings,
  train: bool,
  step: jax.Array | int = 0,
):
  """Query loss of one episode after adapting on its support set.

  Args:
    model: uint8 images [B, H, W, C] -> logits [B, n_way].
    meta_params: {"model": theta} (+ "inner_lr" with Meta-SGD).
    batch_stats: the model's batch-norm averages; unused (transductive) and returned as is.
    episode: support [N*K, H, W, C], query [N*Q, H, W, C], labels in [0, N).
    settings: MAML hyperparameters.
    train: training adapts with ``inner_steps`` (first or second order as set);
      evaluation adapts with ``test_inner_steps``.
    step: the training step, for the multi-step loss annealing.

  Returns:
    (loss, (metrics, batch_stats)); metrics = {"loss", "accuracy"} on the query
    set after the last inner step, plus "predictions" [N*Q] when not training.
  """

  chex.assert_rank([episode.support, episode.query], 4)  # [N*K | N*Q, H, W, C]

  def logits(params, images):
    variables = {"params": params, "batch_stats": batch_stats}
    out, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return out

  def support_loss(params):
    return cross_entropy(logits(params, episode.support), episode.support_labels)

  def query_loss(params):
    return cross_entropy(logits(params, episode.query), episode.query_labels)

  num_steps = settings.inner_steps if train else settings.test_inner_steps
  use_msl = train and settings.multi_step_loss and num_steps > 0
  adapted, per_step_losses = adapt(
    support_loss,
    meta_params,
    settings,
    num_steps,
    first_order=settings.first_order or not train,
    per_step_fn=query_loss if use_msl else None,
  )
  query_logits = logits(adapted, episode.query)  # [N*Q, N]
  final_loss = cross_entropy(query_logits, episode.query_labels)
  if use_msl:
    weights = multi_step_weights(num_steps, step, settings.msl_anneal_steps)
    loss = jnp.sum(weights * per_step_losses)
  else:
    loss = final_loss
  predictions = jnp.argmax(query_logits, -1)  # [N*Q]
  metrics = {"loss": final_loss, "accuracy": jnp.mean(predictions == episode.query_labels)}
  if not train:
    metrics["predictions"] = predictions  # Per query, for plots and Lake's runs.
  return loss, (metrics, batch_stats)
