"""Full Context Embeddings (Vinyals et al. 2016, appendix A.2).

Matching Networks embed the support set and each query *in the context of the
whole support set S*:

* **g, the support context**: a bidirectional LSTM reads the backbone's support
  embeddings g'(x_1..x_S) as a sequence, and each embedding becomes

      g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i,

  with h_fwd_i, h_bwd_i the hidden states of the forward and backward LSTMs at
  position i (``lstm_layers`` stacked bidirectional layers; the deeper layers
  read the concatenation [h_fwd; h_bwd] of the layer below).

* **f, the attention LSTM**: each query's backbone embedding f'(x) is refined by
  K steps of an LSTM that attends over g(S):

      a_{k-1}  = softmax_i( h_{k-1} . g(x_i) )              [S]
      r_{k-1}  = sum_i a_{k-1,i} g(x_i)                     [D]
      h^_k, c_k = LSTM(f'(x), [h_{k-1}; r_{k-1}], c_{k-1})
      h_k      = h^_k + f'(x)
      f(x, S)  = h_K,

  starting from h_0 = f'(x), c_0 = 0. The K steps are one scan.

Order: g reads the support set as a sequence, so g (and hence every prediction)
depends on the order of the support set; f is a set operation given g (its
attention is a softmax over all of S). The sampler always presents the support
set class-major (row n*K + k is shot k of class n), and since labels are a random
permutation of the classes, that order carries no information about which
classes are present. Reversing the support order while swapping the forward and
backward LSTMs' weights leaves g's outputs (reversed) and all predictions
unchanged (tests/test_matching.py checks this).

Every LSTM here is the standard cell,

    i, f, g, o = split(W_x x + W_h h + b)
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g),    h' = sigmoid(o) * tanh(c'),

with the input projection W_x x computed once for all time steps outside the
scan (it does not depend on the recurrence). The scans are
``recurrence.weight_tied_scan``: their backward pass computes the recurrent
weight's gradient as one matmul after the backward scan, not one outer product
added per step. Weights are initialised U(+-1/sqrt(D))
as in PyTorch's ``nn.LSTM``, which the reference implementations use.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from fsl_jax.models.recurrence import weight_tied_scan


def uniform_init(hidden: int):
  """PyTorch's LSTM initialisation: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
  bound = hidden**-0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def lstm_cell(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One LSTM update from pre-activations ``gates`` [..., 4D] and cell ``c`` [..., D] -> (h', c')."""
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def run_lstm(input_gates: jax.Array, w_h: jax.Array, reverse: bool) -> jax.Array:
  """An LSTM over a sequence whose input projections are already computed.

  Args:
    input_gates: [T, 4D], W_x x_t + b for every step t.
    w_h: [D, 4D], the recurrent weights.
    reverse: read t = T-1 .. 0 (the backward direction).

  Returns:
    [T, D], the hidden state after reading x_t, aligned with the input positions.
  """
  d = w_h.shape[0]

  def cell(carry, gates_t, consts, project):
    del consts
    h, c = carry
    h, c = lstm_cell(gates_t + project(h), c)
    return (h, c), h

  zeros = jnp.zeros((d,), input_gates.dtype)
  length = input_gates.shape[0]
  _, hs = weight_tied_scan(cell, w_h, (), (zeros, zeros), input_gates, length, reverse)
  return hs


class LSTMLayer(nn.Module):
  """One direction of one layer: inputs [T, D_in] -> hidden states [T, features]."""

  features: int
  reverse: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = uniform_init(self.features)
    w_x = self.param("w_x", init, (x.shape[-1], 4 * self.features))
    w_h = self.param("w_h", init, (self.features, 4 * self.features))
    b = self.param("b", init, (4 * self.features,))
    return run_lstm(x @ w_x + b, w_h, self.reverse)


class SupportContext(nn.Module):
  """g: support embeddings [S, D] -> g'(x_i) + h_fwd_i + h_bwd_i, [S, D]."""

  lstm_layers: int = 1

  @nn.compact
  def __call__(self, support: jax.Array) -> jax.Array:
    chex.assert_rank(support, 2)
    d = support.shape[-1]
    x = support
    for layer in range(self.lstm_layers):
      forward = LSTMLayer(d, reverse=False, name=f"forward_{layer}")(x)
      backward = LSTMLayer(d, reverse=True, name=f"backward_{layer}")(x)
      x = jnp.concatenate([forward, backward], axis=-1)  # [S, 2D], the next layer's input.
    return support + forward + backward


class QueryAttention(nn.Module):
  """f: query embeddings [Q, D] attending over g(S) [S, D] for K steps -> [Q, D]."""

  unrolling_steps: int = 1

  @nn.compact
  def __call__(self, query: jax.Array, context: jax.Array) -> jax.Array:
    chex.assert_rank([query, context], 2)
    chex.assert_equal(query.shape[-1], context.shape[-1])
    d = query.shape[-1]
    init = uniform_init(d)
    w_x = self.param("w_x", init, (d, 4 * d))
    w_hr = self.param("w_hr", init, (2 * d, 4 * d))  # Reads [h_{k-1}; r_{k-1}].
    b = self.param("b", init, (4 * d,))
    input_gates = query @ w_x + b  # [Q, 4D], the same at every step.

    def cell(carry, x, consts, project):
      del x
      h, c = carry  # [Q, D] each.
      query, context, input_gates = consts
      attention = jax.nn.softmax(h @ context.T, axis=-1)  # [Q, S]
      readout = attention @ context  # [Q, D]
      h_hat, c = lstm_cell(input_gates + project(jnp.concatenate([h, readout], -1)), c)
      return (h_hat + query, c), None

    consts = (query, context, input_gates)
    carry = (query, jnp.zeros_like(query))
    (h, _), _ = weight_tied_scan(cell, w_hr, consts, carry, None, self.unrolling_steps)
    return h


class MatchingEmbedding(nn.Module):
  """The Matching Networks embedding: backbone, then optionally FCE.

  ``__call__(images [S+Q, H, W, C], train, n_support=S)`` embeds support and
  query images as one batch (batch norm sees the whole episode) and returns
  [S+Q, D]: rows :S are g(x_i, S), rows S: are f(x, S). Without FCE both are
  the backbone's embedding. ``n_support`` defaults to half the batch, which is
  only meant for ``init``: the parameter shapes depend on D alone.
  """

  backbone: nn.Module
  fce: bool = False
  lstm_layers: int = 1
  unrolling_steps: int = 1

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, n_support: int | None = None):
    embeddings = self.backbone(images, train)  # [S+Q, D]
    if not self.fce:
      return embeddings
    n_support = images.shape[0] // 2 if n_support is None else n_support
    support = SupportContext(self.lstm_layers, name="g")(embeddings[:n_support])
    query = QueryAttention(self.unrolling_steps, name="f")(embeddings[n_support:], support)
    return jnp.concatenate([support, query])
