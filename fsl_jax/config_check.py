"""Turns a bad ``--config`` flag into one line that names the key and the fix.

absl and ml_collections report an unknown key with a traceback and a wrong type
with "invalid literal for int()". ``parse_flags`` (main's absl flags parser)
catches both, loads the config file itself, and says which override is wrong:
an unknown key with the closest known keys (difflib), or a value that does not
parse as the default's type. It also rejects tuples whose elements have the
wrong type (``--config.data.train_rotations=abc``), which ml_collections accepts.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys

import ml_collections
from absl import flags

EXIT_CODE = 2  # As main's other user errors.
_TYPE_NAMES = {bool: "a bool (true/false)", int: "an int", float: "a number", str: "a string"}


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags parser, with bad config flags reported as ``error: ...`` and exit 2."""
  try:
    remaining = flags.FLAGS(argv)
    flags.FLAGS.config.keys()  # A config file that failed to load raises only when read.
  except Exception as e:  # Flag, key and attribute errors, and config-file failures.
    _fail(explain(argv, e))
  problem = check_overrides(argv, _default_config(argv))
  if problem:
    _fail(problem)
  return remaining


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_CODE)


def _config_arg(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.removeprefix("--config=")
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """'configs/x.py:quick' -> get_config('quick'), as ml_collections would load it."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("fsl_jax_config_file", path)
  if module_spec is None or module_spec.loader is None:
    raise FileNotFoundError(path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _default_config(argv: list[str]) -> ml_collections.ConfigDict | None:
  spec = _config_arg(argv)
  if spec is None:
    return None
  try:
    return load_config_file(spec)
  except Exception:
    return None


def _overrides(argv: list[str]) -> list[tuple[str, str | None]]:
  """('train.num_steps', '3') for each --config.train.num_steps=3; None for a bare flag."""
  out = []
  for arg in argv:
    for prefix in ("--config.", "--noconfig."):
      if arg.startswith(prefix):
        key, sep, value = arg.removeprefix(prefix).partition("=")
        out.append((key, value if sep else None))
  return out


def explain(argv: list[str], error: Exception) -> str:
  """One line saying what is wrong with the command line's config flags."""
  spec = _config_arg(argv)
  if spec is not None:
    try:
      config = load_config_file(spec)
    except FileNotFoundError:
      return f"--config={spec}: no such file. Pass a file from configs/, e.g. configs/proto_omniglot5w1s.py."
    except Exception as e:
      return f"--config={spec}: cannot load it: {_first_line(e)}"
    problem = check_overrides(argv, config)
    if problem:
      return problem
  return _first_line(error)


def check_overrides(argv: list[str], config: ml_collections.ConfigDict | None) -> str | None:
  """The first override that names an unknown key or has a value of the wrong type."""
  if config is None:
    return None
  for key, value in _overrides(argv):
    problem = _check_one(config, key, value)
    if problem:
      return problem
  return None


def _check_one(config: ml_collections.ConfigDict, key: str, value: str | None) -> str | None:
  node, parent, done = config, config, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = "config" + "".join(f".{p}" for p in done)
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, known, n=3)
      hint = (
        f" Did you mean {', '.join(f'--{where}.{c}' for c in close)}?"
        if close
        else f" Known keys of {where}: {', '.join(known)}."
      )
      return f"unknown config key --config.{key}: {where} has no {part!r}.{hint}"
    done.append(part)
    parent, node = node, node[part]
  if value is None or isinstance(node, ml_collections.ConfigDict):
    return None
  expected = parent.get_type(done[-1]) if node is None else type(node)
  if _parses_as(value, expected, node):
    return None
  example = node if node is not None else "..."
  kind = _TYPE_NAMES.get(expected, f"a {expected.__name__}")
  if isinstance(node, tuple) and node:
    kind = f"a tuple of {type(node[0]).__name__}s"
    example = "'" + str(node).replace(" ", "") + "'"
  return f"--config.{key}={value}: config.{key} must be {kind}, e.g. --config.{key}={example}."


def _parses_as(value: str, expected: type, default) -> bool:
  if expected is str:
    return True
  if expected is bool:
    return value.lower() in ("true", "false", "1", "0", "yes", "no")
  if expected in (int, float):
    try:
      expected(value)
    except ValueError:
      return False
    return True
  if expected in (tuple, list):
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      return False
    parsed = parsed if isinstance(parsed, (tuple, list)) else (parsed,)
    kinds = {type(x) for x in default or ()}
    if kinds == {float}:
      kinds = {float, int}
    return not kinds or all(type(x) in kinds for x in parsed)
  return True


def _first_line(error: BaseException) -> str:
  text = str(error).strip().strip("'\"")
  lines = [line for line in text.replace("\\n", "\n").splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__
