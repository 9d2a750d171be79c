"""Tests for fsl_jax/huge_pages.py: when to re-execute, and that it really does."""

import os
import subprocess
import sys

import pytest

from fsl_jax import huge_pages


@pytest.mark.parametrize(
  "text, mode",
  [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"), ("", None)],
)
def test_thp_mode_reads_the_bracketed_word(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert huge_pages.thp_mode(str(path)) == mode


def test_thp_mode_of_a_missing_file_is_none(tmp_path):
  assert huge_pages.thp_mode(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
  "environ, glibc, mode, expected",
  [
    ({}, (2, 36), "madvise", True),
    ({}, (2, 34), "madvise", False),  # The tunable arrived in glibc 2.35.
    ({}, None, "madvise", False),  # musl, macOS.
    ({}, (2, 36), "always", False),  # Already huge pages.
    ({}, (2, 36), "never", False),
    ({}, (2, 36), None, False),
    ({"FSL_JAX_HUGE_PAGES": "0"}, (2, 36), "madvise", False),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", False),  # User's choice.
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise", True),
  ],
)
def test_should_reexec(environ, glibc, mode, expected):
  assert huge_pages.should_reexec(environ, glibc, mode) is expected


def test_tunables_keep_what_the_user_set():
  assert huge_pages.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
  assert (
    huge_pages.tunables_with_huge_pages("glibc.malloc.arena_max=2")
    == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  )


def _child(environ_update):
  code = (
    "import os, sys; print('start', flush=True);"
    "from fsl_jax import huge_pages; huge_pages.reexec_with_huge_pages();"
    "print(os.environ.get('GLIBC_TUNABLES', ''), huge_pages.active(), sys.argv[1:])"
  )
  env = {**os.environ, **environ_update}
  env.pop("GLIBC_TUNABLES", None)
  return subprocess.run(
    [sys.executable, "-c", code, "arg1", "--flag=2"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.splitlines()


def test_reexec_sets_the_tunable_and_keeps_the_arguments():
  if not huge_pages.should_reexec({}, huge_pages.glibc_version(), huge_pages.thp_mode()):
    pytest.skip("this host's glibc or kernel cannot put malloc's mappings on huge pages")
  lines = _child({})
  # The first process printed 'start', re-executed, and the second printed it again.
  assert lines == ["start", "start", "glibc.malloc.hugetlb=1 True ['arg1', '--flag=2']"]


def test_opt_out_runs_once():
  lines = _child({"FSL_JAX_HUGE_PAGES": "0"})
  already = huge_pages.thp_mode() == "always"
  assert lines == ["start", f" {already} ['arg1', '--flag=2']"]
