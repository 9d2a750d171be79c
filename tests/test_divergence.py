"""Non-finite steps: a no-op on device, a stop naming the step, or a lower-lr restart."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import proto_omniglot5w1s
from fsl_jax import train
from fsl_jax.data.episodes import Episode
from fsl_jax.errors import ConfigError
from fsl_jax.runtime import divergence
from fsl_jax.runtime.checkpointing import Checkpoints
from fsl_jax.state import TrainState
from fsl_jax.steps import make_train_step

BAD_STEP = 5  # 1-based: the step that runs with state.step == 4.


def small_config(data_dir):
  config = proto_omniglot5w1s.get_config("quick")
  config.data.split = "small"
  config.data.data_dir = str(data_dir)
  config.model.filters = 8
  config.model.num_blocks = 2  # A smaller graph compiles faster.
  config.train.n_way = 10
  config.train.num_steps = 8
  config.train.log_every = 4  # The check at step 8 comes after the bad step 5...
  config.train.checkpoint_every = 2  # ...and after the save due at step 6: it must not happen.
  config.train.eval_every = 100
  config.eval.val_episodes = config.eval.test_episodes = config.eval.batch_size = 5
  return config


@pytest.fixture
def nan_at_bad_step(monkeypatch, omniglot_small):
  """The first train step function made returns a NaN loss at BAD_STEP; later ones do not.

  Data come from the session's loaded small split instead of being read again.
  """
  monkeypatch.setattr(train, "load_dataset", lambda data: omniglot_small)
  made = []

  def make(loss_fn, tx, n_way, mesh=None, cpu_matmuls="ynnpack", tasks_per_chunk=0):
    if not made:
      real = loss_fn

      def loss_fn(params, batch_stats, episode, rng, *, n_way, train, step):
        loss, aux = real(params, batch_stats, episode, rng, n_way=n_way, train=train, step=step)
        return jnp.where(step == BAD_STEP - 1, jnp.nan, loss), aux

    made.append(tx)
    return make_train_step(loss_fn, tx, n_way, mesh, cpu_matmuls, tasks_per_chunk)

  monkeypatch.setattr(train, "make_train_step", make)
  return made


def test_a_non_finite_step_changes_nothing_but_the_step():
  params = {"w": jnp.ones((3,))}
  tx = optax.adam(0.1)
  state = TrainState(jnp.int32(6), params, {}, tx.init(params), jax.random.PRNGKey(0))

  def loss_fn(params, batch_stats, episode, rng, *, n_way, train, step):
    loss = jnp.sum(params["w"] * episode.support) * jnp.where(step == 6, jnp.nan, 1.0)
    return loss, ({"loss": loss}, batch_stats)

  step = make_train_step(loss_fn, tx, n_way=2)
  ones = jnp.ones((2, 3))  # [T=2, 3]
  episodes = Episode(ones, ones, ones, ones)
  bad, metrics = step(jax.tree.map(jnp.copy, state), episodes)
  assert int(bad.step) == 7 and int(metrics["first_bad_step"]) == 7
  np.testing.assert_array_equal(bad.params["w"], params["w"])
  jax.tree.map(np.testing.assert_array_equal, bad.opt_state, state.opt_state)
  good, metrics = step(bad, episodes)
  assert int(metrics["first_bad_step"]) == divergence.NO_BAD_STEP
  assert not np.array_equal(good.params["w"], params["w"])


def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(
  nan_at_bad_step, tmp_path, omniglot_small_data_dir
):
  with pytest.raises(divergence.DivergenceError) as error:
    train.train_and_evaluate(small_config(omniglot_small_data_dir), str(tmp_path))
  message = str(error.value)
  assert f"not finite at step {BAD_STEP}" in message
  assert "last good checkpoint, step 4" in message and str(tmp_path) in message
  assert "on_divergence=restart_lower_lr" in message
  checkpoints = Checkpoints(str(tmp_path))
  assert sorted(checkpoints.manager.all_steps()) == [2, 4]  # Not 6: saved after the bad step.
  kept = checkpoints.manager.restore(4)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(kept["params"]))
  checkpoints.close()
  assert not (tmp_path / "results.json").exists()


def test_restart_lower_lr_resumes_from_the_last_good_checkpoint(
  nan_at_bad_step, tmp_path, omniglot_small_data_dir
):
  config = small_config(omniglot_small_data_dir)
  config.train.on_divergence = "restart_lower_lr"
  config.train.divergence_lr_factor = 0.25
  results = train.train_and_evaluate(config, str(tmp_path))
  assert len(nan_at_bad_step) == 2  # One restart, with a new optimiser.
  record = json.loads((tmp_path / divergence.STATE_FILE).read_text())
  assert record == {
    "lr_scale": 0.25,
    "restarts": [{"bad_step": BAD_STEP, "resumed_from": 4, "lr_scale": 0.25}],
  }
  assert divergence.load_lr_scale(str(tmp_path)) == 0.25  # A resumed run keeps it.
  assert results["checkpoint_step"] == 8
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == [4, 8]
  assert all(np.isfinite(r["loss"]) for r in rows if r["step"] == 8)


@pytest.mark.parametrize(
  "key, value, match",
  [
    ("on_divergence", "retry", "on_divergence must be one of"),
    ("divergence_lr_factor", 2.0, "in \\(0, 1\\)"),
  ],
)
def test_divergence_options_are_checked(key, value, match):
  config = proto_omniglot5w1s.get_config("quick")
  config.train[key] = value
  with pytest.raises(ConfigError, match=match):
    divergence.check_config(config.train)
