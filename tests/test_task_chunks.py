"""The meta-batch gradient in chunks of tasks (fsl_jax/task_chunks.py) equals the unchunked one.

Everything is compared in float64 (params, batch statistics and activations), where
the chunked and unchunked results differ by summation order alone: to ~1e-15 of
their scale, checked at 1e-10. Each comparison also checks that it can fail: the
gradients are far from 0, and dropping one task from the mean, or summing the chunk
means instead of averaging them, moves the result by many orders of magnitude more
than the tolerance.

The 8-device checks run in one subprocess (``python tests/test_task_chunks.py
OUT.json`` with XLA_FLAGS=--xla_force_host_platform_device_count=8, which must be
set before JAX starts), as tests/test_sharding.py does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from fsl_jax import task_chunks
from fsl_jax.algorithms import make_algorithm
from fsl_jax.data.episodes import Episode
from fsl_jax.errors import ConfigError
from fsl_jax.state import TrainState
from fsl_jax.steps import make_train_step

ROOT = Path(__file__).resolve().parents[1]
N_WAY, K_SHOT, N_QUERY, SIDE = 3, 2, 2, 8
RTOL = 1e-10


# ---------------------------------------------------------------------------
# Helpers.


def make_episodes(seed: int, count: int) -> Episode:
  """``count`` random 3-way 2-shot episodes of 8x8 images, stacked [T, ...]."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, size=(count, n, SIDE, SIDE, 1), dtype=np.uint8)
  labels = lambda per_class: np.tile(
    np.repeat(np.arange(N_WAY, dtype=np.int32), per_class), (count, 1)
  )
  return Episode(
    support=images(N_WAY * K_SHOT),
    support_labels=labels(K_SHOT),
    query=images(N_WAY * N_QUERY),
    query_labels=labels(N_QUERY),
  )


def tiny_config(kind: str):
  """conv-4 cut to 1 block of 3 filters, 3-way 2-shot episodes, for ``kind`` of algorithm."""
  if kind == "protonet":
    config = common.proto_omniglot(N_WAY, K_SHOT, None)
  elif kind == "matching":
    config = common.matching("omniglot", N_WAY, K_SHOT, None)  # Cosine, without FCE.
  elif kind.startswith("maml") or kind == "imaml":
    config = common.get_base_config()
    common.set_maml(config, inner_lr=0.3, inner_steps=1, test_inner_steps=1, meta_batch_size=4)
    config.maml.first_order = kind == "maml_first_order"
    config.maml.remat = kind == "maml_remat"
    if kind == "imaml":
      common.set_imaml(config, inner_steps=2)
      config.imaml.cg_steps = 2
  elif kind == "reptile":
    config = common.get_base_config()
    common.set_reptile(
      config,
      inner_lr=0.05,
      inner_steps=3,
      test_inner_steps=1,
      inner_batch_size=2,  # Of 6 support images: the episode's rng picks them.
      test_inner_batch_size=1,
      meta_batch_size=4,
      num_steps=10,
    )
  else:
    raise ValueError(kind)
  for section in (config.train, config.eval):
    section.n_way, section.k_shot, section.n_query = N_WAY, K_SHOT, N_QUERY
  # One block of 3 filters: every program here compiles in seconds on 2 CPU cores.
  config.model.filters, config.model.num_blocks = 3, 1
  return config


def as64(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def build(kind: str):
  """(model, Algorithm, float64 params, float64 batch_stats); call under enable_x64."""
  model, algorithm = make_algorithm(tiny_config(kind))
  example = jnp.zeros((N_WAY * K_SHOT, SIDE, SIDE, 1), jnp.uint8)
  variables = jax.jit(model.init, static_argnames="train")(
    jax.random.PRNGKey(0), example, train=False
  )
  params = as64(algorithm.init_params(variables["params"]))
  return model, algorithm, params, as64(variables.get("batch_stats", {}))


def episode_task_loss(algorithm, batch_stats, step=0):
  """(params, (episode, rng)) -> (loss, (metrics, new batch_stats)), as steps.py's."""

  def task_loss(params, task):
    episode, rng = task
    return algorithm.loss(params, batch_stats, episode, rng, n_way=N_WAY, train=True, step=step)

  return task_loss


def leaves(tree):
  """The floating-point leaves as float64 NumPy arrays."""
  return [
    np.asarray(x, np.float64)
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.result_type(x), jnp.floating)
  ]


def scale(tree) -> float:
  return max(float(np.abs(x).max()) for x in leaves(tree))


def assert_trees_close(got, want, rtol=RTOL, what=""):
  """Float leaves within rtol of each value, or of rtol * the tree's largest float
  magnitude; integer leaves equal.

  The absolute part covers entries that are rounding noise around 0 (e.g. ProtoNets'
  last batch-norm bias, whose gradient is exactly 0 mathematically). Float32 leaves
  (the algorithms' accuracies, means of booleans) get float32's rounding, 1e-6.
  """
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  atol = rtol * scale(want)
  flat = jax.tree_util.tree_leaves_with_path(want)
  for (path, w), g in zip(flat, jax.tree.leaves(got), strict=True):
    where = f"{what}{jax.tree_util.keystr(path)}"
    w, g = np.asarray(w), np.asarray(g)
    assert g.dtype == w.dtype and g.shape == w.shape, where
    if not np.issubdtype(w.dtype, np.floating):
      np.testing.assert_array_equal(g, w, err_msg=where)
      continue
    tol = max(rtol, 1e-6) if w.dtype == np.float32 else rtol
    np.testing.assert_allclose(g, w, rtol=tol, atol=atol, err_msg=where)


def max_relative_difference(a, b) -> float:
  """max |a - b| over the float leaves, relative to b's largest float magnitude."""
  differences = [float(np.abs(x - y).max()) for x, y in zip(leaves(a), leaves(b), strict=True)]
  return max(differences) / scale(b)


def per_task_reference(task_loss, params, tasks, count):
  """An independent mean: a Python loop of single-task value_and_grad, averaged in NumPy.

  Returns ((mean loss, mean aux), mean grad) and the list of per-task results.
  """
  one = jax.jit(jax.value_and_grad(task_loss, has_aux=True))
  outputs = [one(params, jax.tree.map(lambda x, i=i: x[i], tasks)) for i in range(count)]
  mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0).astype(xs[0].dtype), *outputs)
  return mean, outputs


def assert_the_comparison_can_fail(per_task_grads, mean_grads):
  """The mean gradient is far from 0, and losing one task, or summing, changes it a lot.

  A chunking bug that drops, repeats or misweights tasks (e.g. dividing the sum of
  C chunk means by 1 rather than C, or a chunk mean by T) moves the gradient by far
  more than RTOL.
  """
  assert scale(mean_grads) > 1e-4
  count = len(per_task_grads)
  without_last = jax.tree.map(lambda *g: np.mean(np.stack(g[:-1]), axis=0), *per_task_grads)
  assert max_relative_difference(without_last, mean_grads) > 1e4 * RTOL
  summed = jax.tree.map(lambda g: count * np.asarray(g), mean_grads)
  assert max_relative_difference(summed, mean_grads) > 0.5


def rngs(count: int, seed: int = 7):
  return jax.random.split(jax.random.PRNGKey(seed), count)


# ---------------------------------------------------------------------------
# 1. Chunked = unchunked = the mean of per-task results, for each algorithm's real loss.


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
  "kind, meta_batch, chunk_sizes, per_task",
  [
    # per_task: also against a Python loop over single tasks (an independent mean).
    ("protonet", 4, (1, 2), True),  # 4 chunks of 1, 2 of 2.
    pytest.param("maml", 4, (1, 2), True, marks=SLOW),  # Second order.
    ("maml_first_order", 4, (2,), False),
    ("matching", 4, (2,), False),  # Without FCE, whose LSTMs cost ~15 s more to compile.
    pytest.param("maml_remat", 4, (2,), False, marks=SLOW),  # 3. jax.checkpoint per inner step.
    pytest.param("imaml", 4, (2,), False, marks=SLOW),  # 3. The implicit (CG) meta-gradient.
  ],
)
def test_chunked_gradient_loss_and_aux_equal_the_unchunked(kind, meta_batch, chunk_sizes, per_task):
  with jax.enable_x64(True):
    _, algorithm, params, stats = build(kind)
    tasks = (make_episodes(len(kind), meta_batch), rngs(meta_batch))
    task_loss = episode_task_loss(algorithm, stats)
    results = {
      chunk: jax.jit(task_chunks.mean_value_and_grad(task_loss, chunk))(params, tasks)
      for chunk in (0, *chunk_sizes)
    }
    want = results[0]
    if per_task:
      reference, outputs = per_task_reference(task_loss, params, tasks, meta_batch)
      assert_trees_close(want, reference, what=f"{kind} unchunked vs the per-task loop: ")
      assert_the_comparison_can_fail([grads for _, grads in outputs], want[1])
      if kind == "protonet":  # Batch statistics differ per task: their mean is checked.
        stats_of = lambda i: outputs[i][0][1][1]
        assert max_relative_difference(stats_of(0), stats_of(1)) > 1e-4
    else:
      assert scale(want[1]) > 1e-4  # Far from 0: a wrong divisor would show.
    (loss, (metrics, _)), grads = want
    assert set(metrics) == {"loss", "accuracy"}
    assert loss.dtype == jnp.float64
    assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(grads))
    for chunk in chunk_sizes:
      assert_trees_close(results[chunk], want, what=f"{kind}, tasks_per_chunk={chunk}: ")


# ---------------------------------------------------------------------------
# 2. Through make_train_step: per-episode rngs line up with their episodes.


def step_inputs(kind: str, meta_batch: int):
  """(Algorithm, SGD, a float64 TrainState, episodes [meta_batch, ...]) for one train step."""
  _, algorithm, params, stats = build(kind)
  tx = optax.sgd(1.0 if kind == "reptile" else 0.5)
  state = TrainState(
    step=jnp.asarray(3, jnp.int32),
    params=params,
    batch_stats=stats,
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(11),
  )
  return algorithm, tx, state, make_episodes(5, meta_batch)


@pytest.mark.slow
def test_a_chunked_reptile_train_step_equals_the_unchunked_one():
  """Reptile draws each task's inner minibatches from the task's rng: a chunking that
  paired episodes with other episodes' rngs would give other params."""
  with jax.enable_x64(True):
    algorithm, tx, state, episodes = step_inputs("reptile", 4)
    results = {}
    for chunk in (0, 2):
      step = make_train_step(algorithm.loss, tx, N_WAY, tasks_per_chunk=chunk)
      results[chunk] = step(jax.tree.map(jnp.copy, state), episodes)
    want_state, want_metrics = results[0]
    got_state, got_metrics = results[2]
    assert int(got_state.step) == 4
    # The whole new state (params, batch statistics, optimiser state, step, rng) and
    # the metrics (loss, accuracy, grad_norm, first_bad_step).
    assert_trees_close(got_state, want_state, what="new state ")
    assert_trees_close(got_metrics, want_metrics, what="metrics ")
    assert float(want_metrics["grad_norm"]) > 1e-3
    # The test can fail: the same episodes with their rngs reordered (episodes
    # reversed, rngs not) give other params, by far more than the tolerance.
    step = make_train_step(algorithm.loss, tx, N_WAY)  # As the chunk-0 step: a cache hit.
    reversed_episodes = jax.tree.map(lambda x: x[::-1], episodes)
    other_state, _ = step(jax.tree.map(jnp.copy, state), reversed_episodes)
    assert max_relative_difference(other_state.params, want_state.params) > 1e4 * RTOL


# ---------------------------------------------------------------------------
# 4. Transformations: jit, jvp, vmap, and a Hessian-vector product through the chunks.

MLP_TASKS, MLP_POINTS, MLP_IN, MLP_HIDDEN = 6, 5, 3, 4


def mlp_problem(seed: int = 0, batch: tuple = ()):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape))
  params = {
    "w1": normal(MLP_IN, MLP_HIDDEN),
    "b1": normal(MLP_HIDDEN),
    "w2": normal(MLP_HIDDEN),
  }
  tasks = {
    "x": normal(*batch, MLP_TASKS, MLP_POINTS, MLP_IN),
    "y": normal(*batch, MLP_TASKS, MLP_POINTS),
  }
  return params, tasks


def mlp_task_loss(params, task):
  hidden = jnp.tanh(task["x"] @ params["w1"] + params["b1"])
  residual = hidden @ params["w2"] - task["y"]
  return jnp.mean(residual**2), {"max_error": jnp.max(jnp.abs(residual))}


def vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def value_and_grad_fn(chunk: int):
  return task_chunks.mean_value_and_grad(mlp_task_loss, chunk)


def grad_fn(chunk: int):
  value_and_grad = value_and_grad_fn(chunk)
  return lambda params, tasks: value_and_grad(params, tasks)[1]


# Of 6 tasks: 6 chunks of 1, 3 of 2, 2 of 3, and one chunk of 6 (no scan).
CHUNKS = (1, 2, 3, 6)
# Under further transformations: a scan over chunks, and the one-chunk case.
TRANSFORMED_CHUNKS = (2, 6)


def test_every_chunk_size_gives_the_mean_of_the_per_task_results_eagerly_and_jitted():
  with jax.enable_x64(True):
    params, tasks = mlp_problem()
    one = jax.jit(jax.value_and_grad(mlp_task_loss, has_aux=True))
    per_task = [one(params, jax.tree.map(lambda x, i=i: x[i], tasks)) for i in range(MLP_TASKS)]
    want = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *per_task)
    assert_the_comparison_can_fail([g for _, g in per_task], want[1])
    for chunk in (0, *CHUNKS):
      got = jax.jit(value_and_grad_fn(chunk))(params, tasks)
      assert_trees_close(got, want, what=f"jit, chunk {chunk}: ")
    # Outside jit too (op by op), once.
    assert_trees_close(value_and_grad_fn(2)(params, tasks), want, what="eager, chunk 2: ")


def test_forward_and_reverse_hessian_vector_products_through_the_chunks():
  with jax.enable_x64(True):
    params, tasks = mlp_problem(1)
    direction, _ = mlp_problem(2)
    tangent = jax.tree.map(jnp.ones_like, tasks)

    # Reverse over reverse on the plain mean loss: an independent reference.
    @jax.jit
    def reference(p):
      mean_loss = lambda q: task_chunks.mean_over_tasks(mlp_task_loss)(q, tasks)[0]
      return jax.grad(lambda q: vdot(jax.grad(mean_loss)(q), direction))(p)

    def products(chunk):
      grads = grad_fn(chunk)

      @jax.jit
      def run(p, t):
        forward = jax.jvp(lambda q: grads(q, t), (p,), (direction,))[1]
        # Reverse mode through the scan: the gradient of <grad L, v>.
        reverse = jax.grad(lambda q: vdot(grads(q, t), direction))(p)
        # Forward mode in the params and the tasks' inputs together.
        both = jax.jvp(grads, (p, t), (direction, tangent))[1]
        return forward, reverse, both

      return run(params, tasks)

    hvp = reference(params)
    assert scale(hvp) > 1e-3
    forward, reverse, both = products(0)
    assert_trees_close(forward, hvp, what="unchunked jvp: ")
    assert_trees_close(reverse, hvp, what="unchunked grad of grad: ")
    assert scale(both) > 1e-3 and max_relative_difference(both, hvp) > 1e-3
    for chunk in TRANSFORMED_CHUNKS:
      got = products(chunk)
      for name, value, expected in zip(
        ("jvp", "grad of grad", "jvp in params and tasks"), got, (hvp, hvp, both), strict=True
      ):
        assert_trees_close(value, expected, what=f"{name}, chunk {chunk}: ")


def test_vmap_over_an_extra_leading_axis():
  batch = 3
  with jax.enable_x64(True):
    _, tasks = mlp_problem(3, batch=(batch,))
    params = jax.tree.map(lambda *p: jnp.stack(p), *(mlp_problem(10 + b)[0] for b in range(batch)))
    shared = jax.tree.map(lambda x: x[0], params)
    unchunked = jax.jit(value_and_grad_fn(0))
    item = lambda tree, b: jax.tree.map(lambda x: x[b], tree)
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    want = stack([unchunked(item(params, b), item(tasks, b)) for b in range(batch)])
    want_shared = stack([unchunked(shared, item(tasks, b)) for b in range(batch)])
    assert max_relative_difference(want[1], want_shared[1]) > 1e-3  # The params matter.
    for chunk in TRANSFORMED_CHUNKS:
      chunked = value_and_grad_fn(chunk)

      @jax.jit
      def run(p, t, s, chunked=chunked):
        return jax.vmap(chunked)(p, t), jax.vmap(chunked, in_axes=(None, 0))(s, t)

      got, got_shared = run(params, tasks, shared)
      assert_trees_close(got, want, what=f"vmap, chunk {chunk}: ")
      assert_trees_close(got_shared, want_shared, what=f"vmap over tasks only, chunk {chunk}: ")


# ---------------------------------------------------------------------------
# 6. tasks_per_chunk that cannot split each device's tasks: a ConfigError naming the fix.


def fake_mesh(devices: int):
  return SimpleNamespace(devices=np.zeros(devices))


@pytest.mark.parametrize(
  "chunk, meta_batch, devices, divisors",
  [
    (3, 16, 8, "[1, 2]"),  # 2 tasks per device.
    (3, 4, 1, "[1, 2, 4]"),
    (8, 32, 8, "[1, 2, 4]"),  # More than the 4 tasks per device.
    (-1, 4, 1, "[1, 2, 4]"),
    (4, 10, 1, "[1, 2, 5, 10]"),
  ],
)
def test_a_chunk_size_that_does_not_divide_is_an_error_naming_the_fix(
  chunk, meta_batch, devices, divisors
):
  with pytest.raises(ConfigError) as error:
    task_chunks.check_tasks_per_chunk(chunk, meta_batch, devices)
  message = str(error.value)
  assert f"config.train.tasks_per_chunk = {chunk}" in message
  assert f"--config.train.tasks_per_chunk to one of {divisors}" in message
  assert "or 0 for the whole meta-batch" in message


def test_chunk_sizes_that_divide_are_accepted_and_none_means_the_backends_default():
  for chunk, meta_batch, devices in ((0, 16, 8), (1, 16, 8), (2, 16, 8), (5, 10, 1), (10, 10, 1)):
    task_chunks.check_tasks_per_chunk(chunk, meta_batch, devices)
  config = tiny_config("maml")
  config.train.meta_batch_size = 16
  assert config.train.tasks_per_chunk is None
  assert task_chunks.tasks_per_chunk(config, fake_mesh(8), "cpu") == 1  # Measured.
  assert task_chunks.tasks_per_chunk(config, fake_mesh(8), "gpu") == 0  # The whole meta-batch.
  assert task_chunks.tasks_per_chunk(config, fake_mesh(8), "tpu") == 0
  config.train.tasks_per_chunk = 2
  assert task_chunks.tasks_per_chunk(config, fake_mesh(8)) == 2
  config.train.tasks_per_chunk = 4
  with pytest.raises(ConfigError, match=r"one of \[1, 2\]"):
    task_chunks.tasks_per_chunk(config, fake_mesh(8))


def test_imaml_chunks_are_off_by_default_and_an_error_when_set_on_several_devices():
  config = tiny_config("imaml")
  config.train.meta_batch_size = 16
  assert task_chunks.tasks_per_chunk(config, fake_mesh(1), "cpu") == 1
  assert task_chunks.tasks_per_chunk(config, fake_mesh(8), "cpu") == 0
  config.train.tasks_per_chunk = 2
  with pytest.raises(ConfigError, match=r"--config\.train\.tasks_per_chunk=0"):
    task_chunks.tasks_per_chunk(config, fake_mesh(8))


# ---------------------------------------------------------------------------
# 5. Eight devices: one subprocess (see the module docstring).

COLLECTIVES_THAT_MOVE_TASKS = ("all-to-all", "all-gather", "collective-permute")
ALL_COLLECTIVES = (*COLLECTIVES_THAT_MOVE_TASKS, "all-reduce", "reduce-scatter")


def eight_device_child(out_path: str) -> None:
  """Runs in the subprocess: writes what the parent's tests check to ``out_path``."""
  from fsl_jax.runtime import sharding

  assert jax.config.jax_enable_x64
  mesh = sharding.make_mesh()
  devices = mesh.devices.size
  out = {"devices": devices}

  # One train step of 16 tasks: sharded and chunked against one device, unchunked.
  # ProtoNets: batch statistics; Reptile: per-episode rngs.
  meta_batch = 16
  original = task_chunks.mean_value_and_grad
  out["steps"] = {}
  for kind, chunks in (("protonet", ("1", "2", "naive")), ("reptile", ("1",))):
    algorithm, tx, state, episodes = step_inputs(kind, meta_batch)
    single = make_train_step(algorithm.loss, tx, N_WAY)
    want_state, want_metrics = single(jax.tree.map(jnp.copy, state), episodes)
    replicated = jax.device_put(state, sharding.replicated(mesh))
    global_episodes = sharding.to_global(episodes, mesh)
    runs = out["steps"][kind] = {}
    for chunk in chunks:
      if chunk == "naive":  # Chunks of the global meta-batch, ignoring the devices' blocks.
        task_chunks.mean_value_and_grad = lambda f, c, mesh: original(f, c, None)
      try:
        step = make_train_step(
          algorithm.loss,
          tx,
          N_WAY,
          mesh=mesh,
          tasks_per_chunk=1 if chunk == "naive" else int(chunk),
        )
        compiled = step.lower(replicated, global_episodes).compile()
      finally:
        task_chunks.mean_value_and_grad = original
      text = compiled.as_text()
      got_state, got_metrics = compiled(jax.tree.map(jnp.copy, replicated), global_episodes)
      runs[chunk] = {
        "params": max_relative_difference(got_state.params, want_state.params),
        "batch_stats": max_relative_difference(got_state.batch_stats, want_state.batch_stats)
        if jax.tree.leaves(want_state.batch_stats)
        else 0.0,
        "metrics": {
          k: abs(float(got_metrics[k]) - float(want_metrics[k]))
          / max(abs(float(want_metrics[k])), 1e-30)
          for k in ("loss", "accuracy", "grad_norm")
        },
        "collectives": {
          name: text.count(name) for name in (*COLLECTIVES_THAT_MOVE_TASKS, "all-reduce")
        },
        "collectives_in_loops": collectives_in_while_loops(text),
        "step_moved_params": max_relative_difference(got_state.params, state.params),
        "out_specs": sorted({str(tuple(x.sharding.spec)) for x in jax.tree.leaves(got_state)}),
      }

  # A loop that all-reduces in every iteration, to show the loop check can fail.
  def psum_per_iteration(x):
    step = lambda total, row: (total + jax.lax.psum(row, "data"), None)
    return jax.lax.scan(step, jnp.zeros(x.shape[1:], x.dtype), x)[0]

  looped = jax.jit(
    jax.shard_map(
      psum_per_iteration,
      mesh=mesh,
      in_specs=jax.sharding.PartitionSpec("data"),
      out_specs=jax.sharding.PartitionSpec(),
    )
  )
  text = looped.lower(jnp.ones((16, 3))).compile().as_text()
  out["psum_per_iteration_in_loops"] = collectives_in_while_loops(text)
  with open(out_path, "w") as f:
    json.dump(out, f, indent=1)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  out = tmp_path_factory.mktemp("task_chunks") / "eight.json"
  env = {
    **os.environ,
    "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
    "JAX_PLATFORMS": "cpu",
    "JAX_ENABLE_X64": "1",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
  }
  done = subprocess.run(
    [sys.executable, __file__, str(out)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
  result = json.loads(out.read_text())
  assert result["devices"] == 8
  return result


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["protonet", "reptile"])
def test_sharded_chunked_steps_equal_one_device_unchunked(eight_devices, kind):
  runs = eight_devices["steps"][kind]
  for chunk, run in runs.items():
    if chunk == "naive":
      continue
    assert run["step_moved_params"] > 1e-4, chunk  # The step did something.
    assert run["params"] < RTOL, (chunk, run)
    assert run["batch_stats"] < RTOL, (chunk, run)
    metrics = run["metrics"]
    assert max(metrics["loss"], metrics["grad_norm"]) < RTOL, (chunk, run)
    assert metrics["accuracy"] < 1e-6, (chunk, run)  # A float32 mean of booleans.
    assert run["out_specs"] == ["()"], (chunk, run)  # The new state is replicated.


@pytest.mark.slow
def test_no_task_moves_between_devices(eight_devices):
  steps = eight_devices["steps"]
  for kind, chunk in (("protonet", "1"), ("protonet", "2"), ("reptile", "1")):
    collectives = steps[kind][chunk]["collectives"]
    moves = {name: collectives[name] for name in COLLECTIVES_THAT_MOVE_TASKS}
    assert moves == dict.fromkeys(COLLECTIVES_THAT_MOVE_TASKS, 0), (kind, chunk, collectives)
    # It is a sharded program: the mean gradient is all-reduced over the devices.
    assert collectives["all-reduce"] > 0, (kind, chunk, collectives)
  # The check can fail: chunks of consecutive tasks, which live on one device, move tasks.
  naive = steps["protonet"]["naive"]
  assert sum(naive["collectives"][name] for name in COLLECTIVES_THAT_MOVE_TASKS) > 0, naive
  assert naive["params"] < RTOL  # Slower, but the same numbers.


@pytest.mark.slow
def test_devices_communicate_once_after_the_scan_not_once_per_chunk(eight_devices):
  """The chunk loop (a while loop in XLA) holds no collective: one all-reduce ends the step."""
  steps = eight_devices["steps"]
  for kind, chunk in (("protonet", "1"), ("reptile", "1")):
    assert steps[kind][chunk]["collectives_in_loops"] == [], (kind, chunk)
  # The check can fail: a scan that all-reduces every iteration is caught.
  assert eight_devices["psum_per_iteration_in_loops"] != []


def collectives_in_while_loops(hlo: str) -> list[str]:
  """The collective ops of an optimised HLO module inside while loops' bodies or conditions,
  followed through the computations they call."""
  computations, name = {}, None
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
    if header and line.rstrip().endswith("{"):
      name = header.group(1)
      computations[name] = []
    elif name is not None:
      computations[name].append(line)
  called = lambda lines: {
    callee
    for line in lines
    for group in re.findall(
      r"(?:body|condition|calls|to_apply|branch_computations)=\{?([^}\s]*)", line
    )
    for callee in re.findall(r"%([\w.\-]+)", group)
  }
  loops = {
    callee
    for lines in computations.values()
    for line in lines
    if " while(" in line
    for callee in re.findall(r"(?:body|condition)=%([\w.\-]+)", line)
  }
  seen, found = set(), []
  while loops:
    current = loops.pop()
    if current in seen or current not in computations:
      continue
    seen.add(current)
    lines = computations[current]
    found += [
      line.strip().split(" = ")[0]
      for line in lines
      if any(f" {op}(" in line or f" {op}-start(" in line for op in ALL_COLLECTIVES)
    ]
    loops |= called(lines)
  return found


if __name__ == "__main__":
  eight_device_child(sys.argv[1])
