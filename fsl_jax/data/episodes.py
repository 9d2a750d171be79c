"""Episodes and the stateless episode sampler.

An N-way K-shot episode with Q queries per class draws N classes and, from each,
K + Q distinct drawings: K form the support set and Q the query set. Labels are
the positions 0..N-1 of the classes in a random permutation, so a model can never
learn a fixed class order.

Episode ``i`` of the stream with seed ``s`` is a pure function of ``(s, i)``: it
does not depend on device count, process count or how many episodes were drawn
before a restart. A meta-batch of T episodes at train step ``t`` holds episodes
``t*T .. t*T + T - 1``, and a process may draw only its own slice of them.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from fsl_jax.data.class_images import ClassImages
from fsl_jax.errors import EpisodeShapeError


class Episode(NamedTuple):
  """One episode, or a meta-batch of them with a leading axis T.

  Shapes (unbatched): images are uint8, labels int32 in [0, n_way).
    support:        [N*K, H, W, C]
    support_labels: [N*K]
    query:          [N*Q, H, W, C]
    query_labels:   [N*Q]
  Support and query are class-major: row ``n*K + k`` is shot k of class n.
  """

  support: np.ndarray
  support_labels: np.ndarray
  query: np.ndarray
  query_labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class EpisodeShape:
  """N-way K-shot with Q queries per class."""

  n_way: int
  k_shot: int
  n_query: int

  def check(self, data: ClassImages, what: str) -> None:
    """Raises EpisodeShapeError, before anything compiles, if data cannot supply it."""
    if min(self.n_way, self.k_shot, self.n_query) < 1:
      raise EpisodeShapeError(f"{what}: n_way, k_shot and n_query must be >= 1, got {self}.")
    if self.n_way > data.num_classes:
      raise EpisodeShapeError(
        f"{what}: n_way={self.n_way} but the split has only {data.num_classes} classes. "
        f"Lower n_way to at most {data.num_classes}, or use a split with more classes."
      )
    if self.k_shot + self.n_query > data.images_per_class:
      raise EpisodeShapeError(
        f"{what}: k_shot + n_query = {self.k_shot} + {self.n_query} but each class has "
        f"only {data.images_per_class} images. Lower n_query to at most "
        f"{data.images_per_class - self.k_shot}."
      )


class EpisodeSampler:
  """Draws episode ``i`` as a pure function of ``(seed, i)``."""

  def __init__(self, data: ClassImages, shape: EpisodeShape, seed: int, what: str = "episodes"):
    shape.check(data, what)
    self.data = data
    self.shape = shape
    self.seed = seed
    n, k, q = shape.n_way, shape.k_shot, shape.n_query
    self._support_labels = np.repeat(np.arange(n, dtype=np.int32), k)  # [N*K]
    self._query_labels = np.repeat(np.arange(n, dtype=np.int32), q)  # [N*Q]

  def episode(self, index: int) -> Episode:
    """Episode ``index`` of this stream."""
    n, k, q = self.shape.n_way, self.shape.k_shot, self.shape.n_query
    rng = np.random.default_rng((self.seed, index))
    classes = rng.choice(self.data.num_classes, size=n, replace=False)  # [N], random order
    drawings = rng.random((n, self.data.images_per_class)).argsort(axis=1)[:, : k + q]
    images = self.data.images[classes[:, None], drawings]  # [N, K+Q, H, W, C]
    image_shape = images.shape[2:]
    return Episode(
      support=images[:, :k].reshape((n * k, *image_shape)),
      support_labels=self._support_labels,
      query=images[:, k:].reshape((n * q, *image_shape)),
      query_labels=self._query_labels,
    )

  def episodes(self, start: int, count: int) -> Episode:
    """Episodes start .. start+count-1 stacked on a leading axis: [count, ...]."""
    batch = [self.episode(start + i) for i in range(count)]
    return Episode(*(np.stack(parts) for parts in zip(*batch, strict=True)))
