"""weight_tied_scan: lax.scan's values and gradients, with dW computed after the scan."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.models.recurrence import weight_tied_scan


def cell(carry, x, consts, project):
  """A small RNN with every kind of input: carry, per-step x, consts and the weight."""
  h, total = carry
  scale, bias = consts
  pre = project(jnp.concatenate([h, jnp.sin(h) * scale], -1))  # z depends on carry and consts.
  h = jnp.tanh(pre + bias + (0.0 if x is None else x))
  return (h, total + jnp.sum(h**2)), (None if x is None else h * x)


def plain_scan(weight, consts, carry, xs, length, reverse):
  def step(carry, x):
    return cell(carry, x, consts, lambda z: z @ weight)

  return jax.lax.scan(step, carry, xs, length=length, reverse=reverse)


@pytest.mark.parametrize("reverse, with_xs", [(False, True), (True, False)])
def test_values_and_gradients_match_lax_scan_to_second_order_under_vmap(reverse, with_xs):
  rng = np.random.default_rng(int(reverse) + 2 * int(with_xs))
  t, rows, d = 4, 3, 5
  with jax.enable_x64():
    weight = jnp.asarray(rng.normal(size=(2 * d, d)) / 3)
    consts = (jnp.asarray(rng.normal(size=(d,))), jnp.asarray(rng.normal(size=(d,))))
    h0 = jnp.asarray(rng.normal(size=(2, rows, d)))  # [vmap, rows, D]
    xs = jnp.asarray(rng.normal(size=(2, t, rows, d))) if with_xs else None

    def loss(scan):
      def one(weight, consts, h0, xs):
        (h, total), ys = scan(weight, consts, (h0, jnp.zeros(())), xs, t, reverse)
        return jnp.sum(jnp.cos(h)) + total + (0.0 if ys is None else jnp.sum(ys**3))

      return lambda weight, consts, h0, xs: jnp.sum(
        jax.vmap(one, in_axes=(None, None, 0, 0 if with_xs else None))(weight, consts, h0, xs)
      )

    def second_order(scan):
      def outer(weight, consts, h0, xs):
        g = jax.grad(loss(scan))(weight, consts, h0, xs)
        return loss(scan)(weight - 0.1 * g, consts, h0, xs)

      return outer

    tied = lambda *args: weight_tied_scan(cell, *args[:4], args[4], args[5])
    args = (weight, consts, h0, xs)
    np.testing.assert_allclose(loss(tied)(*args), loss(plain_scan)(*args), rtol=1e-12)
    for fn in (loss, second_order):
      argnums = (0, 1, 2, 3) if with_xs else (0, 1, 2)
      want = jax.jit(jax.grad(fn(plain_scan), argnums))(*args)
      got = jax.jit(jax.grad(fn(tied), argnums))(*args)
      for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def scan_carry_shapes(fn, *args) -> list[tuple[int, ...]]:
  """The shapes of every scan's carry in ``fn``'s jaxpr, nested jaxprs included."""
  shapes = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "scan":
        consts, carry = eqn.params["num_consts"], eqn.params["num_carry"]
        shapes.extend(v.aval.shape for v in eqn.invars[consts : consts + carry])
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return shapes


def test_weight_gradient_is_one_matmul_after_the_backward_scan():
  """No [D_in, D_out] accumulator is carried through the backward loop, as in lax.scan's."""
  d = 7
  weight, h0 = jnp.ones((2 * d, d)) / d, jnp.ones((2, d))

  def loss(scan):
    def fn(weight):
      (h, _), _ = scan(weight, (1.0, 0.0), (h0, jnp.zeros(())), None, 5, False)
      return jnp.sum(h)

    return fn

  tied = lambda *args: weight_tied_scan(cell, *args[:4], args[4], args[5])
  assert weight.shape in scan_carry_shapes(jax.grad(loss(plain_scan)), weight)
  assert weight.shape not in scan_carry_shapes(jax.grad(loss(tied)), weight)


def test_forward_mode_and_hessian_vector_products_match_lax_scan():
  """jvp, forward over reverse and reverse over forward, against plain lax.scan, under vmap."""
  rng = np.random.default_rng(7)
  t, rows, d = 3, 2, 4
  with jax.enable_x64():
    weight = jnp.asarray(rng.normal(size=(2 * d, d)) / 3)
    consts = (jnp.asarray(rng.normal(size=(d,))), jnp.asarray(rng.normal(size=(d,))))
    h0 = jnp.asarray(rng.normal(size=(rows, d)))
    xs = jnp.asarray(rng.normal(size=(t, rows, d)))
    direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), (weight, consts))

    def loss(scan):
      def fn(params, h0):
        weight, consts = params
        (h, total), ys = scan(weight, consts, (h0, jnp.zeros(())), xs, t, False)
        return jnp.sum(jnp.cos(h)) + total + jnp.sum(ys**3)

      return fn

    tied = lambda *args: weight_tied_scan(cell, *args[:4], args[4], args[5])
    params = (weight, consts)
    for transform in (
      lambda f: jax.jvp(lambda p: f(p, h0), (params,), (direction,))[1],
      lambda f: jax.jvp(jax.grad(lambda p: f(p, h0)), (params,), (direction,))[1],
      lambda f: jax.grad(lambda p: jax.jvp(lambda q: f(q, h0), (p,), (direction,))[1])(params),
      lambda f: jax.vmap(jax.grad(f, argnums=1), (None, 0))(params, jnp.stack([h0, -h0])),
    ):
      want, got = (jax.jit(lambda s=s, t=transform: t(loss(s)))() for s in (plain_scan, tied))
      for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
