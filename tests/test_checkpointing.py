"""Checkpoints: round trip, the best by validation accuracy, and what is kept."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax.checkpointing import Checkpoints
from fsl_jax.models.conv4 import Conv4
from fsl_jax.state import create_train_state


def make_state(seed=0):
  model = Conv4(filters=4, num_blocks=2)
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
