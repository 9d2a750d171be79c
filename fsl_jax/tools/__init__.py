"""Tools around training: the benchmark, the report and its plots, published figures.

``python -m fsl_jax.bench`` and ``python -m fsl_jax.report`` run ``tools.bench``
and ``tools.report``.
"""
