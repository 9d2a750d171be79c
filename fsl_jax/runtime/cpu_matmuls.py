"""Which library runs XLA:CPU's matrix products: YNNPACK (XLA's default) or Eigen.

``config.cpu_matmuls`` picks one for the jitted train and eval steps
(``steps.make_train_step(..., cpu_matmuls)``), as a per-compile XLA option
(``jax.jit(..., compiler_options=...)``), so nothing
process-wide changes and other backends are untouched:

* ``"ynnpack"``: XLA:CPU's default. Every dot YNNPACK supports runs there, in a
  ``__ynn_fusion``; the rest (products contracting rows, ``a^T b``) run in Eigen.
* ``"eigen"``: every dot runs in Eigen. Reductions and convolutions stay with
  YNNPACK, as by default: taking those away too made MAML Omniglot 20-way first
  order 2.3x slower (1.15-1.22 s against 0.53-0.61 s per step).

Neither is faster everywhere. On this project's 2-core CPU, in alternated runs of
``python -m fsl_jax.bench`` (figures in the README):

* MAML on Omniglot, whose batched per-task products are like [16, 980, 576] x
  [16, 576, 64]: whole steps ran 7-14% faster in Eigen (medians). That product
  alone took 12.6 ms in YNNPACK and 9.9 ms in Eigen.
* FCE's LSTM products ([3200, 6400] weights) ran faster in YNNPACK, and so did
  the [N, 64] x [64, 64] Winograd products of Matching Networks on Omniglot
  (0.34 ms against 0.69 ms for [3920, 64] x [64, 64] alone).
"""

from __future__ import annotations

import jax

from fsl_jax.errors import ConfigError

CPU_MATMULS = ("ynnpack", "eigen")

# XLA:CPU's default set of YNNPACK fusion types is {INDIVIDUAL_DOT, REDUCE,
# INDIVIDUAL_CONVOLUTION} (tests/test_cpu_matmuls.py checks it); "eigen" drops the dots.
_WITHOUT_DOTS = "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"


def compiler_options(cpu_matmuls: str, backend: str | None = None) -> dict[str, str] | None:
  """The ``compiler_options`` for ``jax.jit`` that put the step's dots in ``cpu_matmuls``.

  Args:
    cpu_matmuls: "ynnpack" or "eigen".
    backend: the platform the step compiles for; default ``jax.default_backend()``.

  Returns:
    None (XLA's defaults) for "ynnpack" and on every backend but CPU.
  """
  if cpu_matmuls not in CPU_MATMULS:
    raise ConfigError(
      f"config.cpu_matmuls={cpu_matmuls!r} is not one of {CPU_MATMULS}; "
      'use "ynnpack" (XLA:CPU\'s default) or "eigen".'
    )
  if cpu_matmuls == "ynnpack" or (backend or jax.default_backend()) != "cpu":
    return None
  return {"xla_cpu_experimental_ynn_fusion_type": _WITHOUT_DOTS}
