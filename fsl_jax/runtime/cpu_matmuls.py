"""Which library runs XLA:CPU's matrix products: YNNPACK (XLA's default) or Eigen.

``config.cpu_matmuls`` picks one for the jitted train and eval steps
(``steps.make_train_step(..., cpu_matmuls)``), as a per-compile XLA option
(``jax.jit(..., compiler_options=...)``), so nothing
process-wide changes and other backends are untouched:

* ``"ynnpack"``: XLA:CPU's default. Every dot YNNPACK supports runs there, in a
  ``__ynn_fusion``; the rest (products contracting rows, ``a^T b``) run in Eigen.
* ``"eigen"``: every dot runs in Eigen. Reductions and convolutions stay with
  YNNPACK, as by default: taking those away too makes MAML's steps on Omniglot
  slower.

Neither is faster everywhere, as ``python -m fsl_jax.bench`` shows
(docs/performance.md has the measurements):

* MAML on Omniglot, whose batched per-task products are like [16, 980, 576] x
  [16, 576, 64], runs faster in Eigen.
* FCE's LSTM products ([3200, 6400] weights) run faster in YNNPACK, and so do
  the [N, 64] x [64, 64] Winograd products of Matching Networks on Omniglot.
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
