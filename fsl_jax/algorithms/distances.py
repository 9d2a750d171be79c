"""Similarities between query and class (or support) embeddings, as logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def squared_euclidean(a: jax.Array, b: jax.Array) -> jax.Array:
  """||a_i - b_j||^2 for a [P, D] and b [R, D] -> [P, R].

  Expanded as |a|^2 - 2 a.b + |b|^2 so the cross term is one matmul; clipped at
  0 against cancellation.
  """
  cross = a @ b.T
  sq = jnp.sum(a * a, axis=-1)[:, None] - 2.0 * cross + jnp.sum(b * b, axis=-1)[None, :]
  return jnp.maximum(sq, 0.0)


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """a_i.b_j / (max(|a_i|, eps) max(|b_j|, eps)) for a [P, D], b [R, D] -> [P, R]."""
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
  return a @ b.T


def similarity_logits(
  a: jax.Array, b: jax.Array, distance: str, cosine_scale: float = 1.0
) -> jax.Array:
  """Logits [P, R]: -||a - b||^2 for "euclidean", cosine_scale * cos(a, b) for "cosine"."""
  if distance == "euclidean":
    return -squared_euclidean(a, b)
  if distance == "cosine":
    return cosine_scale * cosine_similarity(a, b)
  raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
