"""A ``lax.scan`` whose recurrent weight gradient is one matmul after the backward scan.

An RNN step multiplies something of the carry by a weight, ``pre_t = z_t @ W``.
Autodiff of ``lax.scan`` adds ``z_t^T dpre_t`` into a [D_in, D_out] accumulator at
every step of the backward scan: for the 1600-d LSTMs of Matching Networks' FCE
that is a 41-82 MB outer product written and added per step. Here the backward
scan instead emits ``z_t`` and ``dpre_t``, and after it

    dW = sum_t z_t^T dpre_t = Z^T dP,   Z = [z_1; ..; z_T], dP = [dpre_1; ..; dpre_T]

is a single matmul. Everything else is JAX's own autodiff of the step: the
backward scan runs ``jax.vjp`` of the cell, in which ``project`` replays the
saved ``pre_t`` (so ``z_t @ W`` is not recomputed) and passes ``dz = dpre W^T``
back. The backward pass is plain JAX, so it can be differentiated again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# cell(carry, x_t, consts, project) -> (carry', y_t), calling project(z) = z @ W once.
Cell = Callable[[Any, Any, Any, Callable[[jax.Array], jax.Array]], tuple[Any, Any]]


@jax.custom_vjp
def _replay(z: jax.Array, pre: jax.Array, weight: jax.Array) -> jax.Array:
  """``pre``, saved from ``z @ weight``; the VJP gives dz = g W^T, dpre = g, and no dW."""
  del z, weight
  return pre


def _replay_fwd(z, pre, weight):
  del z
  return pre, weight


def _replay_bwd(weight, g):
  # g W^T as one dot contracting W's output axis: a written-out ``weight.T`` became
  # a [D_out, D_in] copy of W inside the backward loop, at every step.
  dz = jax.lax.dot_general(g, weight, (((g.ndim - 1,), (1,)), ((), ())))
  return dz, g, None


_replay.defvjp(_replay_fwd, _replay_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6))
def weight_tied_scan(
  cell: Cell, weight: jax.Array, consts, carry, xs, length: int, reverse: bool = False
):
  """``lax.scan`` of ``cell`` over ``xs`` (or ``length`` steps when ``xs`` is None).

  Args:
    cell: ``(carry, x_t, consts, project) -> (carry', y_t)``. ``project(z)`` is
      ``z @ weight`` and must be called exactly once per step; ``weight`` must not
      be used otherwise (pass other arrays the step needs, and wants gradients
      for, in ``consts``).
    weight: [D_in, D_out].
    consts: a pytree of arrays the same at every step.
    carry: the initial carry (a pytree).
    xs: a pytree of arrays with leading axis T, or None.
    length: T.
    reverse: scan t = T-1 .. 0, as ``lax.scan``.

  Returns:
    (final carry, ys stacked on a leading axis T), as ``lax.scan``.
  """
  return _scan_fwd(cell, weight, consts, carry, xs, length, reverse)[0]


def _scan_fwd(cell, weight, consts, carry, xs, length, reverse):
  def step(carry, x):
    pres = []

    def project(z):
      pres.append(z @ weight)
      return pres[0]

    new_carry, y = cell(carry, x, consts, project)
    return new_carry, (y, carry, pres[0])

  final, (ys, carries, pres) = jax.lax.scan(step, carry, xs, length=length, reverse=reverse)
  return (final, ys), (weight, consts, xs, carries, pres)


def _scan_bwd(cell, length, reverse, residuals, cotangents):
  weight, consts, xs, carries, pres = residuals
  d_final, d_ys = cotangents

  def step(acc, inputs):
    d_carry, d_consts = acc
    carry, x, pre, d_y = inputs

    def replayed(carry, x, consts, pre):
      zs = []

      def project(z):
        zs.append(z)
        return _replay(z, pre, weight)

      return cell(carry, x, consts, project), zs[0]

    _, vjp, z = jax.vjp(replayed, carry, x, consts, pre, has_aux=True)
    d_carry, d_x, d_consts_t, d_pre = vjp((d_carry, d_y))
    d_consts = jax.tree.map(jnp.add, d_consts, d_consts_t)
    return (d_carry, d_consts), (d_x, z, d_pre)

  zero_consts = jax.tree.map(jnp.zeros_like, consts)
  (d_carry, d_consts), (d_xs, zs, d_pres) = jax.lax.scan(
    step, (d_final, zero_consts), (carries, xs, pres, d_ys), length=length, reverse=not reverse
  )
  rows = list(range(zs.ndim - 1))  # Every step and every row of z at once.
  d_weight = jax.lax.dot_general(zs, d_pres, ((rows, rows), ((), ())))
  return d_weight, d_consts, d_carry, d_xs


weight_tied_scan.defvjp(_scan_fwd, _scan_bwd)
