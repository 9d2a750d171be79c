"""Every config loads, has a quick variant, and rejects typos in keys."""

import importlib
from pathlib import Path

import pytest

CONFIGS = sorted(
  p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.py") if p.stem[0] != "_"
)
EXPERIMENTS = [name for name in CONFIGS if name != "common"]


def test_there_are_experiment_configs():
  assert {"proto_omniglot5w1s", "proto_omniglot20w5s"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_and_quick_variant(name):
  module = importlib.import_module(f"configs.{name}")
  full, quick = module.get_config(), module.get_config("quick")
  assert quick.train.num_steps < full.train.num_steps
  assert quick.eval.test_episodes < full.eval.test_episodes
  assert f"configs/{name}.py" in module.__doc__  # The docstring states the command.
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("quik")


@pytest.mark.parametrize(
  "name, n_way, k_shot", [("5w1s", 5, 1), ("5w5s", 5, 5), ("20w1s", 20, 1), ("20w5s", 20, 5)]
)
def test_proto_omniglot_configs_follow_snell(name, n_way, k_shot):
  config = importlib.import_module(f"configs.proto_omniglot{name}").get_config()
  assert (config.train.n_way, config.train.k_shot, config.train.n_query) == (60, k_shot, 5)
  assert (config.eval.n_way, config.eval.k_shot) == (n_way, k_shot)
  assert config.eval.test_episodes == 1000
  assert config.optim.learning_rate == 1e-3
  assert (config.optim.decay_every_episodes, config.optim.decay_rate) == (2000, 0.5)


@pytest.mark.parametrize("k_shot, train_way", [(1, 30), (5, 20)])
def test_proto_mini_configs_follow_snell(k_shot, train_way):
  config = importlib.import_module(f"configs.proto_mini5w{k_shot}s").get_config()
  assert config.algorithm == "protonet" and config.data.dataset == "mini_imagenet"
  assert (config.data.split, config.data.image_size, config.model.filters) == ("ravi", 84, 64)
  assert (config.train.n_way, config.train.k_shot, config.train.n_query) == (train_way, k_shot, 15)
  assert (config.eval.n_way, config.eval.k_shot, config.eval.n_query) == (5, k_shot, 15)
  assert config.eval.test_episodes == 600
  assert (config.optim.decay_every_episodes, config.optim.decay_rate) == (2000, 0.5)
  assert len(config.model.pixel_mean) == len(config.model.pixel_std) == 3


@pytest.mark.parametrize("k_shot", [1, 5])
def test_maml_mini_configs_follow_finn(k_shot):
  for arg in (None, "quick"):
    config = importlib.import_module(f"configs.maml_mini5w{k_shot}s").get_config(arg)
    assert config.model.filters == 32 and config.data.image_size == 84
    assert (config.train.n_way, config.train.k_shot, config.train.n_query) == (5, k_shot, 15)
    assert (config.maml.inner_steps, config.maml.test_inner_steps) == (5, 10)
  assert config.eval.test_episodes == 20  # The quick variant.
  assert (
    importlib.import_module(f"configs.maml_mini5w{k_shot}s").get_config().eval.test_episodes == 600
  )
