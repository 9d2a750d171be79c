"""The stateless episode sampler: determinism, shapes, labels, and shape errors."""

from __future__ import annotations

import numpy as np
import pytest

from fsl_jax.data.class_images import ClassImages
from fsl_jax.data.episodes import Episode, EpisodeSampler, EpisodeShape
from fsl_jax.errors import EpisodeShapeError

CLASSES = 30
DRAWINGS = 20


def coded_images(classes: int = CLASSES, drawings: int = DRAWINGS, size: int = 28) -> ClassImages:
  """Every pixel of class c, drawing m is c, except pixel (0, 1), which is m."""
  images = np.zeros((classes, drawings, size, size, 1), np.uint8)
  images += np.arange(classes, dtype=np.uint8)[:, None, None, None, None]
  images[:, :, 0, 1, 0] = np.arange(drawings, dtype=np.uint8)[None, :]
  names = tuple(f"class{c}" for c in range(classes))
  return ClassImages(images, names)


def decode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[B, H, W, 1] coded images -> (class [B], drawing [B]); checks they are whole drawings."""
  classes = images[:, 0, 0, 0].astype(int)
  drawings = images[:, 0, 1, 0].astype(int)
  rest = images.copy()
  rest[:, 0, 1, 0] = rest[:, 0, 0, 0]
  assert (rest == classes[:, None, None, None]).all(), "an image mixes several classes"
  return classes, drawings


def assert_episodes_equal(a: Episode, b: Episode) -> None:
  for x, y in zip(a, b, strict=True):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_shapes_and_dtypes():
  sampler = EpisodeSampler(coded_images(), EpisodeShape(n_way=5, k_shot=3, n_query=4), seed=0)
  episode = sampler.episode(0)
  assert episode.support.shape == (15, 28, 28, 1) and episode.support.dtype == np.uint8
  assert episode.query.shape == (20, 28, 28, 1) and episode.query.dtype == np.uint8
  assert episode.support_labels.shape == (15,) and episode.support_labels.dtype == np.int32
  assert episode.query_labels.shape == (20,) and episode.query_labels.dtype == np.int32
  # Class-major: row n*K + k is shot k of class n.
  np.testing.assert_array_equal(episode.support_labels, np.repeat(np.arange(5), 3))
  np.testing.assert_array_equal(episode.query_labels, np.repeat(np.arange(5), 4))
  batch = sampler.episodes(7, 3)
  assert batch.support.shape == (3, 15, 28, 28, 1)
  assert batch.support_labels.shape == (3, 15)
  assert batch.query.shape == (3, 20, 28, 28, 1)
  assert batch.query_labels.shape == (3, 20)


def test_deterministic_in_seed_and_index():
  data, shape = coded_images(), EpisodeShape(5, 1, 5)
  a, b = EpisodeSampler(data, shape, seed=3), EpisodeSampler(data, shape, seed=3)
  # Same (seed, i): identical, whatever was drawn before and in whatever order.
  later = b.episode(11)
  for i in (0, 1, 11):
    assert_episodes_equal(a.episode(i), b.episode(i))
  assert_episodes_equal(a.episode(11), later)
  # Another index or another seed: another episode.
  assert not np.array_equal(a.episode(0).support, a.episode(1).support)
  assert not np.array_equal(a.episode(0).query, a.episode(1).query)
  other = EpisodeSampler(data, shape, seed=4)
  assert not np.array_equal(a.episode(0).support, other.episode(0).support)


def test_episodes_stack_episode():
  sampler = EpisodeSampler(coded_images(), EpisodeShape(4, 2, 3), seed=1)
  batch = sampler.episodes(5, 4)
  for t in range(4):
    assert_episodes_equal(Episode(*(part[t] for part in batch)), sampler.episode(5 + t))


@pytest.mark.parametrize(("n_way", "k_shot", "n_query"), [(5, 1, 15), (20, 5, 5), (30, 1, 19)])
def test_labels_match_images(n_way, k_shot, n_query):
  sampler = EpisodeSampler(coded_images(), EpisodeShape(n_way, k_shot, n_query), seed=0)
  for i in range(10):
    episode = sampler.episode(i)
    support_class, support_drawing = decode(episode.support)
    query_class, query_drawing = decode(episode.query)
    # Each label is one class, the same in support and query; labels are distinct classes.
    class_of_label = {}
    for label, c in zip(
      np.concatenate([episode.support_labels, episode.query_labels]),
      np.concatenate([support_class, query_class]),
      strict=True,
    ):
      assert class_of_label.setdefault(int(label), int(c)) == c
    assert sorted(class_of_label) == list(range(n_way))
    assert len(set(class_of_label.values())) == n_way
    # Within a class, its K + Q drawings are distinct: no query is also a shot.
    for label, c in class_of_label.items():
      drawings = np.concatenate(
        [
          support_drawing[episode.support_labels == label],
          query_drawing[episode.query_labels == label],
        ]
      )
      assert len(drawings) == k_shot + n_query
      assert len(set(drawings.tolist())) == len(drawings), (i, label, c)


def test_class_order_is_permuted_across_episodes():
  sampler = EpisodeSampler(coded_images(), EpisodeShape(5, 1, 1), seed=0)
  orders = []
  for i in range(50):
    classes, _ = decode(sampler.episode(i).support)  # One shot: row n is class of label n.
    orders.append(classes)
  orders = np.stack(orders)
  # Label 0 is not tied to one class, nor are labels given in increasing class order.
  assert len(set(orders[:, 0].tolist())) > 10
  assert any((np.diff(order) < 0).any() for order in orders)
  # The set of classes varies too, and every class turns up over many episodes.
  assert len({frozenset(order.tolist()) for order in orders}) == 50
  assert set(orders.ravel().tolist()) == set(range(CLASSES))


def test_drawings_vary_across_episodes():
  sampler = EpisodeSampler(coded_images(classes=5), EpisodeShape(5, 1, 1), seed=0)
  shots = set()
  for i in range(40):
    episode = sampler.episode(i)
    classes, drawings = decode(episode.support)
    shots.update(zip(classes.tolist(), drawings.tolist(), strict=True))
  assert len(shots) > 5 * DRAWINGS // 2, "the same few drawings keep coming back"


@pytest.mark.parametrize(
  ("shape", "fix"),
  [
    (EpisodeShape(n_way=31, k_shot=1, n_query=1), "Lower n_way to at most 30"),
    (EpisodeShape(n_way=5, k_shot=5, n_query=16), "Lower n_query to at most 15"),
    (EpisodeShape(n_way=5, k_shot=21, n_query=1), "only 20 images"),
    (EpisodeShape(n_way=5, k_shot=0, n_query=15), "must be >= 1"),
    (EpisodeShape(n_way=5, k_shot=1, n_query=0), "must be >= 1"),
    (EpisodeShape(n_way=0, k_shot=1, n_query=1), "must be >= 1"),
  ],
)
def test_impossible_shapes_fail_at_construction(shape, fix):
  data = coded_images()
  with pytest.raises(EpisodeShapeError, match=fix) as error:
    EpisodeSampler(data, shape, seed=0, what="meta-test episodes")
  assert "meta-test episodes" in str(error.value)
  with pytest.raises(EpisodeShapeError, match=fix):
    shape.check(data, "val")


def test_largest_possible_shape_is_allowed():
  data = coded_images()
  sampler = EpisodeSampler(data, EpisodeShape(CLASSES, 5, DRAWINGS - 5), seed=0)
  episode = sampler.episode(0)
  classes, _ = decode(episode.support)
  assert set(classes.tolist()) == set(range(CLASSES))
