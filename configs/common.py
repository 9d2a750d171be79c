"""Defaults shared by every experiment, and the ``:quick`` shrink.

Every field has a concrete type so that ``--config.a.b=value`` overrides are
type-checked; optional strings are ``placeholder(str)``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.algorithm = "protonet"

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "omniglot"
  config.data.split = "vinyals"
  config.data.image_size = 28
  config.data.train_rotations = (0, 90, 180, 270)
  config.data.eval_rotations = (0, 90, 180, 270)
  # Folder with the raw files; else $FSL_JAX_MANUAL_DIR; else download.
  config.data.manual_dir = config_dict.placeholder(str)
  # Where tfds writes prepared datasets; None = tfds's default (~/tensorflow_datasets).
  config.data.data_dir = config_dict.placeholder(str)

  config.model = ml_collections.ConfigDict()
  config.model.name = "conv4"
  config.model.filters = 64
  config.model.conv_impl = "auto"  # "auto", "xla" or "im2col".
  config.model.pixel_mean = (0.0,)
  config.model.pixel_std = (1.0,)
  config.model.num_blocks = 4
  config.model.downsample = "max_pool"  # Or "stride" (Finn et al.'s Omniglot model).

  config.train = ml_collections.ConfigDict()
  config.train.n_way = 60
  config.train.k_shot = 1
  config.train.n_query = 5
  config.train.meta_batch_size = 1
  config.train.num_steps = 20_000
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  # Stop training after this many minutes since the run started (0: no limit);
  # the run then validates, checkpoints and tests as if num_steps were reached.
  config.train.max_minutes = 0.0

  config.eval = ml_collections.ConfigDict()
  config.eval.n_way = 5
  config.eval.k_shot = 1
  config.eval.n_query = 15
  config.eval.val_episodes = 500
  config.eval.test_episodes = 1000
  config.eval.batch_size = 50
  config.eval.seed = 1234

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3
  config.optim.decay_every_episodes = 2000
  config.optim.decay_rate = 0.5
  return config


def parse_arg(arg: str | None) -> set[str]:
  """'quick' -> {'quick'}; None -> set(). Unknown words are an error."""
  words = set(filter(None, (arg or "").split(",")))
  unknown = words - {"quick"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; the only one is 'quick'.")
  return words


def make_quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a run to seconds: a few steps, few episodes; same model and shapes."""
  config.train.num_steps = 6
  config.train.log_every = 2
  config.train.eval_every = 3
  config.train.checkpoint_every = 3
  config.eval.val_episodes = 10
  config.eval.test_episodes = 20
  config.eval.batch_size = 10
  return config


def set_maml(
  config: ml_collections.ConfigDict,
  *,
  inner_lr: float,
  inner_steps: int,
  test_inner_steps: int,
  meta_batch_size: int,
) -> ml_collections.ConfigDict:
  """MAML settings (Finn et al. 2017) with the extensions switched off.

  Switches: first_order; remat (jax.checkpoint each inner step); meta_sgd (learnt
  per-parameter inner rates, Li et al. 2017); anil (adapt only the head, Raghu et
  al. 2020); multi_step_loss (MAML++, Antoniou et al. 2019).
  """
  config.algorithm = "maml"
  config.maml = ml_collections.ConfigDict(
    dict(
      inner_lr=inner_lr,
      inner_steps=inner_steps,
      test_inner_steps=test_inner_steps,
      first_order=False,
      remat=False,
      meta_sgd=False,
      anil=False,
      multi_step_loss=False,
      msl_anneal_steps=10_000,
    )
  )
  config.train.meta_batch_size = meta_batch_size
  config.optim.decay_rate = 1.0  # Finn et al.: a constant meta learning rate.
  config.train.num_steps = 60_000
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.val_episodes = 200
  config.eval.batch_size = 20
  return config


def set_mini_imagenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """84x84 RGB miniImageNet with the Ravi & Larochelle split, normalised on device."""
  config.data.dataset = "mini_imagenet"
  config.data.split = "ravi"
  config.data.image_size = 84
  config.data.train_rotations = (0,)
  config.data.eval_rotations = (0,)
  config.model.pixel_mean = (0.485, 0.456, 0.406)
  config.model.pixel_std = (0.229, 0.224, 0.225)
  return config
