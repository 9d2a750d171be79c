"""The conv-4 backbone of the few-shot literature (Vinyals 2016, Snell 2017, Finn 2017).

Four blocks of [3x3 conv with F filters, batch norm, ReLU, 2x2 max-pool], then a
flatten. A 28x28x1 Omniglot image gives a 64-d embedding (28 -> 14 -> 7 -> 3 -> 1);
an 84x84x3 miniImageNet image gives F*5*5 (84 -> 42 -> 21 -> 10 -> 5). MAML adds
a linear head. Finn et al.'s Omniglot model downsamples with stride-2
convolutions instead of pooling, and ends in a spatial mean.

This is the model as the papers describe it, in standard Flax, and the default on
GPU and TPU. ``fsl_jax.models.cpu`` computes the same function with the same
parameter tree in formulations that are faster on XLA:CPU; a checkpoint of one
loads into the other.

Params and batch statistics are separate pytrees: ``variables = {"params": ...,
"batch_stats": ...}``; call ``apply(variables, x, train=True, mutable=["batch_stats"])``
in training and ``apply(variables, x, train=False)`` at test time.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

DOWNSAMPLES = ("max_pool", "stride")
COMPUTE_DTYPES = ("float32", "bfloat16")

# PyTorch's default conv init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Conv4(nn.Module):
  """conv-4: uint8 images [B, H, W, C] -> embeddings [B, D] (or logits [B, num_outputs]).

  Attributes:
    filters: F, channels of every conv (64 in Snell/Vinyals, 32 for MAML on miniImageNet).
    pixel_mean, pixel_std: per-channel normalisation of x/255, applied on device.
    num_outputs: if set, a linear head ("head") of this many outputs (MAML's logits).
    num_blocks: conv blocks (4).
    downsample: "max_pool" (2x2 max-pool after each block, odd sides floored) or
      "stride" (stride-2 'SAME' convs and a final spatial mean).
    compute_dtype: "float32" (the default float type, float64 under
      ``jax.enable_x64``) or "bfloat16" for the convolutions and activations;
      params and batch-norm statistics are float32, and the output the default type.
  """

  filters: int = 64
  pixel_mean: Sequence[float] = (0.0,)
  pixel_std: Sequence[float] = (1.0,)
  num_outputs: int | None = None
  num_blocks: int = 4
  downsample: str = "max_pool"
  compute_dtype: str = "float32"

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    chex.assert_rank(images, 4)  # [B, H, W, C]
    out_dtype = jnp.result_type(float)
    dtype = jnp.bfloat16 if self.compute_dtype == "bfloat16" else out_dtype
    x = images.astype(out_dtype) / 255.0
    x = ((x - jnp.asarray(self.pixel_mean)) / jnp.asarray(self.pixel_std)).astype(dtype)
    stride = 2 if self.downsample == "stride" else 1
    for i in range(self.num_blocks):
      x = nn.Conv(
        self.filters,
        (3, 3),
        strides=stride,
        padding="SAME",
        use_bias=False,  # Batch norm's offset makes a bias redundant.
        kernel_init=torch_default_init,
        dtype=dtype,
        name=f"Conv3x3_{i}",
      )(x)
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        name=f"BatchNorm_{i}",
      )(x)
      x = nn.relu(x)
      if stride == 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, H/2, W/2, F].
    # [B, F] after a spatial mean (strided), else [B, F * h * w].
    x = x.mean(axis=(1, 2)) if stride == 2 else x.reshape(x.shape[0], -1)
    x = x.astype(out_dtype)
    if self.num_outputs is not None:
      x = nn.Dense(self.num_outputs, name="head")(x)
    return x
