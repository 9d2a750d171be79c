"""MAML on sinusoid regression: Finn, Abbeel & Levine (2017), section 5.1, in plain JAX.

    python -m fsl_jax.examples.sinusoid [--num_steps=20000] [--out=runs/sinusoid]
        [--meta_gradient=unrolled|implicit|reptile]

Each task is a sine wave y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0] and
phase phi ~ U[0, pi]; inputs are x ~ U[-5, 5]. A learner sees K = 10 points of a
new wave and must predict the whole curve.

MAML learns initial weights theta of a small network (1 -> 40 -> 40 -> 1, ReLU)
such that ONE gradient step on a task's K points gives a good fit:

    theta'_i = theta - alpha * grad L_i^support(theta)          (inner step, alpha = 0.01)
    theta   <- theta - beta * grad sum_i L_i^query(theta'_i)     (meta step, Adam, beta = 1e-3)

over meta-batches of 25 tasks, with the mean squared error as L. The meta
gradient goes through the inner step (second order). The baseline is the same
network "pretrained" on all tasks at once (plain regression on every task's
points) and then fine-tuned on the K points with the same inner steps. It can
only learn the average wave, which is 0, so one step cannot fit a new wave.

The script prints the test MSE after 0, 1 and 10 inner steps for both and draws
``sinusoid.png``: the fits before and after adaptation on one test wave, and
the MSE against the number of inner steps. It then checks the meta-gradient of
the trained network on one meta-batch three ways, reverse mode, forward mode
and ``jax.linearize``, along random directions. The library's MAML
(fsl_jax/algorithms/maml.py) has the same structure: ``inner_adapt`` is a
``lax.scan`` of ``jax.grad`` steps.

``--meta_gradient=implicit`` or ``reptile`` trains a third learner besides the two
(``unrolled``, the default, is MAML alone), from the same initial weights and on the
same meta-batches as MAML, prints the three test MSEs side by side and draws its
fits too. Both run their inner steps without differentiating them.

iMAML (Rajeswaran, Finn, Kakade & Levine 2019) adapts by a regularised solve,

    phi*_i = argmin_phi L_i^support(phi) + (lambda / 2) ||phi - theta||^2,

here 10 plain gradient steps from phi = theta, and takes the meta-gradient from the
implicit function theorem, H_i the Hessian of L_i^support at phi*_i:

    grad_theta L_i^query(phi*_i) = (I + H_i / lambda)^-1 grad L_i^query(phi*_i),

a few conjugate-gradient steps of Hessian-vector products
(``fsl_jax.algorithms.imaml.implicit_adapt``). It depends on phi*_i alone, not on
the steps that found it, so it does not see them overshoot as MAML's (I - alpha H)
does, and iMAML's theta here grows sharper as it trains: within a thousand
meta-steps the Hessian's largest eigenvalue passes 2 / alpha on some waves, where
gradient steps at alpha diverge. iMAML skips the meta-steps whose gradient is then
not finite, and keeps the theta that scores best on held-out waves, checked every
100 steps, since its test error rises again later.

Reptile (Nichol, Achiam & Schulman 2018) takes no derivative of the inner steps at
all. phi_i is 10 plain gradient steps from theta on all 2K points of wave i, and
theta moves towards the phi_i along the pseudo-gradient

    g = theta - (1/T) sum_i phi_i,

which goes to the same Adam as MAML's meta-gradient.
"""

from __future__ import annotations

import functools
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from jax.flatten_util import ravel_pytree

from fsl_jax.algorithms import imaml
from fsl_jax.tools import plots

K_SHOT = 10  # Points per task in the support set (and in the query set).
META_BATCH_SIZE = 25
INNER_LR = 0.01
META_LR = 1e-3
TEST_INNER_STEPS = 10  # Inner steps shown at test time (training uses 1).
CHUNK = 100  # Training steps per jitted call.
# iMAML. lambda = 1 is a weak pull: each inner gradient step at alpha multiplies
# phi - theta by 1 - alpha * lambda = 0.99, in (0, 1), so the pull shrinks it without
# flipping its sign, and the solve's 10 steps are nearly the test's 10 plain steps:
# theta learns for the adaptation that the table measures. With lambda = 10 to 100,
# theta sharpened sooner and further (see the module docstring). The support MSE of
# a ReLU network has negative curvature (from the residuals) below -lambda, so
# I + H / lambda is indefinite and plain CG on it fails (with damping 1, nothing was
# learned); damping 10 solves (11 I + H) x = v instead.
IMAML = imaml.ImamlSettings(lam=1.0, cg_steps=5, cg_damping=10.0, inner_optimizer="sgd")
IMAML_INNER_STEPS = 10
# Reptile. The authors' sine-wave demo (J. Schulman, "Reptile algorithm on sine
# waves", gist.github.com/joschu/f503500cda64f2ce87c8288906b09e2d) takes, per
# meta-step, 1 wave of 50 points, one pass of SGD at 0.02 in minibatches of 10 (5
# steps), and an outer SGD step epsilon = 0.1 annealed linearly to 0 over 30k
# meta-steps, with a 1-64-64-1 tanh network; the paper's own sine-wave settings were
# not checked. Here: this file's network, tasks and Adam, and 10 full-batch steps at
# alpha on a wave's 2K = 20 points, the steps the table measures (at 0.02, in
# minibatches of 10 as in the demo, training diverged on one of three seeds).
REPTILE_INNER_STEPS = 10


# --- Tasks ----------------------------------------------------------------------------
def sample_tasks(rng: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
  """Amplitudes [count] ~ U[0.1, 5] and phases [count] ~ U[0, pi]."""
  rng_a, rng_p = jax.random.split(rng)
  amplitude = jax.random.uniform(rng_a, (count,), minval=0.1, maxval=5.0)
  phase = jax.random.uniform(rng_p, (count,), minval=0.0, maxval=jnp.pi)
  return amplitude, phase


def sample_points(rng, amplitude, phase, count: int) -> tuple[jax.Array, jax.Array]:
  """``count`` points of each wave: x, y both [tasks, count, 1], x ~ U[-5, 5]."""
  x = jax.random.uniform(rng, (amplitude.shape[0], count, 1), minval=-5.0, maxval=5.0)
  return x, amplitude[:, None, None] * jnp.sin(x - phase[:, None, None])


def sample_meta_batch(rng: jax.Array, count: int = META_BATCH_SIZE) -> tuple[jax.Array, ...]:
  """``count`` new waves: (x_support, y_support, x_query, y_query), each [count, K_SHOT, 1]."""
  rng_t, rng_s, rng_q = jax.random.split(rng, 3)
  amplitude, phase = sample_tasks(rng_t, count)
  x_support, y_support = sample_points(rng_s, amplitude, phase, K_SHOT)
  x_query, y_query = sample_points(rng_q, amplitude, phase, K_SHOT)
  return x_support, y_support, x_query, y_query


# --- The network: a params dict and a pure function --------------------------------------
def init_params(rng: jax.Array, sizes=(1, 40, 40, 1)) -> list[dict]:
  """One {"w", "b"} per layer; w [in, out] ~ truncated normal, std 0.01 (Finn et al.'s code)."""
  params = []
  shapes = itertools.pairwise(sizes)  # (fan_in, fan_out) per layer.
  for rng_layer, shape in zip(jax.random.split(rng, len(sizes) - 1), shapes, strict=True):
    w = 0.01 * jax.random.truncated_normal(rng_layer, -2.0, 2.0, shape)
    params.append({"w": w, "b": jnp.zeros(shape[1])})
  return params


def predict(params: list[dict], x: jax.Array) -> jax.Array:
  """x [P, 1] -> y [P, 1]."""
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def mse(params, x, y) -> jax.Array:
  return jnp.mean((predict(params, x) - y) ** 2)


# --- MAML -----------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=3)
def inner_adapt(params, x, y, num_steps: int, inner_lr: float = INNER_LR):
  """``num_steps`` gradient steps on (x, y): the returned params stay differentiable in params."""

  def step(fast, _):
    grads = jax.grad(mse)(fast, x, y)
    return jax.tree.map(lambda p, g: p - inner_lr * g, fast, grads), None

  adapted, _ = jax.lax.scan(step, params, None, length=num_steps)
  return adapted


def maml_loss(params, x_support, y_support, x_query, y_query) -> jax.Array:
  """Mean over tasks [T, K, 1] of the query MSE after one inner step."""

  def one_task(xs, ys, xq, yq):
    return mse(inner_adapt(params, xs, ys, num_steps=1), xq, yq)

  return jnp.mean(jax.vmap(one_task)(x_support, y_support, x_query, y_query))


def pretrain_loss(params, x_support, y_support, x_query, y_query) -> jax.Array:
  """The baseline: plain regression on every point of every task."""
  del x_query, y_query
  return mse(params, x_support.reshape(-1, 1), y_support.reshape(-1, 1))


# --- iMAML and Reptile ------------------------------------------------------------------
def imaml_loss(params, x_support, y_support, x_query, y_query) -> jax.Array:
  """Mean over tasks [T, K, 1] of the query MSE at phi*, the solve of the regularised problem."""

  def one_task(xs, ys, xq, yq):
    phi = imaml.implicit_adapt(
      lambda p: mse(p, xs, ys),
      params,
      settings=IMAML,
      inner_lr=INNER_LR,
      num_steps=IMAML_INNER_STEPS,
    )
    return mse(phi, xq, yq)

  return jnp.mean(jax.vmap(one_task)(x_support, y_support, x_query, y_query))


def reptile_loss(params, x_support, y_support, x_query, y_query) -> jax.Array:
  """A surrogate whose gradient is Reptile's pseudo-gradient theta - mean over tasks of phi.

  Per task, 0.5 ||theta - phi||^2 with phi held constant has gradient theta - phi,
  so ``train`` feeds the pseudo-gradient to Adam like any gradient. The inner steps
  start from ``stop_gradient(theta)``: no derivative of them is ever taken.
  """

  def one_task(xs, ys, xq, yq):
    x, y = jnp.concatenate([xs, xq]), jnp.concatenate([ys, yq])  # All 2K points [2K, 1].
    phi = inner_adapt(jax.lax.stop_gradient(params), x, y, REPTILE_INNER_STEPS)
    squares = jax.tree.map(lambda t, p: jnp.sum((t - p) ** 2), params, phi)
    return 0.5 * sum(jax.tree.leaves(squares))

  return jnp.mean(jax.vmap(one_task)(x_support, y_support, x_query, y_query))


def train(loss_fn, rng: jax.Array, num_steps: int, tx=None, validate=None):
  """Adam on ``loss_fn`` over fresh meta-batches of 25 tasks; returns (params, losses).

  ``tx`` replaces Adam. With ``validate`` (params -> an error), the params after
  every CHUNK steps are scored and the best are returned instead of the last.
  """
  tx = tx or optax.adam(META_LR)
  rng_init, rng_data = jax.random.split(rng)
  params = init_params(rng_init)

  def update(carry, step):
    params, opt_state = carry
    batch = sample_meta_batch(jax.random.fold_in(rng_data, step))
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  # Steps run CHUNK at a time inside one jitted lax.scan: a step of this tiny
  # network takes far less time than a Python call into JAX.
  @functools.partial(jax.jit, static_argnums=2)
  def run_chunk(carry, first_step, length):
    return jax.lax.scan(update, carry, first_step + jnp.arange(length))

  carry = (params, tx.init(params))
  best = (np.inf, params)
  losses = []
  for first_step in range(0, num_steps, CHUNK):
    carry, chunk_losses = run_chunk(carry, first_step, min(CHUNK, num_steps - first_step))
    losses.append(chunk_losses)
    # An error of NaN is never below: params that diverged are never kept.
    if validate is not None and (error := float(validate(carry[0]))) < best[0]:
      best = (error, carry[0])
  params = carry[0] if validate is None else best[1]
  return params, np.concatenate([np.zeros(0), *jax.device_get(losses)])


# --- Evaluation -------------------------------------------------------------------------
def test_mse_by_steps(params, rng: jax.Array, num_tasks: int = 600) -> np.ndarray:
  """Mean MSE over new tasks, on 100 points each, after 0..TEST_INNER_STEPS inner steps.

  These are plain gradient steps at alpha for every method, iMAML too: the table
  then compares the learned initial weights under one adaptation rule.
  """
  rng_t, rng_s, rng_q = jax.random.split(rng, 3)
  amplitude, phase = sample_tasks(rng_t, num_tasks)
  x_support, y_support = sample_points(rng_s, amplitude, phase, K_SHOT)
  x_query, y_query = sample_points(rng_q, amplitude, phase, 100)
  per_task = mse_by_steps(params, x_support, y_support, x_query, y_query)
  return np.asarray(per_task.mean(axis=0))


@jax.jit  # At module level, so that calls with new params reuse the compiled function.
def mse_by_steps(params, x_support, y_support, x_query, y_query) -> jax.Array:
  """Query MSE [tasks, TEST_INNER_STEPS + 1] after 0..TEST_INNER_STEPS steps on the support set."""

  def one_task(xs, ys, xq, yq):
    def step(fast, _):
      fast = jax.tree.map(lambda p, g: p - INNER_LR * g, fast, jax.grad(mse)(fast, xs, ys))
      return fast, mse(fast, xq, yq)

    _, after = jax.lax.scan(step, params, None, length=TEST_INNER_STEPS)
    return jnp.concatenate([mse(params, xq, yq)[None], after])  # [TEST_INNER_STEPS + 1]

  return jax.vmap(one_task)(x_support, y_support, x_query, y_query)


# --- The meta-gradient three ways ---------------------------------------------------------
def random_directions(rng: jax.Array, params, count: int) -> jax.Array:
  """``count`` random unit vectors [count, n] in the space of the n numbers in ``params``."""
  flat, _ = ravel_pytree(params)
  v = jax.random.normal(rng, (count, flat.size), flat.dtype)
  return v / jnp.linalg.norm(v, axis=1, keepdims=True)


def meta_gradient_three_ways(params, rng: jax.Array, num_directions: int = 3) -> dict:
  """The MAML meta-gradient of one meta-batch along random directions, computed three ways.

  For L = ``maml_loss`` on one meta-batch and a direction v in params space,

      d/de L(theta + e v) at e = 0  =  grad L(theta) . v.

  (a) Reverse mode: ``jax.grad`` gives all of grad L(theta) in one backward pass,
      which serves every direction: then grad L . v is a dot product.
  (b) Forward mode: ``jax.jvp(L, (theta,), (v,))`` carries the tangent v along with
      the primal and gives grad L . v in one forward pass per direction, never
      forming grad L. Through the inner step theta' = theta - alpha grad L_s(theta)
      the tangent becomes (I - alpha H_s) v, H_s the support loss's Hessian: forward
      over reverse, as in a Hessian-vector product.
  (c) ``jax.linearize(L, theta)`` evaluates the primal once and returns the linear
      map v -> grad L . v, keeping what the tangents need; applying it to each
      direction runs only the tangent part again.

  The three agree up to float rounding. First-order MAML (``stop_gradient`` on the
  inner gradients) drops the alpha H_s v term and would not. For a random unit v,
  |grad L . v| is about |grad L| / sqrt(n) for n params, far from 0, so the relative
  difference is well defined.

  Returns "reverse", "forward" and "linearize", each [num_directions], the loss,
  |grad L|, and the largest absolute and relative differences from "reverse".
  """
  rng_batch, rng_directions = jax.random.split(rng)
  batch = sample_meta_batch(rng_batch)
  directions = random_directions(rng_directions, params, num_directions)
  result = jax.device_get(directional_derivatives(params, batch, directions))
  result["loss"], result["grad_norm"] = float(result["loss"]), float(result["grad_norm"])
  diff = np.maximum(
    np.abs(result["forward"] - result["reverse"]), np.abs(result["linearize"] - result["reverse"])
  )
  result["max_abs_diff"] = float(diff.max())
  result["max_rel_diff"] = float((diff / np.abs(result["reverse"])).max())
  return result


@jax.jit  # Op by op, compiling each of its many small ops would cost more than the check.
def directional_derivatives(params, batch, directions: jax.Array) -> dict:
  """grad L . v three ways, for L = ``maml_loss`` on ``batch``, each row v of directions [D, n]."""

  def loss(p):
    return maml_loss(p, *batch)

  _, unravel = ravel_pytree(params)  # unravel: [n] -> a pytree like params.
  grads = jax.grad(loss)(params)  # (a) One backward pass: the whole gradient...
  flat_grads, _ = ravel_pytree(grads)
  reverse = directions @ flat_grads  # ...then a dot product per v.
  # lax.map: a loop over the directions, one jvp per v. (b) Forward mode.
  forward = jax.lax.map(lambda v: jax.jvp(loss, (params,), (unravel(v),))[1], directions)
  value, loss_jvp = jax.linearize(loss, params)  # (c) The primal once...
  linearized = jax.lax.map(lambda v: loss_jvp(unravel(v)), directions)  # ...then tangents.
  return {
    "loss": value,
    "grad_norm": jnp.linalg.norm(flat_grads),
    "reverse": reverse,
    "forward": forward,
    "linearize": linearized,
  }


# --meta_gradient -> the third method's name.
THIRD_METHODS = {"implicit": "imaml", "reptile": "reptile"}
# Column headings, legends and panel titles of each method.
LABELS = {"maml": "MAML", "pretrained": "pretrained", "imaml": "iMAML", "reptile": "Reptile"}
TITLES = {**LABELS, "pretrained": "pretrained on all tasks"}


def train_third(meta_gradient: str, rng: jax.Array, num_steps: int, rng_valid: jax.Array):
  """iMAML ("implicit") or Reptile ("reptile") for ``num_steps``; returns (name, params).

  Reptile trains like MAML. iMAML skips the meta-steps whose gradient is not finite
  (an inner solve diverged) and keeps the params whose worst test MSE over
  0..TEST_INNER_STEPS steps, on 600 held-out waves (``rng_valid``), is the lowest,
  checked every CHUNK: the worst, since a few waves can diverge for some steps and
  then recover.
  """
  name = THIRD_METHODS[meta_gradient]
  if name == "reptile":
    return name, train(reptile_loss, rng, num_steps)[0]
  tx = optax.apply_if_finite(optax.adam(META_LR), max_consecutive_errors=100)
  validate = lambda p: test_mse_by_steps(p, rng_valid).max()
  return name, train(imaml_loss, rng, num_steps, tx, validate)[0]


def plot(params: dict, mse_by_step: dict, rng, path: str) -> None:
  """Fits of each method on one test wave before and after adaptation, and MSE against steps.

  ``params`` and ``mse_by_step`` [TEST_INNER_STEPS + 1] are keyed by method name.
  """
  rng_t, rng_s = jax.random.split(rng)
  amplitude, phase = sample_tasks(rng_t, 1)
  xs, ys = sample_points(rng_s, amplitude, phase, K_SHOT)
  xs, ys = xs[0], ys[0]  # [K, 1]
  grid = jnp.linspace(-5.0, 5.0, 200)[:, None]
  truth = amplitude[0] * jnp.sin(grid - phase[0])

  def fits(params, title):
    curves = [plots.Series("true wave", grid[:, 0], truth[:, 0], color="#000000")]
    curves.append(plots.Series(f"{K_SHOT} shots", xs[:, 0], ys[:, 0], "points", "#777777"))
    for steps, color in ((0, "#56B4E9"), (1, "#0072B2"), (TEST_INNER_STEPS, "#D55E00")):
      adapted = inner_adapt(params, xs, ys, steps)
      label = "pre-update" if steps == 0 else f"after {steps} step{'s' * (steps > 1)}"
      curves.append(plots.Series(label, grid[:, 0], predict(adapted, grid)[:, 0], color=color))
    return plots.Panel(curves, title, "x", "y", ylim=(-6.0, 6.0))

  steps = np.arange(TEST_INNER_STEPS + 1)
  curve = plots.Panel(
    [plots.Series(LABELS[name], steps, values) for name, values in mse_by_step.items()],
    "test MSE after adaptation (600 waves)",
    "inner gradient steps",
    "mean squared error",
  )
  panels = [fits(method_params, TITLES[name]) for name, method_params in params.items()]
  plots.line_charts([*panels, curve], path)


def run(num_steps: int, out: str, seed: int = 0, meta_gradient: str = "unrolled") -> dict:
  """Trains MAML, the baseline and the third method ``num_steps`` each, evaluates, plots, checks.

  ``meta_gradient``: "unrolled" (MAML and the baseline alone), "implicit" (and iMAML)
  or "reptile" (and Reptile). Returns the figures; "methods" names the trained ones.
  """
  rng_maml, rng_pre, rng_test, rng_plot = jax.random.split(jax.random.PRNGKey(seed), 4)
  started = time.perf_counter()
  maml_params, maml_losses = train(maml_loss, rng_maml, num_steps)
  pretrained_params, _ = train(pretrain_loss, rng_pre, num_steps)
  params = {"maml": maml_params, "pretrained": pretrained_params}
  if meta_gradient != "unrolled":
    # MAML's key: the same initial weights and meta-batches as MAML. Validation
    # waves of their own key.
    rng_valid = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
    name, third_params = train_third(meta_gradient, rng_maml, num_steps, rng_valid)
    params[name] = third_params
  mse_by_step = {name: test_mse_by_steps(p, rng_test) for name, p in params.items()}  # Same waves.
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "sinusoid.png")
  plot(params, mse_by_step, rng_plot, path)
  seconds = time.perf_counter() - started
  # A key of its own: the check draws on none of the keys that the figures above use.
  rng_check = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  return {
    **{f"{name}_mse": values for name, values in mse_by_step.items()},
    "methods": list(params),
    "maml_train_losses": maml_losses,
    "seconds": seconds,
    "plot": path,
    "meta_gradient": meta_gradient_three_ways(maml_params, rng_check),
  }


def comparison_table(result: dict) -> str:
  """Test MSE with a column per method and a row per number of inner steps (0, 1, 10)."""
  names = result["methods"]
  lines = ["test MSE over 600 new waves" + "".join(f"{LABELS[name]:>12}" for name in names)]
  for steps in (0, 1, TEST_INNER_STEPS):
    heading = f"  after {steps} step{'s' * (steps != 1)}"
    values = "".join(f"{result[f'{name}_mse'][steps]:12.3f}" for name in names)
    lines.append(f"{heading:<27}{values}")
  return "\n".join(lines)


def main(argv):
  del argv
  num_steps, out, seed = flags.FLAGS.num_steps, flags.FLAGS.out, flags.FLAGS.seed
  meta_gradient = flags.FLAGS.meta_gradient
  result = run(num_steps, out, seed, meta_gradient)
  if meta_gradient == "unrolled":
    print(
      f"{num_steps} meta-training steps of MAML and of the baseline: {result['seconds']:.0f} s."
    )
    print("test MSE over 600 new waves    0 steps   1 step   10 steps")
    for name in ("maml", "pretrained"):
      mse_by_step = result[f"{name}_mse"]
      print(f"  {name:<28}{mse_by_step[0]:9.3f}{mse_by_step[1]:9.3f}{mse_by_step[-1]:10.3f}")
  else:
    third = LABELS[result["methods"][-1]]
    print(
      f"{num_steps} meta-training steps of MAML, of the baseline and of {third}: "
      f"{result['seconds']:.0f} s."
    )
    print(comparison_table(result))
  check = result["meta_gradient"]
  print("MAML meta-gradient of one meta-batch along random unit directions v, three ways:")
  headings = ("reverse (grad . v)", "forward (jvp)", "linearize")
  print("  direction" + "".join(f"{heading:>20}" for heading in headings))
  columns = np.stack([check["reverse"], check["forward"], check["linearize"]], axis=1)
  for i, row in enumerate(columns):
    print(f"  {i:9d}" + "".join(f"{value:20.9f}" for value in row))
  print(
    f"  max relative difference {check['max_rel_diff']:.1e} (|grad L| {check['grad_norm']:.3f})"
  )
  print(f"Plot: {result['plot']}")


if __name__ == "__main__":
  # Flags are defined only when run as a script, so importing this module (tests,
  # other tools) adds none.
  flags.DEFINE_integer("num_steps", 20_000, "Meta-training steps (Finn et al.: 70k).")
  flags.DEFINE_string("out", "runs/sinusoid", "Folder for sinusoid.png.")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_enum(
    "meta_gradient",
    "unrolled",
    ["unrolled", "implicit", "reptile"],
    "unrolled: MAML and the baseline; implicit: and iMAML; reptile: and Reptile.",
  )
  app.run(main)
