"""One training run per workdir: an exclusive ``fcntl.flock`` on ``workdir/train.lock``.

The kernel releases a flock when its process exits, however it exits (SIGKILL,
OOM, a crash), so a lock file left by a dead run never blocks the next one. The
file holds the owner's pid, host and start time, for the refusal message only.
flock works on local disks; on NFS and object-store mounts (gcsfuse) it may be a
no-op, so the lock protects against two runs on one machine, not across hosts.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

from fsl_jax.errors import FslError

LOCK_NAME = "train.lock"


class WorkdirLockedError(FslError):
  """Another live process holds the workdir's lock."""


class WorkdirLock:
  """Context manager holding the exclusive lock on ``workdir`` (created if missing).

  Args:
    workdir: the run's folder.
    enabled: False makes it a no-op (processes other than 0 of a multi-host run,
      which share process 0's workdir).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self.enabled = enabled
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    if not self.enabled:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise WorkdirLockedError(
        f"workdir {os.path.dirname(self.path)} is in use by another run ({owner}). "
        "Wait for it to finish or stop it, or pass another --workdir."
      ) from None
    os.ftruncate(fd, 0)
    owner = f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%F %T %Z')}"
    os.write(fd, owner.encode() + b"\n")
    os.fsync(fd)
    self._fd = fd
    return self

  def __exit__(self, *exc_info) -> None:
    if self._fd is not None:
      # The file stays: deleting it would race with a run that opened it meanwhile.
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
