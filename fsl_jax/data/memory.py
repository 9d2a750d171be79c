"""Host memory: how much is available, and a clear error instead of a swap storm."""

from __future__ import annotations

import os

from fsl_jax.errors import DataError

# Leave this much of the available memory to everything else (the model, XLA, tfds).
HEADROOM = 0.9


def _cgroup_available() -> int | None:
  """Bytes left under a cgroup v2 memory limit (containers), else None."""
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      limit = f.read().strip()
    with open("/sys/fs/cgroup/memory.current") as f:
      current = int(f.read())
  except (OSError, ValueError):
    return None
  return None if limit == "max" else max(0, int(limit) - current)


def available_bytes() -> int:
  """Memory this process can still take without swapping: MemAvailable (or free pages),
  capped by a cgroup limit."""
  available = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
          break
  except OSError:
    pass
  if available is None:
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  cgroup = _cgroup_available()
  return available if cgroup is None else min(available, cgroup)


def check_available(needed: int, what: str, fix: str = "") -> None:
  """Raises DataError naming ``what``, both numbers and the fix if ``needed`` bytes would not fit."""
  available = available_bytes()
  if needed > HEADROOM * available:
    raise DataError(
      f"{what} needs about {needed / 2**30:.2f} GiB of host memory, but only "
      f"{available / 2**30:.2f} GiB are available ({HEADROOM:.0%} of it may be used). "
      f"Free memory or use a host with more{fix}."
    )
