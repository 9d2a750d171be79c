"""Tiny training runs for the device-count tests, shared by pytest and its subprocesses.

``python tests/sharded_runs.py SPEC.json`` (with the repository root on
PYTHONPATH, and XLA_FLAGS set by the caller) runs each ``{"kind", "workdir"}`` of
the spec through ``train_and_evaluate`` and writes, next to the spec, what the
runs' jitted steps returned: the partition specs of the train step's outputs and
of the eval step's outputs, and the device count.
"""

from __future__ import annotations

import json
import sys

# Everything a tiny run overrides in the quick configs, as ``--config.KEY=VALUE``
# flags would (the multi-process test passes them on the command line).
COMMON = {
  "data.split": "small",
  "model.filters": 8,
  "model.num_blocks": 2,
  "train.n_way": 5,
  "train.k_shot": 1,
  "train.n_query": 1,
  "train.meta_batch_size": 8,
  "train.num_steps": 20,
  "train.log_every": 10,
  "train.eval_every": 10,
  "train.checkpoint_every": 10,
  "eval.n_query": 1,
  "eval.val_episodes": 8,
  "eval.test_episodes": 8,
  "eval.batch_size": 8,
}
KINDS = {
  "protonet": ("configs/proto_omniglot5w1s.py", COMMON),
  # Second order (first_order is False in the config), one inner step.
  "maml": ("configs/maml_omniglot5w1s.py", {**COMMON, "maml.test_inner_steps": 1}),
}


def cli_flags(kind: str, data_dir: str, manual_dir: str) -> list[str]:
  """The fsl_jax.main flags of a tiny run (without --workdir)."""
  path, overrides = KINDS[kind]
  values = {**overrides, "data.data_dir": data_dir, "data.manual_dir": manual_dir}
  return [f"--config={path}:quick", *(f"--config.{k}={v}" for k, v in values.items())]


def tiny_config(kind: str, data_dir: str, manual_dir: str):
  """The config ``cli_flags`` describes, built in-process."""
  import importlib

  path, overrides = KINDS[kind]
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  config = module.get_config("quick")
  values = {**overrides, "data.data_dir": data_dir, "data.manual_dir": manual_dir}
  for key, value in values.items():
    section, name = key.split(".")
    setattr(config[section], name, value)
  return config


def specs(tree) -> list[str]:
  import jax

  return sorted({str(leaf.sharding.spec) for leaf in jax.tree.leaves(tree)})


def run(kind: str, workdir: str, data_dir: str, manual_dir: str) -> dict:
  """train_and_evaluate, recording the partition specs its step functions return."""
  from fsl_jax import train

  seen = {}

  def recording(name, make):
    def made(*args, **kwargs):
      step = make(*args, **kwargs)

      def call(*call_args):
        out = step(*call_args)
        seen.setdefault(name, specs(out))
        return out

      return call

    return made

  # The train step is compiled before its first call (train.compile_train_step).
  original = train.compile_train_step, train.make_eval_step
  train.compile_train_step = recording("train", train.compile_train_step)
  train.make_eval_step = recording("eval", train.make_eval_step)
  try:
    train.train_and_evaluate(tiny_config(kind, data_dir, manual_dir), workdir)
  finally:
    train.compile_train_step, train.make_eval_step = original
  return seen


def main(spec_path: str) -> None:
  import jax

  with open(spec_path) as f:
    spec = json.load(f)
  out = {"devices": jax.device_count(), "runs": []}
  for item in spec["runs"]:
    out["runs"].append(run(item["kind"], item["workdir"], spec["data_dir"], spec["manual_dir"]))
  with open(spec_path + ".out", "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main(sys.argv[1])
