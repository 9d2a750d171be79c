"""Tests for fsl_jax/runtime/host_allocator.py: which allocator, and that the re-execution happens."""

import os
import subprocess
import sys

import pytest

from fsl_jax.runtime import host_allocator

TC = "libtcmalloc_minimal.so.4"


@pytest.mark.parametrize(
  "text, mode",
  [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"), ("", None)],
)
def test_thp_mode_reads_the_bracketed_word(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert host_allocator.thp_mode(str(path)) == mode


def test_thp_mode_of_a_missing_file_is_none(tmp_path):
  assert host_allocator.thp_mode(str(tmp_path / "absent")) is None


HUGE = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
TCMALLOC = {"LD_PRELOAD": TC, "TCMALLOC_RELEASE_RATE": "0"}


@pytest.mark.parametrize(
  "environ, tcmalloc, glibc, mode, expected",
  [
    ({}, TC, (2, 36), "madvise", TCMALLOC),  # tcmalloc first.
    ({}, None, (2, 36), "madvise", HUGE),
    ({}, None, (2, 34), "madvise", {}),  # The tunable arrived in glibc 2.35.
    ({}, None, None, "madvise", {}),  # musl, macOS.
    ({}, None, (2, 36), "always", {}),  # Already huge pages.
    ({}, None, (2, 36), "never", {}),
    ({}, None, (2, 36), None, {}),
    ({"FSL_JAX_HOST_ALLOCATOR": "system"}, TC, (2, 36), "madvise", {}),
    ({"FSL_JAX_HOST_ALLOCATOR": "huge_pages"}, TC, (2, 36), "madvise", HUGE),
    ({"FSL_JAX_HOST_ALLOCATOR": "tcmalloc"}, None, (2, 36), "madvise", {}),
    ({"LD_PRELOAD": "/x/libjemalloc.so.2"}, TC, (2, 36), "madvise", {}),  # The user's choice.
    (
      {"LD_PRELOAD": "libfoo.so"},
      TC,
      (2, 36),
      "madvise",
      {**TCMALLOC, "LD_PRELOAD": f"{TC}:libfoo.so"},
    ),
    (
      {"TCMALLOC_RELEASE_RATE": "2"},
      TC,
      (2, 36),
      "madvise",
      {**TCMALLOC, "TCMALLOC_RELEASE_RATE": "2"},
    ),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, None, (2, 36), "madvise", {}),
    (
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
      None,
      (2, 36),
      "madvise",
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"},
    ),
  ],
)
def test_environment_changes(environ, tcmalloc, glibc, mode, expected):
  assert host_allocator.environment_changes(environ, tcmalloc, glibc, mode) == expected


def test_a_misspelt_choice_names_the_valid_ones():
  with pytest.raises(ValueError, match="auto, tcmalloc, huge_pages, system; got 'tcmaloc'"):
    host_allocator.environment_changes(
      {"FSL_JAX_HOST_ALLOCATOR": "tcmaloc"}, TC, (2, 36), "madvise"
    )


def _child(choice):
  code = (
    "import sys; print('start', flush=True);"
    "from fsl_jax.runtime import host_allocator; host_allocator.reexec_with_fast_allocator();"
    "print(host_allocator.active(), sys.argv[1:])"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
  env["FSL_JAX_HOST_ALLOCATOR"] = choice
  return subprocess.run(
    [sys.executable, "-c", code, "arg1", "--flag=2"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.splitlines()


def _expected_allocator(choice):
  env = {"FSL_JAX_HOST_ALLOCATOR": choice}
  changes = host_allocator.environment_changes(
    env, host_allocator.find_tcmalloc(), host_allocator.glibc_version(), host_allocator.thp_mode()
  )
  if "LD_PRELOAD" in changes:
    return "tcmalloc", True
  if "GLIBC_TUNABLES" in changes:
    return "huge_pages", True
  return ("huge_pages" if host_allocator.thp_mode() == "always" else "system"), False


@pytest.mark.parametrize("choice", ["auto", "tcmalloc", "huge_pages", "system"])
def test_the_child_runs_with_the_chosen_allocator_and_the_same_arguments(choice):
  allocator, reexecuted = _expected_allocator(choice)
  lines = _child(choice)
  # A re-executed child prints 'start' twice: once before execve, once after.
  assert lines == ["start"] * (2 if reexecuted else 1) + [f"{allocator} ['arg1', '--flag=2']"]


def test_this_host_can_use_a_faster_allocator():
  """CI installs tcmalloc (.ci/run); other Linux hosts need glibc >= 2.35 and THP."""
  allocator, _ = _expected_allocator("auto")
  if sys.platform != "linux":
    pytest.skip("the allocator switch is for Linux hosts")
  assert allocator in ("tcmalloc", "huge_pages")


def test_tcmalloc_is_only_preloaded_on_linux(monkeypatch):
  monkeypatch.setattr(sys, "platform", "darwin")
  assert host_allocator.find_tcmalloc() is None


RELEASE_CHILD = """
import sys
from fsl_jax.runtime import host_allocator, host_memory
host_allocator.reexec_with_fast_allocator()
import numpy as np
# 3000 blocks of 96 KiB (below glibc's mmap threshold, so they come from its heap),
# freed but for every 100th: the free pages lie between live blocks, where neither
# allocator returns them by itself.
blocks = [np.ones(96 * 1024, np.uint8) for _ in range(3000)]
kept = blocks[::100]
del blocks
before = host_memory.resident_mb()
called = host_allocator.release_free_memory()
print(host_allocator.active(), called, before, host_memory.resident_mb())
"""


@pytest.mark.parametrize("choice", ["tcmalloc", "system"])
def test_release_hands_freed_memory_back_to_the_kernel(choice):
  allocator, _ = _expected_allocator(choice)
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
  env["FSL_JAX_HOST_ALLOCATOR"] = choice
  result = subprocess.run(
    [sys.executable, "-c", RELEASE_CHILD], env=env, capture_output=True, text=True, check=True
  )
  active, called, before, after = result.stdout.split()
  assert active == allocator
  expected = "MallocExtension_ReleaseFreeMemory" if allocator == "tcmalloc" else "malloc_trim"
  assert called == expected
  # About 280 MiB were freed; at least 200 MiB of it goes back.
  assert float(before) - float(after) > 200, (before, after)
