"""The background-thread prefetcher: order, errors, and stopping when closed."""

from __future__ import annotations

import threading
import time

import pytest

from fsl_jax.data.prefetch import prefetch


def prefetch_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name == "episode-prefetch"]


def wait_until(condition, timeout: float = 3.0) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.01)
  return condition()


@pytest.fixture(autouse=True)
def _no_threads_left():
  """Every test must leave no prefetch thread of its own behind."""
  before = set(prefetch_threads())
  yield
  assert wait_until(lambda: not set(prefetch_threads()) - before), "a prefetch thread leaked"


def test_order_preserved_with_uneven_work():
  def produce(i):
    time.sleep(0.002 * ((i * 7) % 5))  # Uneven durations must not reorder items.
    return i * i

  assert list(prefetch(produce, range(3, 40), depth=3)) == [i * i for i in range(3, 40)]


def test_empty_range_and_step():
  assert list(prefetch(lambda i: i, range(0))) == []
  assert list(prefetch(lambda i: -i, range(10, 0, -3), depth=1)) == [-10, -7, -4, -1]


def test_runs_ahead_of_the_consumer():
  produced = []
  it = prefetch(produced.append, range(100), depth=2)
  next(it)
  # The producer fills the queue (depth 2) and holds one more item, then waits.
  assert wait_until(lambda: len(produced) >= 3)
  time.sleep(0.2)
  assert len(produced) <= 4, "the producer must not run further ahead than depth"
  it.close()


def test_producer_exception_reraised_at_the_failing_item():
  def produce(i):
    if i == 3:
      raise ValueError(f"bad item {i}")
    return i

  got = []
  with pytest.raises(ValueError, match="bad item 3"):
    for item in prefetch(produce, range(10)):
      got.append(item)
  assert got == [0, 1, 2]


@pytest.mark.parametrize("count", [2, 1000])
def test_close_early_stops_the_producer(count):
  calls = []

  def produce(i):
    calls.append(i)
    return i

  before = set(prefetch_threads())
  it = prefetch(produce, range(count), depth=1)
  assert next(it) == 0
  (thread,) = set(prefetch_threads()) - before
  assert wait_until(lambda: len(calls) >= 2)
  time.sleep(0.2)  # Let the producer reach the point where it waits on the full queue.
  it.close()
  # With count=2 the producer has finished and waits to hand over its end marker; with
  # 1000 it waits to hand over an item. Either way it must stop, and produce no more.
  assert wait_until(lambda: not thread.is_alive())
  stopped_at = len(calls)
  time.sleep(0.2)
  assert len(calls) == stopped_at <= 3
  with pytest.raises(StopIteration):
    next(it)


def test_close_waits_for_the_item_in_flight_then_the_thread_has_ended():
  # The process may exit right after close: a producer still inside produce() (a
  # device transfer in C++) when the interpreter exits aborts the process.
  started = threading.Event()

  def produce(i):
    if i == 2:
      started.set()
      time.sleep(0.5)
    return i

  before = set(prefetch_threads())
  it = prefetch(produce, range(10), depth=1)
  assert next(it) == 0
  (thread,) = set(prefetch_threads()) - before
  assert started.wait(timeout=3.0)  # Item 1 is queued; item 2 is in produce().
  it.close()
  assert not thread.is_alive()


def test_close_after_producer_error_stops_the_producer():
  def produce(i):
    if i == 2:  # Item 1 fills the queue, so the error has to wait for room.
      raise RuntimeError("boom")
    return i

  before = set(prefetch_threads())
  it = prefetch(produce, range(5), depth=1)
  assert next(it) == 0
  (thread,) = set(prefetch_threads()) - before
  time.sleep(0.2)  # The producer fails and waits to hand over the error.
  it.close()
  assert wait_until(lambda: not thread.is_alive())
