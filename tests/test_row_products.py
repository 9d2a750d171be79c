"""row_products: values and derivatives to second order, and the forms of every product."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models.cpu.row_products import _dimension_numbers, matmul, matmul_nt, matmul_tn

PLAIN = {
  matmul: lambda a, b: a @ b,
  matmul_tn: lambda a, g: a.T @ g,
  matmul_nt: lambda g, b: g @ b.T,
}
SHAPES = {matmul: ((7, 3), (3, 5)), matmul_tn: ((7, 3), (7, 5)), matmul_nt: ((7, 5), (3, 5))}


def _meta(product):
  """Per-task loss after one gradient step on both operands, summed over tasks (vmap)."""

  def loss(a, b):
    return jnp.sum(jnp.sin(product(a, b)) ** 2)

  def outer(a, b):
    ga, gb = jax.grad(loss, (0, 1))(a, b)
    return loss(a - 0.1 * ga, b - 0.1 * gb)

  return lambda a, b: jnp.sum(jax.vmap(outer)(a, b))


@pytest.mark.slow
def test_values_and_derivatives_to_second_order_match_plain_products():
  rng = np.random.default_rng(0)
  with jax.enable_x64():
    for product, plain in PLAIN.items():
      a, b = (jnp.asarray(rng.normal(size=(2, *s))) for s in SHAPES[product])
      np.testing.assert_allclose(jax.vmap(product)(a, b), jax.vmap(plain)(a, b), rtol=1e-13)
      want = jax.jit(jax.grad(_meta(plain), (0, 1)))(a, b)
      got = jax.jit(jax.grad(_meta(product), (0, 1)))(a, b)
      for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
      # Forward over reverse, reverse over forward, and forward over forward.
      hvp = lambda f, a=a, b=b: jax.jvp(jax.grad(f, (0, 1)), (a, b), (jnp.cos(a), jnp.sin(b)))
      for w, g in zip(hvp(_meta(plain))[1], hvp(_meta(product))[1], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
      directional = lambda f, a, b: jax.jvp(f, (a, b), (jnp.cos(a), jnp.sin(b)))[1]
      for f in (jax.grad(directional, (1, 2)), jax.jacfwd(directional, (1, 2))):
        for w, g in zip(f(_meta(plain), a, b), f(_meta(product), a, b), strict=True):
          np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def _contractions(jaxpr):
  """The (lhs, rhs) contracting dims of every dot_general, through nested jaxprs."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("dot_general", "row_product"):
      if eqn.primitive.name == "row_product":
        contract, batch = _dimension_numbers(eqn.params["form"], eqn.params["batch"])
      else:
        contract, batch = eqn.params["dimension_numbers"]
      # Under vmap the batch axis is leading: compare the per-task dims.
      shift = len(batch[0])
      found.append(tuple(tuple(d - shift for d in side) for side in contract))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _contractions(sub)
  return found


def test_every_product_of_a_second_order_gradient_is_one_of_the_three_forms():
  """The forms XLA:CPU runs without a transposed copy: a @ b, a^T g and g b^T."""
  a, b = jnp.ones((2, 7, 3)), jnp.ones((2, 3, 5))
  jaxpr = jax.make_jaxpr(jax.grad(_meta(matmul), (0, 1)))(a, b).jaxpr
  contractions = _contractions(jaxpr)
  assert set(contractions) == {((1,), (0,)), ((0,), (0,)), ((1,), (1,))}
  # Forward over reverse (a Hessian-vector product of the meta-loss) stays in the family too.
  hvp = lambda a, b: jax.jvp(jax.grad(_meta(matmul), (0, 1)), (a, b), (a, b))[1]
  assert set(_contractions(jax.make_jaxpr(hvp)(a, b).jaxpr)) == set(contractions)
  # Plain autodiff of a @ b makes other forms; this is what the check above can catch.
  plain = _contractions(jax.make_jaxpr(jax.grad(_meta(PLAIN[matmul]), (0, 1)))(a, b).jaxpr)
  assert not set(plain) <= {((1,), (0,)), ((0,), (0,)), ((1,), (1,))}
