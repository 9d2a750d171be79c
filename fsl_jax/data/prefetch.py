"""Runs a producer on a background thread so host work overlaps device compute.

Closing the iterator returns only once that thread has ended. A thread still
inside ``produce`` (sampling, or a device transfer in XLA's C++ code) when the
interpreter exits is killed as it takes the GIL back; the unwinding crosses C++
frames that cannot be unwound, and the process aborts. Without the join, a
SIGTERM usually finds the thread still alive at exit, and a preempted run can
exit with SIGABRT (-6) instead of 75, which ends a ``until ...; [ $? -ne 75 ]
&& break; done`` restart loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(produce: Callable[[int], T], indices: range, depth: int = 2) -> Iterator[T]:
  """Yields ``produce(i)`` for i in ``indices``, computed up to ``depth`` items ahead.

  ``produce`` runs on one daemon thread; an exception there is re-raised in the
  consumer at the item that failed. Closing the iterator (``train.py`` does so in
  a ``finally``) stops the thread and waits for it to end: at most the
  ``produce`` call in flight, plus 0.1 s.
  """
  items: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item) -> bool:
    """Puts ``item`` unless the consumer has stopped; False once it has."""
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def worker():
    try:
      for i in indices:
        if stop.is_set() or not put(produce(i)):
          return
      put(_DONE)
    except BaseException as e:  # Handed to the consumer, which re-raises it.
      put(e)

  thread = threading.Thread(target=worker, daemon=True, name="episode-prefetch")
  thread.start()
  try:
    while True:
      item = items.get()
      if item is _DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join()
