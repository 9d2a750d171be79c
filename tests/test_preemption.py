"""SIGTERM: a flag while training, then a checkpoint at that step and Preempted."""

import os
import signal

import pytest

from configs import proto_omniglot5w1s
from fsl_jax import train
from fsl_jax.runtime.checkpointing import Checkpoints
from fsl_jax.runtime.preemption import PREEMPTED_EXIT_CODE, Preempted, SigtermFlag


def test_sigterm_sets_the_flag_and_the_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  with SigtermFlag() as flag:
    assert not flag.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.requested
  assert signal.getsignal(signal.SIGTERM) == before
  assert PREEMPTED_EXIT_CODE == 75


def test_sigterm_mid_run_saves_the_step_and_raises_preempted(tmp_path, monkeypatch, omniglot_small):
  config = proto_omniglot5w1s.get_config("quick")
  config.data.split = "small"
  config.model.filters, config.model.num_blocks = 8, 2
  config.train.n_way, config.train.num_steps = 10, 20
  config.train.checkpoint_every = config.train.eval_every = config.train.log_every = 100
  monkeypatch.setattr(train, "load_dataset", lambda data: omniglot_small)
  compile_step = train.compile_train_step

  def make_signalling(*args):
    step = compile_step(*args)

    def signalling(state, batch):
      if int(state.step) == 2:  # Arrives while step 3 runs.
        os.kill(os.getpid(), signal.SIGTERM)
      return step(state, batch)

    return signalling

  monkeypatch.setattr(train, "compile_train_step", make_signalling)
  with pytest.raises(Preempted, match="after step 3") as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert error.value.step == 3
  checkpoints = Checkpoints(str(tmp_path))
  assert checkpoints.manager.all_steps() == [3]
  checkpoints.close()
  assert not (tmp_path / "results.json").exists()
