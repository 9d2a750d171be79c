"""Learning checks for the end-to-end runs, and the broken gradient that shows they can fail.

A bound such as ``0 <= accuracy <= 1`` passes whatever the model does. A learning check
asks a short run to beat a threshold that sits between what the same run reaches when it
cannot learn (learning rate 0, or the gradient cut by ``gradient_stopped``) and what it
reaches when it works, with a wide gap on both sides. An untrained conv-4 already beats
chance (random features separate characters somewhat), so the threshold is set above the
untrained run's accuracy, not above chance. Each test file records the measured figures
next to its thresholds.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import pytest

from fsl_jax import train


def assert_learnt(test: dict, threshold: float) -> None:
  """``test`` (results["test"]) has an accuracy above ``threshold``."""
  accuracy, ci95, episodes = test["accuracy"], test["ci95"], test["episodes"]
  assert accuracy > threshold, (
    f"test accuracy {accuracy:.3f} +- {ci95:.3f} over {episodes} episodes is not above "
    f"{threshold}: the run did not learn (an untrained model stays below the threshold)."
  )


@contextlib.contextmanager
def gradient_stopped():
  """``train.train_and_evaluate`` inside trains on ``loss(stop_gradient(params), ...)``.

  The gradient is then zero, so Adam leaves the params at their init, as a zero
  learning rate does; batch-norm averages still follow the data. Everything else
  (data, steps, evaluation) is the run's own.
  """
  make = train.make_algorithm

  def broken(config):
    model, algorithm = make(config)
    loss = algorithm.loss

    def cut(params, *args, **kwargs):
      return loss(jax.lax.stop_gradient(params), *args, **kwargs)

    return model, dataclasses.replace(algorithm, loss=cut)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train, "make_algorithm", broken)
    yield


def assert_fails_with_gradient_stopped(config, workdir, threshold: float, room: float) -> None:
  """The learning check can fail: ``config`` trained with its gradient cut stays below
  ``threshold - room`` over the same test episodes."""
  with gradient_stopped():
    results = train.train_and_evaluate(config, str(workdir))
  assert results["test"]["episodes"] == config.eval.test_episodes
  assert results["test"]["accuracy"] < threshold - room, results["test"]
