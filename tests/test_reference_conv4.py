"""The reference ``Conv4`` and ``CpuConv4`` compute the same function on the same variables.

Both models are applied to one set of variables, initialised once: equal outputs
then also show that a checkpoint of either loads into the other. Everything is
compared in float64, where the formulations (lax.conv, im2col, Winograd, the
image layer, the pool-first batch norm) differ only by rounding in a different
order, about 1e-16 relative per operation.

The pool-first batch norm is exact, not an approximation: rounding is monotone,
so ``max_i relu(a * y_i + b) = relu(a * max_i y_i + b)`` holds in floating point
too, and (with the sign of ``a`` folded into y) both forms route every derivative
to the same window element, unless a window holds a tie. The inputs are random
uint8 images and random batch-norm variables (scales of both signs), for which
ties have probability zero (ties at 0 after the ReLU carry no derivative in either
form). What remains is rounding: the two models evaluate batch norm's affine map
and the convolutions' sums in different orders. Hence the tolerance ``RTOL``,
1e-9 relative: orders of magnitude above that rounding, even after batch norm's
division by small standard deviations and the second-order chains, and far below
any real difference (the last test changes one scale by 1e-6 and fails).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsl_jax.models import Conv4, default_conv_impl, make_model
from fsl_jax.models.cpu import conv4 as cpu_conv4
from fsl_jax.models.cpu import winograd
from fsl_jax.models.cpu.conv4 import CpuConv4

RTOL = 1e-9
IMPLS = ("xla", "im2col", "winograd")
# (downsample, image channels): Omniglot-like grayscale and miniImageNet-like colour.
CASES = [("max_pool", 1), ("max_pool", 3), ("stride", 1), ("stride", 3)]
# The image layer's channels change no code path under stride-2 convolutions (always
# im2col or lax.conv), so derivatives skip the colour strided case.
DERIVATIVE_CASES = CASES[:3]
B, SIDE, FILTERS, NUM_BLOCKS, NUM_OUTPUTS = 6, 12, 4, 2, 5


def jit(fn):
  """``jax.jit`` compiling for speed of compilation: each program here runs once, on
  tiny inputs, so LLVM's optimisations and the newer fusion emitters cost more than
  they save. The float64 operations computed are the same."""
  options = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
  }
  return jax.jit(fn, compiler_options=options)


KEY = jax.random.PRNGKey(0)


def init(model, images):
  return jit(functools.partial(model.init, train=False))(KEY, images)


def model_kwargs(downsample: str, channels: int, head: bool) -> dict:
  return dict(
    filters=FILTERS,
    pixel_mean=(0.4, 0.5, 0.6)[:channels],
    pixel_std=(0.2, 0.25, 0.3)[:channels],
    num_outputs=NUM_OUTPUTS if head else None,
    num_blocks=NUM_BLOCKS,
    downsample=downsample,
  )


def assert_trees_close(got, want, rtol: float = RTOL):
  """Leafwise ``|got - want| <= rtol * (|want| + max |want|)``, over identical tree structures.

  The leaf's largest entry sets the absolute scale, so entries near 0 (a gradient
  that nearly cancels) are held to the leaf's precision, not to their own.
  """
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, w), g in zip(
    jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got), strict=True
  ):
    w, g = np.asarray(w), np.asarray(g)
    assert g.shape == w.shape, jax.tree_util.keystr(path)
    scale = float(np.max(np.abs(w))) if w.size else 0.0
    np.testing.assert_allclose(
      g, w, rtol=rtol, atol=rtol * scale, err_msg=jax.tree_util.keystr(path)
    )


def shapes_and_dtypes(tree):
  return jax.tree.map(lambda a: (a.shape, a.dtype), tree)


@functools.cache
def case_data(downsample: str, channels: int, head: bool) -> dict:
  """Inputs, float64 variables and a tangent direction, shared by every test of a case.

  Initialised by the reference model in the default float32 (as flax does), then
  randomised where init is degenerate: batch-norm scales of both signs (the
  pool-first block's ``a < 0`` branch), nonzero biases, and running averages
  that are not (0, 1), so eval mode is a real test.
  """
  rng = np.random.default_rng(2 * CASES.index((downsample, channels)) + head)
  images = jnp.asarray(rng.integers(0, 256, (B, SIDE, SIDE, channels)), jnp.uint8)
  variables = init(Conv4(**model_kwargs(downsample, channels, head)), images)
  with jax.enable_x64():
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    for i in range(NUM_BLOCKS):
      bn, stats = variables["params"][f"BatchNorm_{i}"], variables["batch_stats"][f"BatchNorm_{i}"]
      bn["scale"] = jnp.asarray(rng.choice([-1.0, 1.0], FILTERS) * rng.uniform(0.5, 1.5, FILTERS))
      bn["bias"] = jnp.asarray(rng.normal(0.0, 0.5, FILTERS))
      stats["mean"] = jnp.asarray(rng.normal(0.0, 0.3, FILTERS))
      stats["var"] = jnp.asarray(rng.uniform(0.3, 2.0, FILTERS))
    tangent = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), variables["params"])
    labels = jnp.asarray(rng.integers(0, NUM_OUTPUTS, B))
  return dict(images=images, variables=variables, tangent=tangent, labels=labels)


def loss_fn(model, data):
  """A scalar of the params in training mode (batch statistics): MAML's cross-entropy
  with a head, else a smooth function of the embeddings."""
  images, batch_stats, labels = data["images"], data["variables"]["batch_stats"], data["labels"]

  def loss(params):
    variables = {"params": params, "batch_stats": batch_stats}
    out, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    if model.num_outputs is None:
      return jnp.sum(jnp.sin(3.0 * out) ** 2)
    return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

  return loss


def outputs(model, data):
  """(train outputs, updated batch_stats, eval outputs), jitted."""
  variables, images = data["variables"], data["images"]

  @jit
  def run(variables):
    train_out, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return train_out, updated["batch_stats"], model.apply(variables, images, train=False)

  return run(variables)


def derivatives(model, data, forward_over_reverse: bool):
  """(loss, gradient, Hessian-vector product) of ``loss_fn`` at the params, along ``tangent``.

  Reverse-over-reverse, ``grad(p -> <grad f(p), v>)`` (as second-order MAML
  differentiates through an inner gradient step), or forward-over-reverse,
  ``jvp(grad f, p, v)``; both are ``H v``.
  """
  loss, params, v = loss_fn(model, data), data["variables"]["params"], data["tangent"]
  grad = jax.grad(loss)
  if forward_over_reverse:
    return jit(lambda p, v: (loss(p), *jax.jvp(grad, (p,), (v,))))(params, v)

  def hvp(p, v):
    return jax.grad(lambda p: jax.tree.reduce(jnp.add, jax.tree.map(jnp.vdot, grad(p), v)))(p)

  return jit(lambda p, v: (loss(p), grad(p), hvp(p, v)))(params, v)


@functools.cache
def reference(downsample: str, channels: int, head: bool, quantity: str):
  """The reference model's ``outputs`` or ``derivatives``, computed once per case."""
  model = Conv4(**model_kwargs(downsample, channels, head))
  data = case_data(downsample, channels, head)
  with jax.enable_x64():
    if quantity == "outputs":
      return outputs(model, data)
    return derivatives(model, data, forward_over_reverse=quantity == "forward_over_reverse")


@pytest.fixture
def cpu_model(request, monkeypatch):
  """Builds ``CpuConv4(conv_impl=impl, ...)``. For "winograd", Winograd is forced onto
  these small maps from FILTERS input channels up, so layer 2 is Winograd while the
  image layer keeps its own path (``image_conv`` for one channel, im2col for three),
  and the test checks that those paths were traced."""
  calls = {"winograd_conv": 0, "image_conv": 0}

  def counting(name):
    original = getattr(cpu_conv4, name)

    def wrapper(*args):
      calls[name] += 1
      return original(*args)

    return wrapper

  monkeypatch.setattr(winograd, "WINOGRAD_MIN_CHANNELS", FILTERS)
  monkeypatch.setattr(winograd, "WINOGRAD_MIN_TILES", 1)
  for name in calls:
    monkeypatch.setattr(cpu_conv4, name, counting(name))

  def build(impl: str, downsample: str, channels: int, head: bool) -> CpuConv4:
    return CpuConv4(conv_impl=impl, **model_kwargs(downsample, channels, head))

  yield build
  impl, (downsample, channels) = request.node.funcargs["impl"], request.node.funcargs["case"]
  if impl == "winograd" and downsample == "max_pool":  # Stride-2 layers are never Winograd.
    assert calls["winograd_conv"] > 0
    assert (calls["image_conv"] > 0) == (channels == 1)
  else:
    assert calls == {"winograd_conv": 0, "image_conv": 0}


@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_both_inits_give_the_same_variable_trees(case, head):
  """Same names, shapes and dtypes (float32, as flax creates them): checkpoints interchange."""
  downsample, channels = case
  images = jax.ShapeDtypeStruct((B, SIDE, SIDE, channels), jnp.uint8)
  trees = [
    shapes_and_dtypes(jax.eval_shape(functools.partial(model.init, train=False), KEY, images))
    for model in (
      Conv4(**model_kwargs(downsample, channels, head)),
      CpuConv4(conv_impl="im2col", **model_kwargs(downsample, channels, head)),
    )
  ]
  assert trees[0] == trees[1]
  assert set(trees[0]) == {"params", "batch_stats"}
  assert ("head" in trees[0]["params"]) == head


@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_same_outputs_and_batch_stats_in_train_and_eval_mode(cpu_model, impl, case, head):
  downsample, channels = case
  data = case_data(downsample, channels, head)
  want = reference(downsample, channels, head, "outputs")
  with jax.enable_x64():
    got = outputs(cpu_model(impl, downsample, channels, head), data)
  assert got[0].dtype == jnp.float64
  assert_trees_close(got, want)


@pytest.mark.parametrize("case", DERIVATIVE_CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_same_gradient_and_hessian_vector_product_reverse_over_reverse(cpu_model, impl, case):
  downsample, channels = case
  want = reference(downsample, channels, True, "reverse_over_reverse")
  with jax.enable_x64():
    model = cpu_model(impl, downsample, channels, True)
    got = derivatives(model, case_data(downsample, channels, True), forward_over_reverse=False)
  assert_trees_close(got, want)


@pytest.mark.parametrize("case", DERIVATIVE_CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_same_gradient_and_hessian_vector_product_forward_over_reverse(cpu_model, impl, case):
  downsample, channels = case
  want = reference(downsample, channels, True, "forward_over_reverse")
  # The two second-order modes agree on the reference itself.
  assert_trees_close(want, reference(downsample, channels, True, "reverse_over_reverse"))
  with jax.enable_x64():
    model = cpu_model(impl, downsample, channels, True)
    got = derivatives(model, case_data(downsample, channels, True), forward_over_reverse=True)
  assert_trees_close(got, want)


def config_model(conv_impl: str):
  from configs import common

  config = common.get_base_config().model
  config.filters, config.num_blocks, config.conv_impl = FILTERS, NUM_BLOCKS, conv_impl
  return config


@pytest.mark.parametrize(
  "conv_impl, per_task_weights, tasks_per_chunk, want_class, want_impl",
  [
    ("xla", False, 0, Conv4, None),
    ("xla", True, 0, Conv4, None),
    ("im2col", False, 0, CpuConv4, "im2col"),
    ("winograd", True, 0, CpuConv4, "winograd"),
    ("auto", False, 0, CpuConv4, "winograd"),  # CPU, shared weights (ProtoNets, Matching Nets).
    ("auto", True, 0, CpuConv4, "im2col"),  # CPU, MAML's per-task weights, all tasks in one vmap.
    ("auto", True, 4, CpuConv4, "im2col"),  # ... or 4 at a time.
    ("auto", True, 1, CpuConv4, "winograd"),  # ... one task at a time.
  ],
)
def test_make_model_dispatches_on_conv_impl(
  conv_impl, per_task_weights, tasks_per_chunk, want_class, want_impl
):
  assert jax.default_backend() == "cpu"
  model = make_model(config_model(conv_impl), None, per_task_weights, tasks_per_chunk)
  assert type(model) is want_class
  assert getattr(model, "conv_impl", None) == want_impl
  # Adapted per task, the grayscale image layer is im2col, not image_conv.
  assert getattr(model, "image_conv_layer", not per_task_weights) is not per_task_weights


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_auto_is_the_reference_model_off_the_cpu(monkeypatch, backend):
  for per_task_weights in (False, True):
    assert default_conv_impl(backend, per_task_weights) == "xla"
  assert default_conv_impl("cpu") == "winograd"
  assert default_conv_impl("cpu", per_task_weights=True) == "im2col"
  assert default_conv_impl("cpu", per_task_weights=True, tasks_per_chunk=1) == "winograd"
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  for per_task_weights in (False, True):
    model = make_model(config_model("auto"), per_task_weights=per_task_weights)
    assert type(model) is Conv4


def test_a_perturbed_batch_norm_scale_is_detected():
  """The comparison has teeth: one BN scale changed by 1e-6 relative (1000x the
  tolerance) in the CPU model's copy of the variables fails it, in both modes."""
  downsample, channels, head = "max_pool", 1, True
  data = case_data(downsample, channels, head)
  want = reference(downsample, channels, head, "outputs")
  with jax.enable_x64():
    variables = jax.tree.map(lambda a: a, data["variables"])
    scale = variables["params"]["BatchNorm_1"]["scale"]
    variables["params"]["BatchNorm_1"]["scale"] = scale.at[2].multiply(1.0 + 1e-6)
    model = CpuConv4(conv_impl="im2col", **model_kwargs(downsample, channels, head))
    got = outputs(model, {**data, "variables": variables})
  assert_trees_close(got[1], want[1])  # Batch statistics precede the scale: unchanged.
  for mode in (0, 2):  # Train and eval outputs.
    with pytest.raises(AssertionError):
      assert_trees_close(got[mode], want[mode])
