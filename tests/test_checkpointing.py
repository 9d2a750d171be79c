"""Checkpoints: round trip, the best by validation accuracy, what is kept, and errors."""

import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from orbax.checkpoint._src.path import async_path

from fsl_jax.models.cpu.conv4 import CpuConv4
from fsl_jax.runtime.checkpointing import CheckpointError, Checkpoints
from fsl_jax.state import create_train_state


def make_state(seed=0):
  model = CpuConv4(filters=4, num_blocks=2)
  return create_train_state(model, optax.adam(1e-3), jnp.zeros((2, 8, 8, 1), jnp.uint8), seed)


def test_round_trip_best_step_and_retention(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep_latest=2)
  saved = {}
  val = {10: 0.5, 20: 0.9, 30: 0.7, 40: None, 50: 0.6}
  for step, accuracy in val.items():
    state = make_state(seed=step).replace(step=jnp.asarray(step, jnp.int32))
    saved[step] = jax.device_get(state)
    checkpoints.save(state, val_accuracy=accuracy)
  assert checkpoints.latest_step() == 50
  assert checkpoints.best_step() == 20
  # Kept: the two latest (40, 50) and the best (20); the rest are deleted.
  assert sorted(checkpoints.manager.all_steps()) == [20, 40, 50]
  restored = checkpoints.restore(20, make_state())
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), saved[20])
  checkpoints.close()

  reopened = Checkpoints(str(tmp_path))
  assert reopened.latest_step() == 50 and reopened.best_step() == 20
  reopened.close()


def test_no_temporary_folder_is_left_after_a_save(tmp_path):
  checkpoints = Checkpoints(str(tmp_path))
  checkpoints.save(make_state())
  names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
  assert "0" in names
  assert not [n for n in names if "tmp" in n]
  checkpoints.close()


def test_a_checkpoint_of_another_model_shape_is_a_clear_error_and_is_kept(tmp_path):
  checkpoints = Checkpoints(str(tmp_path))
  checkpoints.save(make_state())
  checkpoints.close()
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  other = create_train_state(
    CpuConv4(filters=8, num_blocks=2), optax.adam(1e-3), jnp.zeros((2, 8, 8, 1), jnp.uint8), 0
  )
  reopened = Checkpoints(str(tmp_path))
  with pytest.raises(CheckpointError) as error:
    reopened.restore(0, other)
  message = str(error.value)
  assert str(tmp_path / "checkpoints") in message and "Use a new --workdir" in message
  assert "params/Conv3x3_0/kernel has shape (3, 3, 1, 4) in the checkpoint" in message
  assert "(3, 3, 1, 8) in this config" in message
  reopened.close()
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("where", ["mkdir", "rename"])  # Creating the step, committing it.
def test_a_full_disk_during_a_save_keeps_the_earlier_checkpoints(tmp_path, monkeypatch, where):
  checkpoints = Checkpoints(str(tmp_path))
  saved = {}
  for step in (1, 2):
    state = make_state(seed=step).replace(step=jnp.asarray(step, jnp.int32))
    saved[step] = jax.device_get(state)
    checkpoints.save(state)

  async def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  with monkeypatch.context() as patch:
    patch.setattr(async_path, where, disk_full)
    with pytest.raises(CheckpointError) as error:
      checkpoints.save(make_state(seed=3).replace(step=jnp.asarray(3, jnp.int32)))
  message = str(error.value)
  assert "could not save the checkpoint of step 3" in message
  assert "No space left on device" in message and "(steps [1, 2]) are intact" in message
  assert "resume from step 2" in message
  # The failed save's temporary folder is gone at once: on a full disk it holds the
  # space the message asks to free.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  checkpoints.close()

  reopened = Checkpoints(str(tmp_path))  # As the next run would.
  assert reopened.latest_step() == 2
  for step in (1, 2):
    restored = reopened.restore(step, make_state())
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), saved[step])
  reopened.save(make_state(seed=3).replace(step=jnp.asarray(3, jnp.int32)))  # Space is back.
  assert reopened.latest_step() == 3
  reopened.close()
