"""The host allocator: faster XLA:CPU steps by not faulting in memory every step.

XLA:CPU allocates every step's output and scratch buffers afresh, many of them
large (``python -m fsl_jax.bench`` reports ``xla_temp_bytes``). glibc serves each
allocation above 32 MiB (its largest mmap threshold on 64-bit) with a new
``mmap`` and returns it on ``free``, so the kernel faults in and zeroes every
page again, every step: writing into a fresh buffer costs many times what
writing into a reused one does.

Two fixes, in order of preference (docs/performance.md has the measurements):

* **tcmalloc** (``apt install libtcmalloc-minimal4``), loaded with ``LD_PRELOAD``
  and ``TCMALLOC_RELEASE_RATE=0`` so that freed memory is kept for the next step.
* **glibc's huge pages** (glibc >= 2.35, kernel THP mode ``madvise``):
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` backs those mappings with 2 MiB pages,
  512 times fewer faults, though each step still zeroes them.

Both are read once, when a process starts, so :func:`reexec_with_fast_allocator`
re-executes the command line with the environment they need. The command-line
entry points (``fsl_jax.main``, ``fsl_jax.bench``) call it first. Set
``FSL_JAX_HOST_ALLOCATOR`` to ``tcmalloc``, ``huge_pages`` or ``system`` to
choose (default ``auto``: the first available). Numbers are unchanged: only
where the host's memory comes from.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import sys

CHOICE = "FSL_JAX_HOST_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "huge_pages", "system")
TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode, e.g. "madvise", or None if unknown.

  The file reads like ``always [madvise] never``; the bracketed word is the mode.
  """
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library if it is glibc, else None."""
  name, version = platform.libc_ver()
  if name != "glibc":
    return None
  try:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def find_tcmalloc() -> str | None:
  """tcmalloc's shared library name on Linux, e.g. "libtcmalloc_minimal.so.4", or None.

  Elsewhere None: ``LD_PRELOAD`` is how Linux's dynamic linker loads it first.
  """
  if not sys.platform.startswith("linux"):
    return None
  return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def environment_changes(
  environ: dict[str, str],
  tcmalloc: str | None,
  glibc: tuple[int, int] | None,
  mode: str | None,
) -> dict[str, str]:
  """The variables to set before re-executing; empty when nothing would change.

  Args:
    environ: the process environment.
    tcmalloc: :func:`find_tcmalloc`.
    glibc: :func:`glibc_version`.
    mode: :func:`thp_mode`. With "always" the kernel already uses huge pages; with
      "never" or unknown, glibc's tunable cannot.

  Raises:
    ValueError: FSL_JAX_HOST_ALLOCATOR is not one of CHOICES.
  """
  choice = environ.get(CHOICE, "auto")
  if choice not in CHOICES:
    raise ValueError(f"{CHOICE} must be one of {', '.join(CHOICES)}; got {choice!r}.")
  preload = environ.get("LD_PRELOAD", "")
  tunables = environ.get("GLIBC_TUNABLES", "")
  if choice == "system" or any(name in preload for name in PRELOADED_ALLOCATORS):
    return {}
  if choice in ("auto", "tcmalloc") and tcmalloc:
    return {
      "LD_PRELOAD": f"{tcmalloc}:{preload}" if preload else tcmalloc,
      # Keep freed pages for the next step instead of handing them back to the kernel.
      "TCMALLOC_RELEASE_RATE": environ.get("TCMALLOC_RELEASE_RATE", "0"),
    }
  huge_pages_possible = glibc is not None and glibc >= (2, 35) and mode == "madvise"
  if choice in ("auto", "huge_pages") and huge_pages_possible and TUNABLE not in tunables:
    return {"GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"}
  return {}


def reexec_with_fast_allocator() -> None:
  """Re-executes this command line with a faster allocator, if one helps; else returns.

  Call it first thing in an entry point: ``os.execve`` replaces the process, so
  anything done before it is done twice. ``sys.orig_argv`` (Python 3.10+)
  reproduces ``python -m module`` and ``python -c`` exactly. The new process
  finds its own settings in the environment and does not re-execute again.
  """
  changes = environment_changes(dict(os.environ), find_tcmalloc(), glibc_version(), thp_mode())
  if not changes or not getattr(sys, "orig_argv", None):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, **changes})


def active() -> str:
  """What serves this process's large host buffers: "tcmalloc", "huge_pages" or "system"."""
  preload = os.environ.get("LD_PRELOAD", "")
  for name in PRELOADED_ALLOCATORS:
    if name in preload:
      return name
  mode = thp_mode()
  if mode == "always" or (
    mode == "madvise" and f"{TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "")
  ):
    return "huge_pages"
  return "system"


def release_free_memory(step_scratch_bytes: int = 0) -> str | None:
  """Hands the memory the allocator holds but no live object uses back to the kernel.

  Compiling a step frees hundreds of megabytes in small blocks. glibc keeps them
  in its arenas, and tcmalloc keeps every freed page (TCMALLOC_RELEASE_RATE=0),
  so they stay in the resident set though a step's buffers reuse few of them.
  Call it after compiling, before the steps run: the steps' own buffers are then
  faulted in once and kept.

  tcmalloc does not merge pages it has handed back with pages it kept, so a later
  step's scratch buffer (one block of XLA's temp bytes) can find no free run long
  enough and map a second one. Under tcmalloc the release is therefore skipped
  when the free bytes are fewer than ``step_scratch_bytes``: it would cost more
  than it saves.

  Returns:
    The function called ("MallocExtension_ReleaseFreeMemory" or "malloc_trim"),
    or None if none was (no such function, or skipped).
  """
  process = ctypes.CDLL(None)
  tcmalloc_release = getattr(process, "MallocExtension_ReleaseFreeMemory", None)
  if tcmalloc_release is not None:
    if _tcmalloc_free_bytes(process) < step_scratch_bytes:
      return None
    tcmalloc_release()
    return "MallocExtension_ReleaseFreeMemory"
  trim = getattr(process, "malloc_trim", None)
  if trim is None:
    return None
  trim(0)
  return "malloc_trim"


def _tcmalloc_free_bytes(process: ctypes.CDLL) -> int:
  """Bytes in tcmalloc's page heap that no allocation uses (0 if it cannot say)."""
  value = ctypes.c_size_t(0)
  get = getattr(process, "MallocExtension_GetNumericProperty", None)
  if get is None or not get(b"tcmalloc.pageheap_free_bytes", ctypes.byref(value)):
    return 0
  return value.value
