"""MAML: meta-gradients proven against finite differences and an independent unrolled loop."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from fsl_jax.algorithms import maml
from fsl_jax.data.episodes import Episode
from fsl_jax.models.cpu.conv4 import CpuConv4
from fsl_jax.state import create_train_state
from fsl_jax.steps import make_train_step

N_WAY, K_SHOT, N_QUERY = 3, 2, 2
MODEL = CpuConv4(filters=3, num_blocks=2, num_outputs=N_WAY, conv_impl="im2col")


def make_episode(seed: int) -> Episode:
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
  return Episode(
    support=images(N_WAY * K_SHOT),
    support_labels=np.repeat(np.arange(N_WAY, dtype=np.int32), K_SHOT),
    query=images(N_WAY * N_QUERY),
    query_labels=np.repeat(np.arange(N_WAY, dtype=np.int32), N_QUERY),
  )


def init(dtype=jnp.float32):
  variables = MODEL.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1), jnp.uint8), train=False)
  cast = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)
  return cast(variables["params"]), cast(variables["batch_stats"])


@functools.cache
def jitted_meta_loss(settings: maml.MamlSettings):
  """One compiled meta-loss per settings (and dtype); episodes are arguments, not constants."""

  def loss(meta_params, batch_stats, episode):
    value, _ = maml.episode_loss(
      MODEL, meta_params, batch_stats, episode, settings=settings, train=True
    )
    return value

  return jax.jit(loss)


def meta_loss_fn(settings, batch_stats, episode):
  return lambda meta_params: jitted_meta_loss(settings)(meta_params, batch_stats, episode)


def logits(params, batch_stats, images):
  variables = {"params": params, "batch_stats": batch_stats}
  return MODEL.apply(variables, images, train=True, mutable=["batch_stats"])[0]


def unrolled_meta_loss(params, batch_stats, episode, inner_lr, steps, first_order):
  """An independent MAML: a Python loop of explicit gradient steps, no scan."""
  support_loss = lambda p: maml.cross_entropy(
    logits(p, batch_stats, episode.support), episode.support_labels
  )
  fast = params
  for _ in range(steps):
    grads = jax.grad(support_loss)(fast)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    fast = jax.tree.map(lambda p, g: p - inner_lr * g, fast, grads)
  return maml.cross_entropy(logits(fast, batch_stats, episode.query), episode.query_labels)


def assert_trees_close(a, b, rtol, atol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_second_order_meta_gradient_matches_central_finite_differences():
  episode = make_episode(0)
  settings = maml.MamlSettings(inner_lr=0.3, inner_steps=2)
  with jax.enable_x64(True):
    params, stats = init(jnp.float64)
    loss = jax.jit(meta_loss_fn(settings, stats, episode))
    grads = jax.grad(loss)({"model": params})["model"]
    flat, unravel = ravel_pytree(params)
    flat_grads, _ = ravel_pytree(grads)
    eps = 1e-6
    for i in np.random.default_rng(0).choice(flat.size, size=15, replace=False):
      bump = jnp.zeros_like(flat).at[i].set(eps)
      numeric = (loss({"model": unravel(flat + bump)}) - loss({"model": unravel(flat - bump)})) / (
        2 * eps
      )
      np.testing.assert_allclose(flat_grads[i], numeric, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_scan_matches_an_independent_python_loop(first_order):
  episode = make_episode(1)
  settings = maml.MamlSettings(inner_lr=0.3, inner_steps=3, first_order=first_order)
  with jax.enable_x64(True):
    params, stats = init(jnp.float64)
    scan_grads = jax.jit(jax.grad(meta_loss_fn(settings, stats, episode)))({"model": params})
    loop_grad = jax.jit(jax.grad(unrolled_meta_loss), static_argnums=(3, 4, 5))
    loop_grads = loop_grad(params, stats, episode, 0.3, 3, first_order)
    assert_trees_close(scan_grads["model"], loop_grads, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_first_order_gradient_is_the_query_gradient_at_the_adapted_params():
  episode = make_episode(2)
  settings = maml.MamlSettings(inner_lr=0.3, inner_steps=2, first_order=True)
  with jax.enable_x64(True):
    params, stats = init(jnp.float64)
    meta_grads = jax.grad(meta_loss_fn(settings, stats, episode))({"model": params})["model"]
    support_loss = lambda p: maml.cross_entropy(
      logits(p, stats, episode.support), episode.support_labels
    )
    rates = jax.tree.map(lambda p: jnp.asarray(0.3, p.dtype), params)
    adapted, _ = maml.inner_adapt(support_loss, params, rates, 2, first_order=True)
    query_grads = jax.grad(
      lambda p: maml.cross_entropy(logits(p, stats, episode.query), episode.query_labels)
    )(adapted)
    assert_trees_close(meta_grads, query_grads, rtol=1e-10, atol=1e-12)
    # And it differs from second order, so the switch does something.
    second = jax.grad(
      meta_loss_fn(dataclasses.replace(settings, first_order=False), stats, episode)
    )
    difference = jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))), second({"model": params})["model"], meta_grads
    )
    assert max(jax.tree.leaves(difference)) > 1e-6


def test_zero_inner_steps_is_the_plain_query_loss_gradient():
  episode = make_episode(3)
  settings = maml.MamlSettings(inner_steps=0)
  with jax.enable_x64(True):
    params, stats = init(jnp.float64)
    meta_grads = jax.grad(meta_loss_fn(settings, stats, episode))({"model": params})["model"]
    plain = jax.grad(
      lambda p: maml.cross_entropy(logits(p, stats, episode.query), episode.query_labels)
    )(params)
    assert_trees_close(meta_grads, plain, rtol=1e-10, atol=1e-12)


def test_remat_and_unroll_give_the_same_second_order_gradients():
  """In float64, so that XLA's different fusions of the four graphs round alike."""
  with jax.enable_x64():
    episode = make_episode(4)
    params, stats = init(jnp.float64)
    grads = [
      jax.jit(
        jax.grad(
          meta_loss_fn(
            maml.MamlSettings(inner_lr=0.3, inner_steps=3, remat=r, unroll=u),
            stats,
            episode,
          )
        )
      )({"model": params})
      for r, u in ((False, False), (True, False), (False, True), (True, True))
    ]
  for other in grads[1:]:
    assert_trees_close(grads[0], other, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_remat_keeps_second_order_memory_flat():
  """XLA's scratch memory for the meta-gradient: grows with steps, unless remat."""
  episode = make_episode(5)
  params, stats = init()

  def temp_bytes(steps, remat):
    # Rolled, as remat keeps it (with remat, unroll is ignored).
    settings = maml.MamlSettings(inner_lr=0.3, inner_steps=steps, remat=remat, unroll=False)
    grad_fn = jax.jit(jax.grad(meta_loss_fn(settings, stats, episode)))
    compiled = grad_fn.lower({"model": params}).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  plain = [temp_bytes(s, False) for s in (2, 8)]
  remat = [temp_bytes(s, True) for s in (2, 8)]
  assert plain[1] > 2 * plain[0]  # Stored activations of every step.
  assert remat[1] < 1.5 * remat[0]  # Flat: only the params of each step.


@pytest.mark.slow
def test_meta_batch_gradient_is_the_mean_of_per_task_gradients():
  settings = maml.MamlSettings(inner_lr=0.3, inner_steps=2)
  episodes = [make_episode(10 + i) for i in range(4)]
  batch = Episode(*(np.stack(parts) for parts in zip(*episodes, strict=True)))

  def loss_fn(params, batch_stats, episode, rng, *, n_way, train, step):
    return maml.episode_loss(
      MODEL, params, batch_stats, episode, settings=settings, train=train, step=step
    )

  tx = optax.sgd(1.0)
  state = create_train_state(
    MODEL, tx, jnp.zeros((2, 8, 8, 1), jnp.uint8), 0, lambda p: maml.init_meta_params(p, settings)
  )
  old_params = jax.tree.map(jnp.copy, state.params)
  new_state, _ = make_train_step(loss_fn, tx, N_WAY)(state, batch)
  used = jax.tree.map(lambda old, new: old - new, old_params, new_state.params)
  per_task = [
    jax.grad(meta_loss_fn(settings, new_state.batch_stats, e))(old_params) for e in episodes
  ]
  mean = jax.tree.map(lambda *g: sum(g) / len(g), *per_task)
  assert_trees_close(used, mean, rtol=1e-4, atol=1e-5)


def test_meta_sgd_learns_per_parameter_inner_rates():
  episode = make_episode(6)
  params, stats = init()
  settings = maml.MamlSettings(inner_lr=0.3, inner_steps=2, meta_sgd=True)
  meta = maml.init_meta_params(params, settings)
  assert set(meta) == {"model", "inner_lr"}
  # Initialised at inner_lr, Meta-SGD computes the same loss as MAML.
  plain = maml.MamlSettings(inner_lr=0.3, inner_steps=2)
  np.testing.assert_allclose(
    meta_loss_fn(settings, stats, episode)(meta),
    meta_loss_fn(plain, stats, episode)({"model": params}),
    rtol=1e-6,
  )
  grads = jax.grad(meta_loss_fn(settings, stats, episode))(meta)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["inner_lr"]))


def test_anil_adapts_only_the_head():
  episode = make_episode(7)
  params, stats = init()
  settings = maml.MamlSettings(inner_lr=0.3, inner_steps=2, anil=True)
  rates = maml.inner_learning_rates({"model": params}, settings)
  support_loss = lambda p: maml.cross_entropy(
    logits(p, stats, episode.support), episode.support_labels
  )
  adapted, _ = maml.inner_adapt(support_loss, params, rates, 2, first_order=False)
  for name in params:
    moved = any(
      bool(jnp.any(a != b))
      for a, b in zip(*map(jax.tree.leaves, (adapted[name], params[name])), strict=True)
    )
    assert moved == (name == "head"), name


@pytest.mark.slow
@pytest.mark.parametrize("first_order", [False, True])
def test_anil_meta_gradient_equals_adapting_everything_at_zero_body_rate(first_order):
  """ANIL's head-only inner loop gives the meta-gradient of the full inner loop whose
  body rates are 0, to float rounding, at both orders and with the multi-step loss."""
  episode = make_episode(11)
  with jax.enable_x64():
    params, stats = init(jnp.float64)
    settings = maml.MamlSettings(
      inner_lr=0.3, inner_steps=2, anil=True, first_order=first_order, multi_step_loss=True
    )

    def full_inner_loop(meta_params):  # Every parameter adapted, the body at rate 0.
      support_loss = lambda p: maml.cross_entropy(
        logits(p, stats, episode.support), episode.support_labels
      )
      query_loss = lambda p: maml.cross_entropy(
        logits(p, stats, episode.query), episode.query_labels
      )
      rates = maml.inner_learning_rates(meta_params, settings)
      _, losses = maml.inner_adapt(
        support_loss, meta_params["model"], rates, 2, first_order, per_step_fn=query_loss
      )
      return jnp.sum(maml.multi_step_weights(2, 3, settings.msl_anneal_steps) * losses)

    anil = lambda meta_params: maml.episode_loss(
      MODEL, meta_params, stats, episode, settings=settings, train=True, step=3
    )[0]
    meta = {"model": params}
    np.testing.assert_allclose(anil(meta), full_inner_loop(meta), rtol=1e-12)
    want, got = jax.grad(full_inner_loop)(meta), jax.grad(anil)(meta)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)
    assert float(jnp.abs(got["model"]["Conv3x3_0"]["kernel"]).max()) > 0  # The body learns.


def test_anil_takes_no_inner_gradient_of_the_body():
  """The inner loop differentiates the support loss with respect to the head alone."""
  episode = make_episode(12)
  params, stats = init()
  settings = maml.MamlSettings(inner_lr=0.3, inner_steps=1, anil=True)
  loss = lambda meta: maml.episode_loss(MODEL, meta, stats, episode, settings=settings, train=True)[
    0
  ]
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))({"model": params}))
  # Adapting everything would transpose both convolutions' products in the inner
  # gradient and again in the meta-gradient; head-only adaptation transposes fewer.
  everything = dataclasses.replace(settings, anil=False)
  loss_all = lambda meta: maml.episode_loss(
    MODEL, meta, stats, episode, settings=everything, train=True
  )[0]
  count = lambda text: text.count("row_product")
  assert count(jaxpr) < count(str(jax.make_jaxpr(jax.grad(loss_all))({"model": params})))


def test_multi_step_loss_weights_anneal_to_the_last_step():
  np.testing.assert_allclose(maml.multi_step_weights(4, 0, 100), [0.25] * 4)
  np.testing.assert_allclose(maml.multi_step_weights(4, 50, 100), [0.125] * 3 + [0.625])
  np.testing.assert_allclose(maml.multi_step_weights(4, 500, 100), [0, 0, 0, 1])
  episode = make_episode(8)
  params, stats = init()
  msl = maml.MamlSettings(inner_lr=0.3, inner_steps=3, multi_step_loss=True, msl_anneal_steps=10)
  plain = maml.MamlSettings(inner_lr=0.3, inner_steps=3)
  annealed, _ = maml.episode_loss(
    MODEL, {"model": params}, stats, episode, settings=msl, train=True, step=10
  )
  early, _ = maml.episode_loss(
    MODEL, {"model": params}, stats, episode, settings=msl, train=True, step=0
  )
  final, _ = maml.episode_loss(MODEL, {"model": params}, stats, episode, settings=plain, train=True)
  np.testing.assert_allclose(annealed, final, rtol=1e-6)
  assert abs(float(early) - float(final)) > 1e-4


def test_evaluation_uses_test_inner_steps():
  episode = make_episode(9)
  params, stats = init()
  settings = maml.MamlSettings(inner_lr=0.3, inner_steps=1, test_inner_steps=3)
  evaluated, _ = maml.episode_loss(
    MODEL, {"model": params}, stats, episode, settings=settings, train=False
  )
  three = maml.MamlSettings(inner_lr=0.3, inner_steps=3)
  trained_three, _ = maml.episode_loss(
    MODEL, {"model": params}, stats, episode, settings=three, train=True
  )
  np.testing.assert_allclose(evaluated, trained_three, rtol=1e-6)
