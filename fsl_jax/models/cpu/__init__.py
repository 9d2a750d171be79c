"""conv-4 in formulations that are fast on XLA:CPU, behind the reference model's parameter tree.

``conv4.CpuConv4`` is ``fsl_jax.models.conv4.Conv4`` computed with im2col or
Winograd convolutions (``row_products``, ``winograd``, ``image_conv``) and a
batch-norm block that pools first (``batch_norm_relu``, ``max_pool``,
``materialized``). Every hand-written derivative here is a JVP rule, or plain
autodiff of a forward pass written so that its transpose is the efficient
backward pass, so every JAX transformation composes through it.
"""
