"""iMAML: the implicit meta-gradient proven against a closed form, an unrolled loop and a dense solve."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures_omniglot import on_small_split
from jax.flatten_util import ravel_pytree

from fsl_jax.algorithms import imaml, maml
from fsl_jax.algorithms.inner_optimizers import make_inner_optimizer, minimize
from fsl_jax.data.episodes import Episode
from fsl_jax.errors import ConfigError
from fsl_jax.models.cpu.conv4 import CpuConv4

LAM = 2.0


def linear_problem(seed=0, m=12, d=5):
  """A linear model on fixed features: L(phi) = ||A phi - b||^2 / (2m), train and test."""
  rng = np.random.default_rng(seed)
  a, c = rng.normal(size=(m, d)), rng.normal(size=(m, d))
  b, e = rng.normal(size=m), rng.normal(size=m)
  train = lambda phi: 0.5 * jnp.mean((a @ phi["w"] - b) ** 2)
  test = lambda phi: 0.5 * jnp.mean((c @ phi["w"] - e) ** 2)
  theta = {"w": jnp.asarray(rng.normal(size=d))}
  return a, b, c, e, train, test, theta


def closed_form_meta_gradient(a, b, c, e, theta, lam):
  """phi* = (A^T A/m + lam I)^-1 (A^T b/m + lam theta); g = lam (A^T A/m + lam I)^-1 grad L_test(phi*)."""
  m, d = a.shape
  system = a.T @ a / m + lam * np.eye(d)
  phi = np.linalg.solve(system, a.T @ b / m + lam * np.asarray(theta["w"]))
  grad_test = c.T @ (c @ phi - e) / m
  return phi, lam * np.linalg.solve(system, grad_test)


def implicit_meta_loss(train, test, settings, num_steps, inner_lr):
  def meta_loss(theta):
    phi = imaml.implicit_adapt(
      train, theta, settings=settings, inner_lr=inner_lr, num_steps=num_steps
    )
    return test(phi)

  return meta_loss


# Exact: damping 0, and CG steps = dimension (CG is exact in d steps on a d x d SPD system).
EXACT = imaml.ImamlSettings(lam=LAM, cg_steps=5, cg_damping=0.0, inner_optimizer="sgd")


def test_implicit_meta_gradient_equals_the_closed_form_and_many_unrolled_steps():
  with jax.enable_x64(True):
    a, b, c, e, train, test, theta = linear_problem()
    phi_closed, g_closed = closed_form_meta_gradient(a, b, c, e, theta, LAM)
    # The inner solve converges: 2000 steps of GD at lr 0.2 on a lam-strongly convex loss.
    meta_loss = implicit_meta_loss(train, test, EXACT, num_steps=2000, inner_lr=0.2)
    phi = imaml.implicit_adapt(train, theta, settings=EXACT, inner_lr=0.2, num_steps=2000)
    np.testing.assert_allclose(phi["w"], phi_closed, rtol=1e-10)
    g_implicit = jax.jit(jax.grad(meta_loss))(theta)["w"]
    np.testing.assert_allclose(g_implicit, g_closed, rtol=1e-9)

    # Second-order MAML through 2000 unrolled steps of the same regularised inner loss.
    def unrolled(theta):
      regularised = lambda phi: train(phi) + 0.5 * LAM * jnp.sum((phi["w"] - theta["w"]) ** 2)
      rates = jax.tree.map(lambda x: 0.2, theta)
      phi, _ = maml.inner_adapt(regularised, theta, rates, 2000, first_order=False)
      return test(phi)

    g_unrolled = jax.jit(jax.grad(unrolled))(theta)["w"]
    np.testing.assert_allclose(g_implicit, g_unrolled, rtol=1e-5)
    # And the first-order implicit gradient is not it: the test can tell them apart.
    first_order = lambda t: test(
      imaml.implicit_adapt(train, t, settings=EXACT, inner_lr=0.2, num_steps=2000, first_order=True)
    )
    g_first = jax.grad(first_order)(theta)["w"]
    np.testing.assert_allclose(g_first, c.T @ (c @ phi_closed - e) / len(e), rtol=1e-9)
    assert not np.allclose(g_first, g_closed, rtol=1e-2)


def test_forward_mode_vmap_and_jit_compose_with_the_implicit_gradient():
  with jax.enable_x64(True):
    a, b, c, e, train, test, theta = linear_problem(seed=1)
    meta_loss = implicit_meta_loss(train, test, EXACT, num_steps=2000, inner_lr=0.2)
    v = {"w": jnp.linspace(-1.0, 1.0, 5)}
    _, jvp = jax.jvp(meta_loss, (theta,), (v,))
    grad = jax.grad(meta_loss)(theta)
    np.testing.assert_allclose(jvp, jnp.vdot(grad["w"], v["w"]), rtol=1e-10)
    # Forward-over-reverse through the implicit derivative: a Hessian-vector product
    # against central differences of the gradient.
    hvp = jax.jvp(jax.grad(meta_loss), (theta,), (v,))[1]["w"]
    h = 1e-5
    shifted = lambda s: jax.grad(meta_loss)({"w": theta["w"] + s * h * v["w"]})["w"]
    np.testing.assert_allclose(hvp, (shifted(1) - shifted(-1)) / (2 * h), rtol=1e-5, atol=1e-9)
    # vmap over a batch of meta-parameters equals a loop.
    thetas = {"w": jnp.stack([theta["w"], theta["w"] + 0.3, theta["w"] - 0.7])}
    batched = jax.jit(jax.vmap(jax.grad(meta_loss)))(thetas)["w"]
    for i in range(3):
      expected = closed_form_meta_gradient(a, b, c, e, {"w": thetas["w"][i]}, LAM)[1]
      np.testing.assert_allclose(batched[i], expected, rtol=1e-9)


def test_the_inner_optimiser_is_any_optax_optimiser_and_is_not_differentiated():
  """With Adam the meta-gradient is the implicit formula at the point Adam returns.

  It depends on that point alone, not on the optimiser's path: lambda (A^T A/m +
  lambda I)^-1 grad L_test(phi_adam).
  """
  with jax.enable_x64(True):
    a, b, c, e, train, test, theta = linear_problem(seed=2)
    adam = dataclasses.replace(EXACT, inner_optimizer="adam")
    phi = imaml.implicit_adapt(train, theta, settings=adam, inner_lr=0.01, num_steps=500)["w"]
    phi_closed = closed_form_meta_gradient(a, b, c, e, theta, LAM)[0]
    np.testing.assert_allclose(phi, phi_closed, atol=0.05)  # Adam ends near phi*, not on it.
    g_adam = jax.grad(implicit_meta_loss(train, test, adam, 500, 0.01))(theta)["w"]
    m, d = a.shape
    expected = LAM * np.linalg.solve(a.T @ a / m + LAM * np.eye(d), c.T @ (c @ phi - e) / m)
    np.testing.assert_allclose(g_adam, expected, rtol=1e-9)
    with pytest.raises(ConfigError, match="inner optimiser"):
      make_inner_optimizer("rmsprop", 0.1)


def test_cg_damping_solves_the_damped_system():
  """delta > 0: g = ((1 + delta) I + H / lambda)^-1 grad L_test(phi*), H = A^T A / m."""
  with jax.enable_x64(True):
    a, b, c, e, train, test, theta = linear_problem(seed=3)
    damped = dataclasses.replace(EXACT, cg_damping=0.5)
    g = jax.grad(implicit_meta_loss(train, test, damped, 2000, 0.2))(theta)["w"]
    phi, _ = closed_form_meta_gradient(a, b, c, e, theta, LAM)
    m, d = a.shape
    system = 1.5 * np.eye(d) + a.T @ a / m / LAM
    np.testing.assert_allclose(g, np.linalg.solve(system, c.T @ (c @ phi - e) / m), rtol=1e-9)


def test_minimize_is_plain_gradient_descent_with_sgd():
  with jax.enable_x64(True):
    loss = lambda p: jnp.sum((p - 3.0) ** 2)
    phi = minimize(
      lambda p, s: jax.grad(loss)(p), jnp.zeros(2), make_inner_optimizer("sgd", 0.1), 3
    )
    expected = jnp.zeros(2)
    for _ in range(3):
      expected = expected - 0.1 * jax.grad(loss)(expected)
    np.testing.assert_allclose(phi, expected, rtol=1e-14)


N_WAY = 2
TINY = CpuConv4(filters=4, num_blocks=2, num_outputs=N_WAY, conv_impl="im2col", downsample="stride")


def tiny_episode(seed=0) -> Episode:
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
  return Episode(
    support=images(2 * N_WAY),
    support_labels=np.repeat(np.arange(N_WAY, dtype=np.int32), 2),
    query=images(3 * N_WAY),
    query_labels=np.repeat(np.arange(N_WAY, dtype=np.int32), 3),
  )


@pytest.mark.slow
def test_cg_on_a_tiny_conv4_agrees_with_a_dense_solve():
  """grad_theta L_test(phi*) = (I + H / lambda)^-1 grad L_test(phi*), with H dense."""
  lam, damping = 2.0, 0.0
  with jax.enable_x64(True):
    variables = TINY.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1), jnp.uint8), train=False)
    theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables["params"])
    # Batch norm makes the loss invariant to each kernel's scale, so H w = -grad L along
    # w: curvature -|grad L| / |w|, strongly negative for small initial kernels. Larger
    # kernels keep I + H / lambda positive definite, CG's premise (checked below).
    theta = {
      name: {k: v * 5.0 if k == "kernel" and name != "head" else v for k, v in sub.items()}
      for name, sub in theta.items()
    }
    stats = variables["batch_stats"]
    episode = tiny_episode()
    flat_theta, unravel = ravel_pytree(theta)
    n = flat_theta.size
    imaml_settings = imaml.ImamlSettings(lam=lam, cg_steps=60, cg_damping=damping)
    settings = maml.MamlSettings(
      inner_lr=0.1, inner_steps=20, meta_gradient="implicit", imaml=imaml_settings, unroll=False
    )

    def apply(params, images):
      variables = {"params": params, "batch_stats": stats}
      return TINY.apply(variables, images, train=True, mutable=["batch_stats"])[0]

    support = lambda p: maml.cross_entropy(apply(p, episode.support), episode.support_labels)
    query = lambda p: maml.cross_entropy(apply(p, episode.query), episode.query_labels)
    meta_loss = lambda t: maml.episode_loss(
      TINY, {"model": t}, stats, episode, settings=settings, train=True
    )[0]
    g_cg = ravel_pytree(jax.jit(jax.grad(meta_loss))(theta))[0]

    adapt = lambda t: imaml.implicit_adapt(
      support, t, settings=imaml_settings, inner_lr=0.1, num_steps=20
    )
    phi = jax.jit(adapt)(theta)
    flat_phi = ravel_pytree(phi)[0]
    hessian = jax.jit(jax.hessian(lambda f: support(unravel(f))))(flat_phi)
    system = (1.0 + damping) * np.eye(n) + hessian / lam
    eigenvalues = np.linalg.eigvalsh(system)
    assert eigenvalues.min() > 0.1, eigenvalues[:3]  # CG's premise: the system is SPD.
    g_test = ravel_pytree(jax.grad(query)(phi))[0]
    g_dense = np.linalg.solve(system, g_test)
    assert n > 100
    np.testing.assert_allclose(g_cg, g_dense, rtol=1e-6, atol=1e-10)
    # Not the first-order gradient: the Hessian term matters here.
    assert np.abs(g_dense - g_test / (1.0 + damping)).max() > 1e-3 * np.abs(g_dense).max()


def test_implicit_settings_that_have_no_implicit_gradient_are_config_errors():
  for switch in ("meta_sgd", "multi_step_loss"):
    with pytest.raises(ConfigError, match=rf"config\.maml\.{switch}=False"):
      maml.MamlSettings(meta_gradient="implicit", **{switch: True})
  with pytest.raises(ConfigError, match=r"config\.maml\.meta_gradient"):
    maml.MamlSettings(meta_gradient="implict")


@pytest.mark.slow
def test_imaml_trains_with_one_compile_per_step_function(
  tmp_path, omniglot_small_data_dir, omniglot_manual_dir
):
  from test_train_end_to_end import compiled_once, run_recording_steps

  from configs import imaml_omniglot5w1s

  config = on_small_split(
    imaml_omniglot5w1s.get_config("quick"), omniglot_small_data_dir, omniglot_manual_dir
  )
  config.maml.inner_steps = config.maml.test_inner_steps = 2
  config.model.filters, config.model.num_blocks = 8, 2  # Compiles faster; the count is tested.
  results, steps = run_recording_steps(config, tmp_path)
  assert compiled_once(steps)
  assert results["config"]["maml"]["meta_gradient"] == "implicit"
  assert results["test"]["episodes"] == 20
