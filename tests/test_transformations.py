"""Every JAX transformation composes through every model path, in float64.

A path is a scalar loss ``f(p, data)`` of the params flattened to a vector p [n]
(``PATHS``): conv-4 in each formulation (the reference ``Conv4``; ``CpuConv4``
with XLA's convolution, im2col, or Winograd behind the grayscale ``image_conv``),
with and without MAML's head, max-pooled and strided, grayscale and colour; and
the episode losses of ProtoNets, Matching Networks without and with Full Context
Embeddings, and MAML, first and second order, through its inner loop. With
g = grad f, H its Jacobian, unit directions u, v [n] and step e, the independent
references are central differences,

    f'(p) v ~ (f(p + e v) - f(p - e v)) / 2e,    H(p) v ~ (g(p + e v) - g(p - e v)) / 2e,

and the checks are:

1. ``jax.jvp`` of f equals g . v (and g . v its central difference).
2. H v [n] by forward over reverse, reverse over forward and reverse over
   reverse equals the central difference of g, and the first two equal the third;
   forward over forward gives u^T H v, equal to u . (H v) and to v^T H u.
3. On the model paths, ``jax.hessian`` (jacfwd of jacrev) of f with respect to k
   params, one per leaf of the params pytree, [k, k], equals central differences
   of g and is symmetric; jacfwd of the output [B * D] with respect to the same
   params equals jacrev and central differences.
4. Everything runs under ``jax.jit`` and ``jax.vmap``: 1 and 2 over two pairs
   (data_i, v_i) of an image batch or episode and a direction, 3 over two image
   batches (and jacfwd and jacrev map over basis directions themselves). One path
   is also differentiated through ``jax.checkpoint`` of its loss.

First-order MAML puts ``stop_gradient`` on the inner gradients, so autodiff gives
the derivatives at p0 of ``L_query(p + theta_S(p0) - p0)``, the adaptation step
theta_S(p0) - p0 held at p0; its central differences are taken of that function,
written out with its own inner loop.

Winograd runs only where ``winograd.winograd_pays``. Its thresholds are lowered
here (while tracing) so that on these small shapes a grayscale image layer goes
through ``image_conv`` and every other stride-1 layer through ``winograd_conv``
(``test_each_path_runs_the_convolutions_it_names``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from configs import maml_omniglot5w1s, matching_omniglot5w1s, proto_omniglot5w1s
from fsl_jax.algorithms import make_algorithm, maml
from fsl_jax.data.episodes import Episode
from fsl_jax.models.conv4 import Conv4
from fsl_jax.models.cpu import conv4 as cpu_conv4
from fsl_jax.models.cpu import winograd
from fsl_jax.models.cpu.conv4 import CpuConv4

EPS = 1e-5  # Central-difference step along a unit direction.
# Tolerances relative to the largest entry of the reference. The errors seen are
# about 1e-9 against central differences and 1e-14 (rounding) between compositions.
FD_RTOL = 1e-6
AD_RTOL = 1e-11
BATCH, SIDE, FILTERS = 6, 8, 4  # Images [B, 8, 8, C] for the model paths; F filters.
N_WAY, K_SHOT, N_QUERY = 3, 2, 2  # Episodes of the algorithm paths, grayscale 8x8.


class ModelPath(NamedTuple):
  impl: str | None  # None: the reference Conv4; else CpuConv4's conv_impl.
  channels: int
  downsample: str
  head: bool  # MAML's linear head, 5 outputs.


MODEL_PATHS = {
  "conv4-max_pool": ModelPath(None, 1, "max_pool", False),
  "conv4-stride-head-rgb": ModelPath(None, 3, "stride", True),
  "xla-max_pool-head": ModelPath("xla", 1, "max_pool", True),
  "im2col-max_pool-head": ModelPath("im2col", 1, "max_pool", True),
  "im2col-stride-rgb": ModelPath("im2col", 3, "stride", False),
  "winograd-max_pool": ModelPath("winograd", 1, "max_pool", False),  # image_conv, then Winograd.
}


class AlgorithmPath(NamedTuple):
  config: Callable[[], Any]  # A quick config, before the model is shrunk.
  impl: str  # config.model.conv_impl; "xla" is the reference Conv4.
  downsample: str = "max_pool"
  maml: tuple = ()  # (key, value) overrides of config.maml.


def maml_config():
  return maml_omniglot5w1s.get_config("quick")


# The backbones' formulations are the model paths' concern, so the algorithm paths
# use the reference Conv4 (conv_impl "xla"), the cheapest to compile, except for
# second-order MAML, which keeps im2col, its formulation on CPU. "matching-fce" is
# MatchingEmbedding(Conv4(...), fce=True, lstm_layers=1, unrolling_steps=2).
ALGORITHM_PATHS = {
  "protonet": AlgorithmPath(lambda: proto_omniglot5w1s.get_config("quick"), "xla"),
  "matching": AlgorithmPath(lambda: matching_omniglot5w1s.get_config("quick"), "xla"),
  "matching-fce": AlgorithmPath(lambda: matching_omniglot5w1s.get_config("quick,fce"), "xla"),
  "maml-first_order": AlgorithmPath(maml_config, "xla", maml=(("first_order", True),)),
  "maml-second_order": AlgorithmPath(maml_config, "im2col", "stride"),
}
PATHS = [*MODEL_PATHS, *ALGORITHM_PATHS]
CHECKPOINT_PATH = "im2col-max_pool-head"  # Also differentiated through jax.checkpoint(f).


def uses_winograd(name: str) -> bool:
  spec = MODEL_PATHS.get(name) or ALGORITHM_PATHS[name]
  return spec.impl == "winograd"


@contextlib.contextmanager
def path_context(name: str):
  """float64, and for Winograd paths thresholds low enough that Winograd runs on 8x8 images.

  At least 2 input channels, so that a grayscale image layer keeps ``image_conv``.
  """
  with jax.enable_x64(True), pytest.MonkeyPatch.context() as patch:
    if uses_winograd(name):
      patch.setattr(winograd, "WINOGRAD_MIN_CHANNELS", 2)
      patch.setattr(winograd, "WINOGRAD_MIN_TILES", 1)
    yield


@dataclasses.dataclass(frozen=True)
class Case:
  """A path's loss and the point, directions and data at which it is differentiated."""

  name: str
  loss: Callable  # (p [n], data) -> scalar.
  fd_loss: Callable | None  # (p, p0, data) -> scalar whose derivatives at p0 are the loss's.
  output: Callable | None  # (p, data) -> [m], the model's output (model paths).
  p0: np.ndarray  # [n]
  data: tuple  # Two batches of images, or two episodes.
  subset: np.ndarray  # [k] indices into p, one per leaf of the params pytree.
  directions: np.ndarray  # [2, n], unit rows: v_i goes with data[i].
  u: np.ndarray  # [n], unit.

  @property
  def stacked_data(self):
    return stack(*self.data)


def stack(*trees):
  """Pytrees of arrays -> one pytree of arrays with a new leading axis."""
  return jax.tree.map(lambda *x: np.stack(x), *trees)


def as_float64(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def random_episode(rng: np.random.Generator) -> Episode:
  images = lambda n: rng.integers(0, 256, (n, SIDE, SIDE, 1), dtype=np.uint8)
  return Episode(
    support=images(N_WAY * K_SHOT),
    support_labels=np.repeat(np.arange(N_WAY, dtype=np.int32), K_SHOT),
    query=images(N_WAY * N_QUERY),
    query_labels=np.repeat(np.arange(N_WAY, dtype=np.int32), N_QUERY),
  )


def finish_case(name, rng, params, loss, data, fd_loss=None, output=None) -> Case:
  """Moves p0 off the initialisation (generic, no zero biases) and draws the directions."""
  flat, _ = ravel_pytree(params)
  p0 = np.asarray(flat) + 0.05 * rng.normal(size=flat.shape)
  sizes = [leaf.size for leaf in jax.tree.leaves(params)]
  starts = np.cumsum([0, *sizes[:-1]])
  subset = np.array([s + rng.integers(n) for s, n in zip(starts, sizes, strict=True)])
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  directions = unit(rng.normal(size=(len(data), p0.size)))
  u = unit(rng.normal(size=p0.size))
  return Case(name, loss, fd_loss, output, p0, data, subset, directions, u)


def build_model_case(name: str, spec: ModelPath, rng: np.random.Generator) -> Case:
  common = dict(
    filters=FILTERS,
    num_blocks=2,
    downsample=spec.downsample,
    num_outputs=5 if spec.head else None,
  )
  model = Conv4(**common) if spec.impl is None else CpuConv4(conv_impl=spec.impl, **common)
  images = tuple(
    rng.integers(0, 256, (BATCH, SIDE, SIDE, spec.channels), dtype=np.uint8) for _ in range(2)
  )
  variables = jit(functools.partial(model.init, train=True))(jax.random.PRNGKey(0), images[0])
  params, batch_stats = as_float64(variables["params"]), as_float64(variables["batch_stats"])
  unravel = ravel_pytree(params)[1]

  def output(p, x):
    variables = {"params": unravel(p), "batch_stats": batch_stats}
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return out.reshape(-1)  # [B * D]

  def loss(p, x):  # Cross-entropy towards output 0: smooth, and curved in the output.
    out = output(p, x).reshape(x.shape[0], -1)
    return jnp.mean(jax.nn.logsumexp(out, axis=-1) - out[:, 0])

  return finish_case(name, rng, params, loss, images, output=output)


def build_algorithm_case(name: str, spec: AlgorithmPath, rng: np.random.Generator) -> Case:
  config = spec.config()
  config.model.filters, config.model.num_blocks = FILTERS, 2
  config.model.conv_impl, config.model.downsample = spec.impl, spec.downsample
  config.train.n_way = config.eval.n_way = N_WAY
  if config.algorithm == "maml":
    config.maml.update(dict(spec.maml))
  model, algorithm = make_algorithm(config)
  episodes = (random_episode(rng), random_episode(rng))
  images = np.concatenate([episodes[0].support, episodes[0].query])
  variables = jit(functools.partial(model.init, train=True))(jax.random.PRNGKey(0), images)
  params = algorithm.init_params(as_float64(variables["params"]))
  batch_stats = as_float64(variables["batch_stats"])
  unravel = ravel_pytree(params)[1]

  def loss(p, episode):
    value, _ = algorithm.loss(
      unravel(p), batch_stats, episode, None, n_way=N_WAY, train=True, step=0
    )
    return value

  fd_loss = None
  if config.algorithm == "maml" and config.maml.first_order:

    def fd_loss(p, p0, episode):
      """L_query(theta + theta_S(theta_0) - theta_0): theta_S by an independent inner loop."""

      def logits(theta, images):
        variables = {"params": theta, "batch_stats": batch_stats}
        return model.apply(variables, images, train=True, mutable=["batch_stats"])[0]

      support_loss = lambda theta: maml.cross_entropy(
        logits(theta, episode.support), episode.support_labels
      )
      theta0 = unravel(p0)["model"]
      fast = theta0
      for _ in range(config.maml.inner_steps):
        step = jax.grad(support_loss)(fast)
        fast = jax.tree.map(lambda a, g: a - config.maml.inner_lr * g, fast, step)
      adapted = jax.tree.map(lambda t, f, t0: t + (f - t0), unravel(p)["model"], fast, theta0)
      return maml.cross_entropy(logits(adapted, episode.query), episode.query_labels)

  return finish_case(name, rng, params, loss, episodes, fd_loss=fd_loss)


@functools.cache
def build_case(name: str) -> Case:
  """Built once per path, inside its ``path_context``."""
  rng = np.random.default_rng(PATHS.index(name))
  if name in MODEL_PATHS:
    return build_model_case(name, MODEL_PATHS[name], rng)
  return build_algorithm_case(name, ALGORITHM_PATHS[name], rng)


@pytest.fixture
def case(request) -> Case:
  """The Case of the path ``request.param``; the test runs in the path's context."""
  with path_context(request.param):
    yield build_case(request.param)


# Each maps a loss f(p, data) to a function of (p, data, directions...).
def jvp(f):
  return lambda p, d, v: jax.jvp(lambda q: f(q, d), (p,), (v,))[1]


def hvp_forward_over_reverse(f):
  return lambda p, d, v: jax.jvp(lambda q: jax.grad(f)(q, d), (p,), (v,))[1]


def hvp_reverse_over_forward(f):
  return lambda p, d, v: jax.grad(lambda q: jvp(f)(q, d, v))(p)


def hvp_reverse_over_reverse(f):
  return lambda p, d, v: jax.grad(lambda q: jnp.vdot(jax.grad(f)(q, d), v))(p)


def uhv_forward_over_forward(f):
  """u^T H v: the derivative along u of the derivative along v."""
  return lambda p, d, v, u: jax.jvp(lambda q: jvp(f)(q, d, v), (p,), (u,))[1]


HVPS = {
  "forward_over_reverse": hvp_forward_over_reverse,
  "reverse_over_forward": hvp_reverse_over_forward,
  "reverse_over_reverse": hvp_reverse_over_reverse,
}


def on_subset(f, subset):
  """f as a function of z = p[subset]: (z [k], p, data) -> f(p with p[subset] = z, data)."""
  return lambda z, p, d: f(p.at[subset].set(z), d)


OVER_PAIRS = (None, 0, 0)  # (p, data, v): pairs (data_i, v_i), stacked.
OVER_DATA = (None, None, 0)  # (z, p, data): the two image batches or episodes.
TRANSFORMS = {
  # name: (transformation of the Case, vmap in_axes or None).
  "loss": (lambda case: case.loss, None),
  "grad": (lambda case: jax.grad(case.loss), None),
  "fd_loss": (lambda case: case.fd_loss, None),
  "fd_grad": (lambda case: jax.grad(case.fd_loss), None),
  "output": (lambda case: case.output, None),
  "jvp": (lambda case: jvp(case.loss), OVER_PAIRS),
  **{name: (lambda case, t=t: t(case.loss), OVER_PAIRS) for name, t in HVPS.items()},
  **{
    f"checkpointed_{name}": (lambda case, t=t: t(jax.checkpoint(case.loss)), OVER_PAIRS)
    for name, t in HVPS.items()
  },
  "uhv": (lambda case: uhv_forward_over_forward(case.loss), (None, 0, 0, 0)),  # (p, d, v, u).
  "hessian": (lambda case: jax.hessian(on_subset(case.loss, case.subset)), OVER_DATA),
  "jacfwd_output": (lambda case: jax.jacfwd(on_subset(case.output, case.subset)), OVER_DATA),
  "jacrev_output": (lambda case: jax.jacrev(on_subset(case.output, case.subset)), OVER_DATA),
}
# These programs are small and run a few times, so compiling them is nearly all the
# cost. XLA:CPU's cheapest code generation compiles them several times faster, and
# code generation does not change what the transformations compute.
FAST_CPU_COMPILE = {
  "xla_backend_optimization_level": 0,
  "xla_cpu_use_fusion_emitters": False,
  "xla_llvm_disable_expensive_passes": True,
}


def jit(fn):
  options = FAST_CPU_COMPILE if jax.default_backend() == "cpu" else None
  return jax.jit(fn, compiler_options=options)


@functools.cache
def compiled(name: str, what: str) -> Callable:
  """The jitted (and vmapped, see TRANSFORMS) transformation ``what`` of path ``name``.

  One function object per (path, transformation), so that each compiles once.
  """
  transform, in_axes = TRANSFORMS[what]
  fn = transform(build_case(name))
  return jit(fn if in_axes is None else jax.vmap(fn, in_axes))


def central_difference(fn, p0, direction, *args):
  plus, minus = fn(p0 + EPS * direction, *args), fn(p0 - EPS * direction, *args)
  return (np.asarray(plus) - np.asarray(minus)) / (2 * EPS)


def fd_functions(case: Case):
  """(f, g) of (p, data) whose central differences at p0 autodiff must match."""
  if case.fd_loss is None:
    return compiled(case.name, "loss"), compiled(case.name, "grad")
  fd_loss, fd_grad = compiled(case.name, "fd_loss"), compiled(case.name, "fd_grad")
  return (lambda p, d: fd_loss(p, case.p0, d)), (lambda p, d: fd_grad(p, case.p0, d))


@functools.cache
def references(name: str) -> dict[str, np.ndarray]:
  """Per pair (data_i, v_i): g . v_i by reverse mode [2], and the central differences
  of f [2] and of g [2, n] along v_i; |g| bounds the slopes."""
  case = build_case(name)
  fd_f, fd_g = fd_functions(case)
  grad = compiled(name, "grad")
  pairs = list(zip(case.data, case.directions, strict=True))
  grads = np.stack([grad(case.p0, d) for d in case.data])
  return {
    "grad_dot_v": np.einsum("in,in->i", grads, case.directions),
    "grad_norm": np.max(np.linalg.norm(grads, axis=-1)),
    "fd_slope": np.array([central_difference(fd_f, case.p0, v, d) for d, v in pairs]),
    "fd_hvp": np.stack([central_difference(fd_g, case.p0, v, d) for d, v in pairs]),
  }


def assert_close(actual, expected, rtol, scale=None):
  """|actual - expected| <= rtol * scale elementwise; scale defaults to max |expected| > 0."""
  expected = np.asarray(expected)
  scale = np.max(np.abs(expected)) if scale is None else scale
  assert scale > 0, "the reference is zero: the check would be vacuous"
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("case", PATHS, indirect=True)
def test_jvp_equals_grad_dot_v(case):
  ref = references(case.name)
  scale = ref["grad_norm"]  # |g . v| <= |g| for a unit v.
  assert_close(ref["grad_dot_v"], ref["fd_slope"], FD_RTOL, scale)  # The references agree.
  slopes = compiled(case.name, "jvp")(case.p0, case.stacked_data, case.directions)  # [2]
  assert_close(slopes, ref["grad_dot_v"], AD_RTOL, scale)


@pytest.mark.parametrize("composition", list(HVPS))
@pytest.mark.parametrize("case", PATHS, indirect=True)
def test_hessian_vector_product(case, composition):
  args = (case.p0, case.stacked_data, case.directions)
  hvps = compiled(case.name, composition)(*args)  # [2, n]
  assert_close(hvps, references(case.name)["fd_hvp"], FD_RTOL)
  if composition != "reverse_over_reverse":
    assert_close(hvps, compiled(case.name, "reverse_over_reverse")(*args), AD_RTOL)


@pytest.mark.parametrize("case", PATHS, indirect=True)
def test_forward_over_forward_gives_u_hessian_v(case):
  ref = references(case.name)
  (d0, d1), (v0, v1), u = case.data, case.directions, case.u
  # u^T H v for (data_0, v_0, u), (data_1, v_1, u), and (data_0, u, v_0): the first
  # differentiated in the other order.
  triples = [stack(*x) for x in ((d0, d1, d0), (v0, v1, u), (u, u, v0))]
  uhv = compiled(case.name, "uhv")(case.p0, *triples)  # [3]
  scale = np.max(np.linalg.norm(ref["fd_hvp"], axis=-1))  # |u^T H v| <= |H v| for a unit u.
  assert_close(uhv[:2], ref["fd_hvp"] @ u, FD_RTOL, scale)
  assert_close(uhv[2], uhv[0], AD_RTOL, scale)


def subset_central_differences(fn, case: Case, data) -> np.ndarray:
  """[k, ...]: row i the central difference of fn(p, data) along p[subset[i]]."""
  rows = []
  for i in case.subset:
    e_i = np.zeros_like(case.p0)
    e_i[i] = 1.0
    rows.append(central_difference(fn, case.p0, e_i, data))
  return np.stack(rows)


@pytest.mark.parametrize("case", list(MODEL_PATHS), indirect=True)
def test_hessian_of_a_param_subset(case):
  """jax.hessian (jacfwd of jacrev) on k params, one per leaf, mapped over two batches.

  The model paths only: the algorithms' Hessians are checked through H v.
  """
  hessians = compiled(case.name, "hessian")(case.p0[case.subset], case.p0, case.stacked_data)
  _, fd_g = fd_functions(case)
  for hessian, data in zip(hessians, case.data, strict=True):  # [k, k] each.
    assert_close(hessian, subset_central_differences(fd_g, case, data)[:, case.subset], FD_RTOL)
    # Forward mode differentiated reverse mode's gradient: H symmetric if they agree.
    assert_close(hessian, hessian.T, AD_RTOL)


@pytest.mark.parametrize("case", list(MODEL_PATHS), indirect=True)
def test_jacfwd_equals_jacrev_of_the_model_output(case):
  """The output [B * D] on k params, one per leaf, mapped over two batches."""
  args = (case.p0[case.subset], case.p0, case.stacked_data)
  reverse = compiled(case.name, "jacrev_output")(*args)  # [2, B * D, k]
  output = compiled(case.name, "output")
  for jacobian, data in zip(reverse, case.data, strict=True):
    assert_close(jacobian, subset_central_differences(output, case, data).T, FD_RTOL)
  forward = compiled(case.name, "jacfwd_output")(*args)
  assert_close(forward, reverse, AD_RTOL)


@pytest.mark.parametrize("composition", list(HVPS))
@pytest.mark.parametrize("case", [CHECKPOINT_PATH], indirect=True)
def test_hessian_vector_product_through_checkpoint(case, composition):
  """H v of jax.checkpoint(f), whose backward pass recomputes the forward pass."""
  args = (case.p0, case.stacked_data, case.directions)
  hvps = compiled(case.name, f"checkpointed_{composition}")(*args)
  assert_close(hvps, references(case.name)["fd_hvp"], FD_RTOL)


CONVOLUTIONS = ("image_conv", "winograd_conv", "im2col_conv")


@pytest.mark.parametrize(
  "name, expected",
  [
    ("winograd-max_pool", {"image_conv": 1, "winograd_conv": 1}),
    ("im2col-stride-rgb", {"im2col_conv": 2}),
    ("maml-second_order", {"im2col_conv": 4}),  # The support set's pass, then the query's.
    ("matching-fce", {}),  # The reference Conv4.
  ],
)
def test_each_path_runs_the_convolutions_it_names(name, expected, monkeypatch):
  """The convolutions that the loss calls, counted while tracing it."""
  calls = collections.Counter()

  def counting(conv, original):
    def counted(*args):
      calls[conv] += 1
      return original(*args)

    return counted

  with path_context(name):
    case = build_case(name)
    for conv in CONVOLUTIONS:
      monkeypatch.setattr(cpu_conv4, conv, counting(conv, getattr(cpu_conv4, conv)))
    jax.make_jaxpr(lambda p, d: case.loss(p, d))(case.p0, case.data[0])
  assert calls == collections.Counter(expected)
