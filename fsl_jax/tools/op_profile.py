"""Where a step's time goes: the slowest XLA operations of a compiled step.

``python -m fsl_jax.bench --profile_top N`` traces a few steps with
``jax.profiler`` and lists the N operations (fusions, matmuls, copies) with the
most time per step, each with its output shape and the JAX source operation it
came from. On XLA:CPU the per-operation events need
``--xla_cpu_enable_xprof_traceme=true`` in ``XLA_FLAGS`` before the backend
starts, which :func:`enable_cpu_op_events` adds.

Operations that run concurrently on different threads each count their own
wall time, so the list ranks costs; its sum can exceed the step time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

CPU_OP_EVENTS = "--xla_cpu_enable_xprof_traceme=true"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)[{ ](.*)$", re.M)
_SOURCE = re.compile(r'op_name="([^"]*)"')


def enable_cpu_op_events() -> None:
  """Adds the XLA:CPU per-operation trace flag to XLA_FLAGS (before any computation)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if CPU_OP_EVENTS not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_OP_EVENTS}".strip()


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (output shape, JAX source op) from a compiled module's text."""
  found = {}
  for name, shape, rest in _INSTRUCTION.findall(hlo_text):
    source = _SOURCE.search(rest)
    found.setdefault(name, (shape, source.group(1) if source else ""))
  return found


def top_ops(run_steps, num_steps: int, hlo_text: str, top: int) -> list[dict]:
  """The ``top`` XLA operations by milliseconds per step.

  Args:
    run_steps: a function that runs ``num_steps`` steps and blocks until done.
    num_steps: how many steps it runs (the times are divided by it).
    hlo_text: ``compiled.as_text()`` of the step, to name shapes and sources.
    top: how many to return.

  Returns:
    [{"op", "ms_per_step", "shape", "source"}], slowest first; empty if the
    backend recorded no per-operation events.
  """
  known = instructions(hlo_text)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      run_steps()
    paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
      return []
    with gzip.open(paths[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  micros = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in known:
      micros[event["name"]] += event.get("dur", 0)
  return [
    {
      "op": name,
      "ms_per_step": total / num_steps / 1e3,
      "shape": known[name][0],
      "source": known[name][1],
    }
    for name, total in micros.most_common(top)
  ]
