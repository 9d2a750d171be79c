"""This process's host memory: resident now and at its peak, in MiB.

Linux reports both in /proc/self/status (VmRSS, VmHWM). Elsewhere the peak comes
from getrusage (kilobytes on Linux, bytes on macOS) and the current size is
unknown (NaN).
"""

from __future__ import annotations

import resource
import sys

STATUS_FILE = "/proc/self/status"


def _status_mb(field: str) -> float | None:
  try:
    with open(STATUS_FILE) as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024.0  # kB
  except OSError:
    pass
  return None


def resident_mb() -> float:
  """Resident set size now (MiB); NaN where the system does not report it."""
  value = _status_mb("VmRSS")
  return float("nan") if value is None else value


def peak_resident_mb() -> float:
  """The largest resident set size so far (MiB)."""
  value = _status_mb("VmHWM")
  if value is not None:
    return value
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0
