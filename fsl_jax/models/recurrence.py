"""A ``lax.scan`` whose recurrent weight gradient is one matmul after the backward scan.

An RNN step multiplies something of the carry by a weight, ``pre_t = z_t W``.
Autodiff of ``lax.scan`` adds ``z_t^T dpre_t`` into a [D_in, D_out] accumulator at
every step of the backward scan: for the 1600-d LSTMs of Matching Networks' FCE
that is a [1600, 6400] or [3200, 6400] outer product written and added per step.
``weight_tied_scan`` has a JVP rule that moves the weight's tangent out of the loop:

    dpre_t = dz_t W + z_t dW,    and   E = [z_1; ..; z_T] dW    (one product, before),

so the tangent scan reads ``E_t`` as an input. Its transpose, which JAX derives,
then runs the backward scan with ``dE_t = dpre_t`` as an output, and after it

    dW = sum_t z_t^T dpre_t = Z^T dE,

a single matmul (``row_products.matmul_tn``). The tangent scan is JAX's own JVP of
the step at the saved carries; in it ``project`` returns the saved ``pre_t``
(``_replay``), so ``z_t W`` is not recomputed, and passes on the tangent
``dz W + dpre``. Every piece is a JVP rule or plain JAX, so the scan composes
with forward and reverse mode at any order, ``vmap``, ``jit`` and ``checkpoint``.
The rule's primal is a plain ``lax.scan``: derivatives of the derivative (second
order) differentiate it as JAX does, correct but with the per-step accumulator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from fsl_jax.models.cpu.row_products import matmul

# cell(carry, x_t, consts, project) -> (carry', y_t), calling project(z) = z @ W once.
Cell = Callable[[Any, Any, Any, Callable[[jax.Array], jax.Array]], tuple[Any, Any]]


@jax.custom_jvp
def _replay(z: jax.Array, z_saved: jax.Array, pre: jax.Array, weight: jax.Array) -> jax.Array:
  """``pre`` saved from ``z_saved @ weight``, standing for ``z @ weight`` where z == z_saved.

  The value and the JVP are those of ``pre + (z - z_saved) @ weight`` at
  z == z_saved: ``dpre + (dz - dz_saved) @ weight``, so the product is not
  recomputed, and the derivative is exact at every order (the saved z's tangent
  cancels the part of ``dpre`` that came through it).
  """
  del z, z_saved, weight
  return pre


def _replay_jvp(primals, tangents):
  z, z_saved, pre, weight = primals
  dz, dz_saved, dpre, _ = tangents  # (z - z_saved) dW vanishes at z == z_saved.
  terms = [t for t in (dpre,) if not isinstance(t, SymbolicZero)]
  for sign, t in ((1, dz), (-1, dz_saved)):
    if not isinstance(t, SymbolicZero):
      # t W as one dot contracting z's last axis with W's rows.
      terms.append(sign * jax.lax.dot_general(t, weight, (((t.ndim - 1,), (0,)), ((), ()))))
  out = _replay(z, z_saved, pre, weight)
  return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


_replay.defjvp(_replay_jvp, symbolic_zeros=True)


def _scan(cell: Cell, weight, consts, carry, xs, length: int, reverse: bool):
  """``lax.scan`` of ``cell``, also returning every step's carry, z and z @ W."""

  def step(carry, x):
    saved = []

    def project(z):
      saved.append((z, z @ weight))
      return saved[0][1]

    new_carry, y = cell(carry, x, consts, project)
    (z, pre) = saved[0]
    return new_carry, (y, carry, z, pre)

  final, (ys, carries, zs, pres) = jax.lax.scan(step, carry, xs, length=length, reverse=reverse)
  return (final, ys), (carries, zs, pres)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 5, 6))
def weight_tied_scan(
  cell: Cell, weight: jax.Array, consts, carry, xs, length: int, reverse: bool = False
):
  """``lax.scan`` of ``cell`` over ``xs`` (or ``length`` steps when ``xs`` is None).

  Args:
    cell: ``(carry, x_t, consts, project) -> (carry', y_t)``. ``project(z)`` is
      ``z @ weight`` and must be called exactly once per step; ``weight`` must not
      be used otherwise (pass other arrays the step needs, and wants derivatives
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
  return _scan(cell, weight, consts, carry, xs, length, reverse)[0]


@weight_tied_scan.defjvp
def _weight_tied_scan_jvp(cell, length, reverse, primals, tangents):
  weight, consts, carry, xs = primals
  d_weight, d_consts, d_carry, d_xs = tangents
  outputs, (carries, zs, pres) = _scan(cell, weight, consts, carry, xs, length, reverse)
  # The weight's tangent for every step at once, E_t = z_t dW: [T, ..., D_out].
  e = matmul(zs.reshape(-1, zs.shape[-1]), d_weight).reshape(pres.shape)

  def tangent_step(d_carry, inputs):
    carry_t, x_t, z_t, pre_t, e_t, d_x_t = inputs

    def step(carry, x, consts, pre):
      return cell(carry, x, consts, lambda z: _replay(z, z_t, pre, weight))

    primals_t, tangents_t = (carry_t, x_t, consts, pre_t), (d_carry, d_x_t, d_consts, e_t)
    return jax.jvp(step, primals_t, tangents_t)[1]

  inputs = (carries, xs, zs, pres, e, d_xs)
  d_outputs = jax.lax.scan(tangent_step, d_carry, inputs, length=length, reverse=reverse)
  return outputs, d_outputs
