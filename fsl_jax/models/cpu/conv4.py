"""conv-4 (``fsl_jax.models.conv4``) in formulations that are fast on XLA:CPU.

The same function and the same parameter tree as the reference ``Conv4``, so a
checkpoint of either loads into the other. Four blocks of [3x3 conv with F filters, batch norm, ReLU, 2x2 max-pool], then a
flatten. A 28x28x1 Omniglot image gives a 64-d embedding (28 -> 14 -> 7 -> 3 -> 1);
an 84x84x3 miniImageNet image gives F*5*5 (84 -> 42 -> 21 -> 10 -> 5).

The convolution has three formulations with identical numbers, chosen per backend
(``conv_impl``):

* ``"xla"``: ``lax.conv_general_dilated``; best where cuDNN / TPU convolutions exist.
* ``"im2col"``: nine shifted slices concatenated on the channel axis, then one
  matmul ``[B*H*W, 9*C_in] @ [9*C_in, C_out]``. On XLA:CPU this beats the direct
  convolution, and under ``vmap`` with per-task weights it becomes a batched
  matmul rather than a slow grouped convolution. Its products go through
  ``row_products``, so that each backward product, at any order, is one matmul.
* ``"winograd"``: Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016) for
  the stride-1 convolutions with many input channels and pixels (``winograd_pays``).
  It does 16 matmuls ``[B*H*W/4, C_in] @ [C_in, C_out]``, 2.25x fewer multiplies
  than im2col, on an input 4x its size rather than 9x (``winograd_conv``). A
  grayscale image layer is computed inside its pool and never written, with batch
  norm's moments from the patches (``image_conv``); strided layers, small maps and
  colour image layers use im2col. The fastest on XLA:CPU for shared weights,
  and for MAML's per-task weights one task at a time (``fsl_jax.models.default_conv_impl``).

Batch norm and ReLU are one module, ``BatchNormRelu``, with flax BatchNorm's
variables. With max-pooling it pools the convolution's output before batch norm's
affine map and the ReLU, which commute with the max once the sign of batch norm's
scale is accounted for, so they run on a quarter of the pixels. The pool routes
each window's derivative through its argmax by a JVP rule
(``max_pool.max_pool_2x2``), whose transpose is far cheaper on CPU than
``reduce_window``'s select-and-scatter; with Winograd the argmax is stored, since Winograd's backward
pass reads the pooled gradient 16 times. Odd sides are floored as in PyTorch.

Params and batch statistics are separate pytrees: ``variables = {"params": ...,
"batch_stats": ...}``; call ``apply(variables, x, train=True, mutable=["batch_stats"])``
in training and ``apply(variables, x, train=False)`` at test time.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.models.conv4 import COMPUTE_DTYPES, DOWNSAMPLES, Conv4, torch_default_init
from fsl_jax.models.cpu.batch_norm_relu import BatchNormRelu
from fsl_jax.models.cpu.image_conv import image_conv, image_conv_moments, image_conv_pays
from fsl_jax.models.cpu.row_products import matmul
from fsl_jax.models.cpu.winograd import winograd_conv, winograd_pays

CONV_IMPLS = ("xla", "im2col", "winograd")


def same_padding(size: int, stride: int) -> tuple[int, int]:
  """TensorFlow's 'SAME' padding of a 3-wide window: output side ceil(size / stride)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + 3 - size, 0)
  return total // 2, total - total // 2


def conv3x3(
  x: jax.Array, kernel: jax.Array, impl: str, stride: int = 1, image_conv_layer: bool = True
) -> jax.Array:
  """A 'SAME' 3x3 convolution without bias.

  Args:
    x: [B, H, W, C_in].
    kernel: [3, 3, C_in, C_out].
    impl: "xla", "im2col" or "winograd"; all compute the same function.
    stride: 1, or 2 for the strided variant of Finn et al.'s Omniglot model.
    image_conv_layer: with "winograd", a grayscale image layer goes through
      ``image_conv`` (else im2col).

  Returns:
    [B, H', W', C_out] with H' = ceil(H / stride),
    ``y[b,i,j,o] = sum_{dy,dx,c} x_pad[b, s*i+dy, s*j+dx, c] k[dy,dx,c,o]``.
  """
  if impl == "xla":
    _, h, w, _ = x.shape
    pad_h, pad_w = same_padding(h, stride), same_padding(w, stride)
    return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), (pad_h, pad_w), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  if impl == "im2col":
    return im2col_conv(x, kernel, stride)
  if impl == "winograd":
    if winograd_pays(x.shape, stride):
      return winograd_conv(x, kernel)
    if image_conv_layer and image_conv_pays(x.shape, stride):
      return image_conv(x, kernel)
    return im2col_conv(x, kernel, stride)
  raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")


def im2col(x: jax.Array, stride: int) -> jax.Array:
  """[B, H, W, C] -> patches [B, H', W', 9*C] of the 'SAME' 3x3 windows.

  Channel index (dy*3 + dx)*C + c, which matches ``kernel.reshape(9*C, C_out)``.
  """
  _, h, w, _ = x.shape
  h_out, w_out = -(-h // stride), -(-w // stride)
  padded = jnp.pad(x, ((0, 0), same_padding(h, stride), same_padding(w, stride), (0, 0)))
  return jnp.concatenate(
    [
      padded[:, dy : dy + stride * h_out : stride, dx : dx + stride * w_out : stride, :]
      for dy in range(3)
      for dx in range(3)
    ],
    axis=-1,
  )


def im2col_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """``im2col(x) @ kernel.reshape(9*C_in, C_out)``, differentiated through ``row_products``.

  Reverse mode then takes each of the two backward products as one matmul on the
  operands as they lie, at every order of differentiation:

    dK = P^T G    (P = im2col(x) [B*H'*W', 9*C_in], G = dY [B*H'*W', C_out])
    dX = im2col^T(G K^T)   (the adjoint of im2col adds each window back in place)
  """
  patches = im2col(x, stride)
  c_out = kernel.shape[-1]
  out = matmul(patches.reshape(-1, patches.shape[-1]), kernel.reshape(-1, c_out))
  return out.reshape(*patches.shape[:-1], c_out)


class Conv3x3(nn.Module):
  """A bias-free 3x3 conv (batch norm follows, so a bias would be redundant)."""

  features: int
  impl: str
  stride: int = 1
  image_conv_layer: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", torch_default_init, (3, 3, x.shape[-1], self.features))
    return conv3x3(x, kernel.astype(x.dtype), self.impl, self.stride, self.image_conv_layer)


class CpuConv4(Conv4):
  """conv-4 in its fast CPU formulations: uint8 images [B, H, W, C] -> embeddings [B, D] (or logits with a head).

  Attributes:
    conv_impl: "xla", "im2col" or "winograd" (see module docstring).
    The others are ``Conv4``'s, and so is the parameter tree. With ``compute_dtype``
    "bfloat16", batch norm's affine map and ReLU are evaluated in float32 and
    rounded once.
  """

  conv_impl: str = "im2col"
  # With "winograd": the grayscale image layer through ``image_conv``. MAML turns it
  # off: adapted per task, that layer ran faster as im2col (``models.make_model``).
  image_conv_layer: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    chex.assert_rank(images, 4)  # [B, H, W, C]
    if self.downsample not in DOWNSAMPLES:
      raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {self.downsample!r}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
    # The default float type: float32, or float64 under jax.enable_x64 (for exact tests).
    out_dtype = jnp.result_type(float)
    dtype = jnp.bfloat16 if self.compute_dtype == "bfloat16" else out_dtype
    x = images.astype(out_dtype) / 255.0
    x = ((x - jnp.asarray(self.pixel_mean)) / jnp.asarray(self.pixel_std)).astype(dtype)
    strided = self.downsample == "stride"
    for i in range(self.num_blocks):
      stride = 2 if strided else 1
      conv = Conv3x3(self.filters, self.conv_impl, stride, self.image_conv_layer)
      y = conv(x)
      moments = None
      image_layer = self.image_conv_layer and image_conv_pays(x.shape, stride)
      if self.conv_impl == "winograd" and train and image_layer:
        # The image layer: batch norm's moments from the patches, not from y (image_conv.py).
        moments = image_conv_moments(x, conv.variables["params"]["kernel"])
      # Winograd's backward pass reads the pooled gradient 16 times, so its models
      # store the argmax (max_pool.py). Without image_conv (MAML), only where the
      # pool feeds a Winograd layer: on Omniglot, none does.
      b, h, w, f = y.shape
      feeds_winograd = i + 1 < self.num_blocks and winograd_pays((b, h // 2, w // 2, f), 1)
      x = BatchNormRelu(
        max_pool=not strided,
        store_pool_index=self.conv_impl == "winograd" and (self.image_conv_layer or feeds_winograd),
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        name=f"BatchNorm_{i}",
      )(y, use_running_average=not train, moments=moments)
    # [B, F] after a spatial mean (strided), else [B, F * h * w].
    x = x.mean(axis=(1, 2)) if strided else x.reshape(x.shape[0], -1)
    x = x.astype(out_dtype)
    if self.num_outputs is not None:
      x = nn.Dense(self.num_outputs, name="head")(x)
    return x
