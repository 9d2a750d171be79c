"""Implicit MAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019).

The inner problem is regularised towards the meta-parameters theta,

    phi*(theta) = argmin_phi  L_train(phi) + (lambda / 2) ||phi - theta||^2,

so phi* is a root of F(phi, theta) = grad L_train(phi) + lambda (phi - theta).
By the implicit function theorem, with H the Hessian of L_train at phi*,

    d phi* / d theta = lambda (H + lambda I)^-1 = (I + H / lambda)^-1,

and the meta-gradient of a query loss L_test(phi*) is

    g_theta = (I + H / lambda)^-1 grad L_test(phi*)          (H is symmetric).

It depends on phi* alone, not on the path of the inner optimiser, so the inner
loop is run, not differentiated (``inner_optimizers.minimize``, any optax
optimiser), and memory does not grow with the number of inner steps.

Here the implicit derivative is ``jax.lax.custom_root``: a ``custom_jvp`` whose
tangent rule solves the linear system above. Its tangent is linear, so JAX
transposes it for reverse mode, and forward mode, ``vmap`` and ``jit`` compose
as for any JAX function. The tangent system is solved by conjugate gradient
(``jax.scipy.sparse.linalg.cg`` inside a symmetric ``custom_linear_solve``,
so its transpose is the same solve). Each CG iteration is one Hessian-vector product
H v, forward-over-reverse: the JVP of ``jax.grad(L_train)``.

``cg_damping`` (delta) solves the damped system (H + lambda (1 + delta) I) x = lambda v,
that is ((1 + delta) I + H / lambda) x = v, as the authors' implementation does
(its ``regu_coef``); a few CG steps on a better-conditioned system give a more
stable meta-gradient. With delta = 0 and enough CG steps, x is the exact
implicit gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from fsl_jax.algorithms.inner_optimizers import make_inner_optimizer, minimize


@dataclasses.dataclass(frozen=True)
class ImamlSettings:
  """config.imaml: lambda, CG and the inner optimiser."""

  lam: float = 2.0
  cg_steps: int = 5
  cg_damping: float = 1.0
  inner_optimizer: str = "sgd"  # "sgd" (the paper's GD variant) or "adam".


def conjugate_gradient(matvec: Callable, b, num_steps: int):
  """x with matvec(x) ~= b after ``num_steps`` CG iterations from x = 0 (matvec SPD).

  ``b`` and x are pytrees. The solve is a ``custom_linear_solve`` whose matrix
  is symmetric, so its transpose is the same solve: reverse mode through it is
  one more CG run, and no derivative is ever taken through the CG iterations.
  """

  def cg(matvec, b):
    return jax.scipy.sparse.linalg.cg(matvec, b, tol=0.0, atol=0.0, maxiter=num_steps)[0]

  return jax.lax.custom_linear_solve(matvec, b, solve=cg, symmetric=True)


def implicit_adapt(
  train_loss: Callable,
  theta,
  *,
  settings: ImamlSettings,
  inner_lr: float,
  num_steps: int,
  unroll: int | bool = 1,
  first_order: bool = False,
):
  """phi*(theta), the regularised inner solution, with its implicit derivative.

  Args:
    train_loss: phi -> scalar L_train(phi) (the support loss).
    theta: the meta-parameters, a pytree; also phi_0.
    settings: lambda, CG steps and damping, the inner optimiser.
    inner_lr: the inner optimiser's learning rate.
    num_steps: inner optimiser steps (static).
    unroll: passed to the inner ``lax.scan``.
    first_order: take d phi* / d theta = I (no CG): the meta-gradient is then
      grad L_test(phi*).

  Returns:
    phi*, a pytree like theta whose derivative in theta (and in anything
    ``train_loss`` closes over) is (I + H / lambda)^-1 applied by CG.
  """
  lam = settings.lam

  def stationarity(phi):
    """F(phi, theta) = grad L_train(phi) + lambda (phi - theta): zero at phi*."""
    grads = jax.grad(train_loss)(phi)
    return jax.tree.map(lambda g, p, t: g + lam * (p - t), grads, phi, theta)

  def solve(residual, phi_0):
    tx = make_inner_optimizer(settings.inner_optimizer, inner_lr)
    return minimize(lambda phi, _: residual(phi), phi_0, tx, num_steps, unroll)

  def tangent_solve(linearized, rhs):
    # linearized(v) = H v + lambda v, an HVP by forward-over-reverse; damped as above.
    damped = lambda v: jax.tree.map(
      lambda hv, x: hv + lam * settings.cg_damping * x, linearized(v), v
    )
    return conjugate_gradient(damped, rhs, settings.cg_steps)

  if first_order:
    phi_star = solve(stationarity, jax.lax.stop_gradient(theta))
    return jax.tree.map(lambda p, t: t + jax.lax.stop_gradient(p - t), phi_star, theta)
  return jax.lax.custom_root(stationarity, theta, solve, tangent_solve)
