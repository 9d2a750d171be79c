"""fsl_jax: few-shot image classification in JAX and Flax."""

__version__ = "0.1.0"
