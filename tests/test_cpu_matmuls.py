"""config.cpu_matmuls: which library runs XLA:CPU's matrix products in the steps."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from fsl_jax.algorithms import make_algorithm
from fsl_jax.data.class_images import ClassImages
from fsl_jax.data.episodes import EpisodeSampler, EpisodeShape
from fsl_jax.errors import ConfigError
from fsl_jax.runtime import cpu_matmuls
from fsl_jax.state import create_train_state
from fsl_jax.steps import make_eval_step, make_train_step


def _products_reductions_convolutions(x, kernel, a, b):
  conv = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return a @ b, jnp.sum(a, axis=0), conv


def _ynn_fusion_shapes(options) -> set[str]:
  """The result shapes of the compiled program's YNNPACK fusions."""
  # YNNPACK takes reductions and convolutions from some size on: these are above it.
  args = (
    jnp.ones((8, 14, 14, 64)),
    jnp.ones((3, 3, 64, 64)),
    jnp.ones((512, 256)),
    jnp.ones((256, 128)),
  )
  jitted = jax.jit(_products_reductions_convolutions, compiler_options=options)
  text = jitted.lower(*args).compile().as_text()
  return {
    line.split("=")[1].split("{")[0].strip()
    for line in text.splitlines()
    if " fusion(" in line and '"__ynn_fusion"' in line
  }


def test_options_are_none_for_xla_defaults_and_other_backends():
  assert cpu_matmuls.compiler_options("ynnpack") is None
  assert cpu_matmuls.compiler_options("eigen", backend="gpu") is None
  assert cpu_matmuls.compiler_options("eigen", backend="tpu") is None
  assert cpu_matmuls.compiler_options("eigen", backend="cpu") is not None
  assert common.get_base_config().cpu_matmuls == "ynnpack"


def test_an_unknown_library_is_a_config_error_that_names_the_choices():
  with pytest.raises(ConfigError, match=r"'ynnpack'.*'eigen'"):
    cpu_matmuls.compiler_options("mkl")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's library choice")
def test_eigen_takes_the_dots_and_leaves_reductions_and_convolutions_to_ynnpack():
  # XLA's default: the product [512, 128], the reduction [256] and the convolution
  # [8, 14, 14, 64] all in YNNPACK. If a jaxlib changes that default set, this fails
  # and cpu_matmuls._WITHOUT_DOTS must follow it.
  assert _ynn_fusion_shapes(None) == {"f32[512,128]", "f32[256]", "f32[8,14,14,64]"}
  assert _ynn_fusion_shapes(cpu_matmuls.compiler_options("eigen")) == {
    "f32[256]",
    "f32[8,14,14,64]",
  }


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's library choice")
def test_second_order_maml_steps_agree_between_libraries():
  rng = np.random.default_rng(0)
  data = ClassImages(rng.integers(0, 256, (8, 4, 8, 8, 1), dtype=np.uint8), tuple("abcdefgh"))
  episodes = EpisodeSampler(data, EpisodeShape(3, 1, 2), seed=0).episodes(0, 4)
  config = common.get_base_config()
  common.set_maml(config, inner_lr=0.4, inner_steps=1, test_inner_steps=1, meta_batch_size=4)
  config.train.n_way = config.eval.n_way = 3
  config.model.filters, config.model.num_blocks = 8, 1  # Small graphs compile fast.
  model, algorithm = make_algorithm(config)
  tx = optax.sgd(0.1)
  state = create_train_state(model, tx, jnp.asarray(episodes.support[0]), 0, algorithm.init_params)
  outputs = {}
  for library in cpu_matmuls.CPU_MATMULS:
    train_step = make_train_step(algorithm.loss, tx, 3, cpu_matmuls=library)
    eval_step = make_eval_step(algorithm.loss, 3, cpu_matmuls=library)
    compiled = train_step.lower(state, episodes).compile()
    new_state, metrics = compiled(jax.tree.map(jnp.copy, state), episodes)
    outputs[library] = (compiled.as_text(), new_state.params, metrics, eval_step(state, episodes))
  ynnpack, eigen = outputs["ynnpack"], outputs["eigen"]
  # The products moved: YNNPACK fusions of dots are gone with "eigen".
  assert ynnpack[0].count("__ynn_fusion") > eigen[0].count("__ynn_fusion")
  # The same numbers, to float32 rounding: the step from second-order meta-gradients
  # (SGD, so the parameters move by 0.1 times them), and the evaluation's losses and accuracies.
  for a, b in zip(ynnpack[1:], eigen[1:], strict=True):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)
  assert float(ynnpack[2]["grad_norm"]) > 0


def test_bench_workloads_time_the_library_their_configs_use():
  from fsl_jax.tools.bench import WORKLOADS, workload_config

  for name, workload in WORKLOADS.items():
    trained = importlib.import_module(f"configs.{workload.config_file}").get_config()
    assert workload_config(workload, False, "auto").cpu_matmuls == trained.cpu_matmuls, name
  used = {name: workload_config(w, False, "auto").cpu_matmuls for name, w in WORKLOADS.items()}
  assert used["maml_omniglot_20w1s"] == "eigen" and used["matching_omniglot_5w1s"] == "ynnpack"
