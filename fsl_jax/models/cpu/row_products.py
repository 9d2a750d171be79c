"""Three matrix products closed under differentiation, for convolutions as matmuls.

With ``a`` [N, K], ``b`` [K, M] and ``g`` [N, M] (N is the long pixel axis):

    matmul(a, b)    = a b        [N, M]
    matmul_tn(a, g) = a^T g      [K, M]   (contracts the N rows of both)
    matmul_nt(g, b) = g b^T      [N, K]

Each is bilinear, so its JVP is the same product of a tangent and a primal,
``d(a b) = da b + a db``, and its transposes, with ``h`` the cotangent, are two
products of the same family:

    matmul:     da = matmul_nt(h, b),   db = matmul_tn(a, h)
    matmul_tn:  da = matmul_nt(g, h),   dg = matmul(a, h)
    matmul_nt:  dg = matmul(h, b),      db = matmul_tn(h, g)

so every derivative of every order, forward or reverse, under ``vmap`` too, is
one of these three forms, and XLA:CPU runs each as one matmul on the operands as
they lie. ``lax.dot_general``'s own transposes compute ``a^T g`` as ``(g^T a)^T``
and ``g b^T`` as ``(b g^T)^T``; differentiated again (second-order MAML), XLA:CPU
then writes [N, M]-sized cotangents in a transposed layout, one copy per product.

The three products are one JAX primitive, ``row_product``, with the rules above:
a JVP rule linear in the tangents, a transpose rule and a batching rule, exactly
as ``lax.dot_general`` is defined. JAX's ``custom_jvp`` cannot express this: it
transposes a JVP rule with ``dot_general``'s own transposes. Leading batch axes
(``vmap``) are batch dimensions of the one ``dot_general`` each product lowers to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

FORMS = ("nn", "tn", "nt")


def _dimension_numbers(form: str, batch: int):
  """``dot_general`` dimension numbers of ``form`` after ``batch`` leading batch axes."""
  rows, cols = batch, batch + 1
  contract = {"nn": ((cols,), (rows,)), "tn": ((rows,), (rows,)), "nt": ((cols,), (cols,))}
  batch_axes = tuple(range(batch))
  return contract[form], (batch_axes, batch_axes)


def _impl(x, y, *, form: str, batch: int):
  return jax.lax.dot_general(x, y, _dimension_numbers(form, batch))


row_product_p = Primitive("row_product")
row_product_p.def_impl(_impl)


def _abstract_eval(x, y, *, form: str, batch: int):
  """[*B, N, K] x [*B, K, M] (nn), [*B, N, K] x [*B, N, M] (tn), [*B, N, M] x [*B, K, M] (nt)."""
  rows = {"nn": x.shape[-2], "tn": x.shape[-1], "nt": x.shape[-2]}[form]
  cols = {"nn": y.shape[-1], "tn": y.shape[-1], "nt": y.shape[-2]}[form]
  return ShapedArray((*x.shape[:batch], rows, cols), jnp.result_type(x.dtype, y.dtype))


row_product_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(row_product_p, mlir.lower_fun(_impl, multiple_results=False))


def _product(form: str, x: jax.Array, y: jax.Array, batch: int) -> jax.Array:
  return row_product_p.bind(x, y, form=form, batch=batch)


# The transposes: (cotangent h, the other operand) -> the cotangent of one operand.
_TRANSPOSE_LHS = {  # x is the linear operand; y is known.
  "nn": lambda h, y, batch: _product("nt", h, y, batch),
  "tn": lambda h, y, batch: _product("nt", y, h, batch),
  "nt": lambda h, y, batch: _product("nn", h, y, batch),
}
_TRANSPOSE_RHS = {  # y is the linear operand; x is known.
  "nn": lambda h, x, batch: _product("tn", x, h, batch),
  "tn": lambda h, x, batch: _product("nn", x, h, batch),
  "nt": lambda h, x, batch: _product("tn", h, x, batch),
}


def _transpose_lhs(h, x, y, *, form, batch):
  del x
  return _TRANSPOSE_LHS[form](ad.instantiate_zeros(h), y, batch)


def _transpose_rhs(h, x, y, *, form, batch):
  del y
  return _TRANSPOSE_RHS[form](ad.instantiate_zeros(h), x, batch)


ad.defbilinear(row_product_p, _transpose_lhs, _transpose_rhs)


def _batching_rule(operands, batch_dims, *, form, batch):
  """A mapped axis of the row operand alone (``x`` of "nn" and "nt": shared weights
  under ``vmap``) is folded into its rows, N -> V*N, as ``vmap`` of ``a @ b`` does.
  Otherwise it becomes one more leading batch axis of both operands, an unmapped
  operand broadcast along it."""
  (x, y), (x_dim, y_dim) = operands, batch_dims
  if y_dim is None and form != "tn" and batch == 0:
    x = jnp.moveaxis(x, x_dim, 0)
    out = _product(form, x.reshape(-1, x.shape[-1]), y, 0)
    return out.reshape(*x.shape[:2], out.shape[-1]), 0
  size = x.shape[x_dim] if x_dim is not None else y.shape[y_dim]
  x, y = (
    jnp.broadcast_to(o, (size, *o.shape)) if d is None else jnp.moveaxis(o, d, 0)
    for o, d in ((x, x_dim), (y, y_dim))
  )
  return _product(form, x, y, batch + 1), 0


batching.primitive_batchers[row_product_p] = _batching_rule


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b``: [N, K] x [K, M] -> [N, M]."""
  return _product("nn", a, b, 0)


def matmul_tn(a: jax.Array, g: jax.Array) -> jax.Array:
  """``a.T @ g``: [N, K] x [N, M] -> [K, M], contracting the rows in place."""
  return _product("tn", a, g, 0)


def matmul_nt(g: jax.Array, b: jax.Array) -> jax.Array:
  """``g @ b.T``: [N, M] x [K, M] -> [N, K]."""
  return _product("nt", g, b, 0)
