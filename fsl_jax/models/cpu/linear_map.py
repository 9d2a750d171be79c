"""A linear map with a hand-written transpose, as a JAX primitive.

Winograd's input, kernel and output transforms are linear maps of arrays. JAX
differentiates each forward form correctly, but the transpose it derives is made
of the forward's adjoint op by op (pads, scatters and adds of strided slices),
where a hand-written adjoint can be one interleave. ``linear_map(f, f_t)`` keeps
both:

* the value is ``f(*xs)``;
* the JVP is ``f(*dxs)`` (``f`` is linear), so forward mode, and any order of
  differentiation, go through the same map;
* the transpose is ``f_t(*cts)``, whose own transpose is ``f`` again, so reverse
  mode, reverse over reverse and forward over reverse all use the hand-written
  adjoint;
* under ``vmap`` both maps are ``vmap``ped.

``f`` and ``f_t`` must be linear and adjoint: ``<f(x), y> = <x, f_t(y)>`` for
every x and y (tests check this). ``lax.custom_jvp`` cannot express a custom
transpose, and ``jax.custom_vjp`` blocks forward mode; this is the primitive
pattern JAX's own linear operations are built on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

linear_map_p = Primitive("linear_map")
linear_map_p.multiple_results = True


def _impl(*xs, forward, transpose):
  del transpose
  return forward(*xs)


def _abstract_eval(*xs, forward, transpose):
  del transpose
  return [jax.core.ShapedArray(o.shape, o.dtype) for o in jax.eval_shape(forward, *xs)]


def _transpose_rule(cts, *xs, forward, transpose):
  del xs  # All linear: the transpose needs only the cotangents.
  cts = [ad.instantiate_zeros(ct) for ct in cts]
  return linear_map_p.bind(*cts, forward=transpose, transpose=forward)


def _batching_rule(xs, dims, *, forward, transpose):
  size = next(x.shape[d] for x, d in zip(xs, dims, strict=True) if d is not None)
  xs = [
    jnp.broadcast_to(x, (size, *x.shape)) if d is None else jnp.moveaxis(x, d, 0)
    for x, d in zip(xs, dims, strict=True)
  ]
  out = linear_map_p.bind(*xs, forward=jax.vmap(forward), transpose=jax.vmap(transpose))
  return out, [0] * len(out)


linear_map_p.def_impl(_impl)
linear_map_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(linear_map_p, mlir.lower_fun(_impl, multiple_results=True))
ad.deflinear2(linear_map_p, _transpose_rule)
batching.primitive_batchers[linear_map_p] = _batching_rule


def linear_map(forward: Callable[..., Any], transpose: Callable[..., Any], *xs: Any) -> Any:
  """``forward(*xs)``, differentiated as the linear map it is, transposed by ``transpose``.

  Args:
    forward: linear in ``xs`` (pytrees of arrays); returns a pytree of arrays.
    transpose: its adjoint; takes the output pytree's leaves as separate
      arguments in the same order, and returns a pytree with ``xs``'s structure.
    *xs: the inputs.

  Returns:
    ``forward(*xs)``.
  """
  flat_xs, in_tree = jax.tree.flatten(xs)
  out_tree = jax.tree.structure(jax.eval_shape(forward, *xs))

  def flat_forward(*flat):
    return jax.tree.leaves(forward(*jax.tree.unflatten(in_tree, flat)))

  def flat_transpose(*flat_cts):
    return jax.tree.leaves(transpose(*flat_cts))

  out = linear_map_p.bind(*flat_xs, forward=flat_forward, transpose=flat_transpose)
  return jax.tree.unflatten(out_tree, out)
