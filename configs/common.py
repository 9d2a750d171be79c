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
  # The library of XLA:CPU's matrix products in the train and eval steps, "ynnpack"
  # (XLA's default) or "eigen"; other backends ignore it (fsl_jax/runtime/cpu_matmuls.py).
  config.cpu_matmuls = "ynnpack"

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
  config.model.conv_impl = "auto"  # "auto", "xla", "im2col" or "winograd".
  config.model.pixel_mean = (0.0,)
  config.model.pixel_std = (1.0,)
  config.model.num_blocks = 4
  config.model.downsample = "max_pool"  # Or "stride" (Finn et al.'s Omniglot model).
  # "bfloat16" (GPU/TPU): convolutions in bfloat16; params, statistics and losses in float32.
  config.model.compute_dtype = "float32"

  config.train = ml_collections.ConfigDict()
  config.train.n_way = 60
  config.train.k_shot = 1
  config.train.n_query = 5
  config.train.meta_batch_size = 1
  # Tasks per device whose gradient is taken at once; the meta-batch gradient is
  # accumulated over chunks of this many (fsl_jax/task_chunks.py). 0: the whole
  # meta-batch at once. None: the measured default for the backend (task_chunks.py).
  config.train.tasks_per_chunk = config_dict.placeholder(int)
  config.train.num_steps = 20_000
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  # Stop training after this many minutes since the run started (0: no limit),
  # checked every log_every steps; the run then validates, checkpoints and tests
  # as if num_steps were reached.
  config.train.max_minutes = 0.0
  # A non-finite loss or gradient: "stop", or "restart_lower_lr" from the latest
  # checkpoint with the learning rate times divergence_lr_factor (see divergence.py).
  config.train.on_divergence = "stop"
  config.train.divergence_lr_factor = 0.5
  config.train.max_divergence_restarts = 3

  config.eval = ml_collections.ConfigDict()
  config.eval.n_way = 5
  config.eval.k_shot = 1
  config.eval.n_query = 15
  config.eval.val_episodes = 500
  config.eval.test_episodes = 1000
  # Episodes per eval call. Activations scale with it: 8 episodes of 20-way 5-shot
  # with 15 queries are 3200 images, [3200, 28, 28, 64] float32 after the first
  # convolution on Omniglot.
  config.eval.batch_size = 8
  config.eval.seed = 1234
  # --mode=evaluate: "episodes" scores eval.n_way/k_shot/n_query episodes of
  # eval.split (eval.test_episodes of them); "lake_runs" scores Lake et al.'s 20
  # one-shot runs read from eval.lake_runs (all_runs.zip or its folder).
  config.eval.task = "episodes"
  config.eval.split = "test"
  config.eval.lake_runs = config_dict.placeholder(str)

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"  # Or "sgd" (Reptile's meta-step); see fsl_jax/state.py.
  config.optim.learning_rate = 1e-3
  config.optim.decay_every_episodes = 2000
  config.optim.decay_rate = 0.5
  config.optim.anneal_to_zero = False  # Also scale by 1 - step / num_steps (Reptile).
  return config


def parse_arg(arg: str | None, allowed: tuple[str, ...] = ("quick",)) -> set[str]:
  """'quick,fce' -> {'quick', 'fce'}; None -> set(). Words not in ``allowed`` are an error."""
  words = set(filter(None, (arg or "").split(",")))
  unknown = words - set(allowed)
  if unknown:
    raise ValueError(
      f"unknown config argument(s) {sorted(unknown)}; this config takes {sorted(allowed)}."
    )
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

  Switches: meta_gradient ("unrolled", or "implicit" for iMAML with config.imaml);
  first_order; remat (jax.checkpoint each inner step); unroll (unroll the
  inner scan when tracing: faster steps, longer compiles); meta_sgd (learnt
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
      unroll=True,
      meta_sgd=False,
      anil=False,
      multi_step_loss=False,
      msl_anneal_steps=10_000,
      meta_gradient="unrolled",
    )
  )
  # iMAML (config.maml.meta_gradient = "implicit"); defaults of Rajeswaran et al.'s
  # Omniglot experiments and implementation (fsl_jax/algorithms/imaml.py).
  config.imaml = ml_collections.ConfigDict(
    dict(lam=2.0, cg_steps=5, cg_damping=1.0, inner_optimizer="sgd")
  )
  config.train.meta_batch_size = meta_batch_size
  config.optim.decay_rate = 1.0  # Finn et al.: a constant meta learning rate.
  config.train.num_steps = 60_000
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.val_episodes = 200
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


def proto_omniglot(n_way: int, k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """Prototypical Networks on Omniglot with Snell et al. (2017)'s settings.

  Training: 60-way k_shot episodes with 5 queries per class; Adam at 1e-3, halved
  every 2000 episodes. Test: n_way k_shot with 15 queries, 1000 episodes.
  """
  words = parse_arg(arg)
  config = get_base_config()
  config.algorithm = "protonet"
  config.protonet = dict(distance="euclidean", cosine_scale=10.0)
  config.train.n_way, config.train.k_shot, config.train.n_query = 60, k_shot, 5
  config.eval.n_way, config.eval.k_shot, config.eval.n_query = n_way, k_shot, 15
  config.eval.test_episodes = 1000
  return make_quick(config) if "quick" in words else config


def proto_mini(k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """Prototypical Networks on miniImageNet, 5-way, with Snell et al. (2017)'s settings.

  Training: 30-way episodes for 1-shot, 20-way for 5-shot, 15 queries per class;
  conv-4 with 64 filters; Adam at 1e-3, halved every 2000 episodes. Test: 5-way
  k_shot with 15 queries, 600 episodes.
  """
  words = parse_arg(arg)
  config = get_base_config()
  set_mini_imagenet(config)
  config.algorithm = "protonet"
  config.protonet = dict(distance="euclidean", cosine_scale=10.0)
  train_way = 30 if k_shot == 1 else 20
  config.train.n_way, config.train.k_shot, config.train.n_query = train_way, k_shot, 15
  config.eval.n_way, config.eval.k_shot, config.eval.n_query = 5, k_shot, 15
  config.eval.test_episodes = 600
  return make_quick(config) if "quick" in words else config


def set_omniglot_adaptation(
  config: ml_collections.ConfigDict, n_way: int, k_shot: int, *, train_shot: int, train_query: int
) -> ml_collections.ConfigDict:
  """Omniglot for the algorithms that adapt a network per task (MAML, iMAML, Reptile).

  Finn et al.'s Omniglot conv-4 (stride-2 convolutions and a spatial mean instead
  of max-pooling); training episodes n_way train_shot-shot with train_query
  queries per class; test episodes n_way k_shot with 15 queries, 1000 of them.
  """
  config.model.downsample = "stride"
  config.train.n_way, config.train.k_shot, config.train.n_query = n_way, train_shot, train_query
  config.eval.n_way, config.eval.k_shot, config.eval.n_query = n_way, k_shot, 15
  config.eval.test_episodes = 1000
  # Per-task products on Omniglot run faster in Eigen than in YNNPACK on XLA:CPU
  # (docs/performance.md has the measurements); ignored on GPU and TPU.
  config.cpu_matmuls = "eigen"
  return config


def quick_adaptation(
  config: ml_collections.ConfigDict, words: set[str], *, meta_batch_size: int
) -> ml_collections.ConfigDict:
  """``:quick`` for MAML, iMAML and Reptile: make_quick with a small meta-batch."""
  if "quick" in words:
    make_quick(config)
    config.train.meta_batch_size = meta_batch_size
  return config


def maml_omniglot(n_way: int, k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """MAML on Omniglot with Finn et al. (2017)'s settings.

  5-way: meta-batch 32, 1 inner step, inner lr 0.4. 20-way: meta-batch 16, 5
  inner steps, inner lr 0.1. k_shot queries per class in training (as Finn et
  al.); 3 inner steps and 15 queries per class at test, 1000 test episodes. The
  model is Finn et al.'s Omniglot conv-4: stride-2 convolutions and a spatial
  mean instead of max-pooling (``--config.model.downsample=max_pool`` for the
  reference PyTorch code's model).
  """
  words = parse_arg(arg)
  config = get_base_config()
  five_way = n_way == 5
  set_maml(
    config,
    inner_lr=0.4 if five_way else 0.1,
    inner_steps=1 if five_way else 5,
    test_inner_steps=3,
    meta_batch_size=32 if five_way else 16,
  )
  set_omniglot_adaptation(config, n_way, k_shot, train_shot=k_shot, train_query=k_shot)
  return quick_adaptation(config, words, meta_batch_size=4)


def maml_mini(k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """MAML on miniImageNet, 5-way, with Finn et al. (2017)'s settings.

  conv-4 with 32 filters; meta-batch 4 (2 for 5-shot); 5 inner steps with inner
  lr 0.01 in training, 10 at test; 15 queries per class; 600 test episodes.
  """
  words = parse_arg(arg)
  config = get_base_config()
  set_mini_imagenet(config)
  meta_batch_size = 4 if k_shot == 1 else 2
  set_maml(
    config, inner_lr=0.01, inner_steps=5, test_inner_steps=10, meta_batch_size=meta_batch_size
  )
  config.model.filters = 32
  for section in (config.train, config.eval):
    section.n_way, section.k_shot, section.n_query = 5, k_shot, 15
  config.eval.test_episodes = 600
  return quick_adaptation(config, words, meta_batch_size=2)


def set_imaml(config: ml_collections.ConfigDict, *, inner_steps: int) -> ml_collections.ConfigDict:
  """iMAML (Rajeswaran et al. 2019) on top of a MAML config: the implicit meta-gradient.

  Table 2 of the paper (Omniglot): the inner problem solved by gradient descent
  with 16 steps at 5-way and 25 at 20-way, lambda = 2.0 and 5 CG steps for the
  meta-gradient; meta-parameters by Adam. The authors' implementation
  (github.com/aravindr93/imaml_dev, examples/README.md) runs Omniglot with inner
  lr 0.1, outer lr 1e-3, 32 tasks per meta-batch and CG damping 1.0. Test time
  adapts with the same regularised inner solve and step count.
  """
  config.maml.meta_gradient = "implicit"
  config.maml.inner_steps = inner_steps
  config.maml.test_inner_steps = inner_steps
  config.maml.unroll = False  # Not differentiated: a rolled loop compiles in a fraction.
  config.imaml = ml_collections.ConfigDict(
    dict(lam=2.0, cg_steps=5, cg_damping=1.0, inner_optimizer="sgd")
  )
  return config


def imaml_omniglot(n_way: int, k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """iMAML on Omniglot: MAML's Omniglot model and episodes, inner lr 0.1, 32 tasks per step."""
  config = maml_omniglot(n_way, k_shot, arg)
  set_imaml(config, inner_steps=16 if n_way == 5 else 25)
  config.maml.inner_lr = 0.1
  if "quick" not in parse_arg(arg):
    config.train.meta_batch_size = 32
  return config


def imaml_mini(k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """iMAML on miniImageNet, 5-way: MAML's miniImageNet model and episodes.

  The paper's miniImageNet settings could not be confirmed from its text: lambda
  and CG steps follow its Omniglot experiments (2.0, 5), and the inner loop is
  gradient descent at MAML's miniImageNet inner lr 0.01 for 10 steps (MAML's
  test-time count).
  """
  config = maml_mini(k_shot, arg)
  set_imaml(config, inner_steps=10)
  return config


def set_reptile(
  config: ml_collections.ConfigDict,
  *,
  inner_lr: float,
  inner_steps: int,
  test_inner_steps: int,
  inner_batch_size: int,
  test_inner_batch_size: int,
  meta_batch_size: int,
  num_steps: int,
) -> ml_collections.ConfigDict:
  """Reptile settings (Nichol et al. 2018): Adam (beta1 = 0) inside, annealed SGD outside.

  The inner loop takes ``inner_steps`` Adam steps at ``inner_lr`` on minibatches of
  ``inner_batch_size`` support images (``test_*`` at evaluation); the meta-step is
  SGD on theta - mean(phi) with step size 1 annealed linearly to 0 over
  ``num_steps`` (their --meta-step 1 --meta-step-final 0). See
  fsl_jax/algorithms/reptile.py.
  """
  config.algorithm = "reptile"
  config.reptile = ml_collections.ConfigDict(
    dict(
      inner_lr=inner_lr,
      inner_steps=inner_steps,
      test_inner_steps=test_inner_steps,
      inner_batch_size=inner_batch_size,
      test_inner_batch_size=test_inner_batch_size,
      inner_optimizer="adam",
    )
  )
  config.train.meta_batch_size = meta_batch_size
  config.train.num_steps = num_steps
  config.optim.name = "sgd"
  config.optim.learning_rate = 1.0
  config.optim.anneal_to_zero = True
  config.optim.decay_rate = 1.0  # Only the linear annealing.
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.val_episodes = 200
  return config


def reptile_omniglot(n_way: int, k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """Reptile on Omniglot with Nichol et al. (2018)'s settings.

  From the authors' commands (openai/supervised-reptile, README.md, "commands used
  for the paper") and the paper's Appendix A: 5-way: Adam lr 0.001
  (--learning-rate), inner batch 10 (--inner-batch), 5 inner steps (--inner-iters),
  100K meta-steps (--meta-iters); 20-way: lr 0.0005, inner batch 20, 10 inner steps,
  200K meta-steps. Both: 10 training shots per class (--train-shots), meta-batch 5
  (--meta-batch), meta-step 1 annealed to 0 (--meta-step 1 --meta-step-final 0),
  50 inner steps at test (--eval-iters) on minibatches of 5 (5-way) or 10 (20-way)
  (--eval-batch). Training episodes have 1 query per class (for the metrics only);
  test episodes are n_way k_shot with 15 queries, 1000 of them. The model is the
  strided conv-4 of the MAML Omniglot configs (the authors' code flattens the last
  2x2 feature map where this takes its mean).
  """
  words = parse_arg(arg)
  config = get_base_config()
  five_way = n_way == 5
  set_reptile(
    config,
    inner_lr=0.001 if five_way else 0.0005,
    inner_steps=5 if five_way else 10,
    test_inner_steps=50,
    inner_batch_size=10 if five_way else 20,
    test_inner_batch_size=5 if five_way else 10,
    meta_batch_size=5,
    num_steps=100_000 if five_way else 200_000,
  )
  set_omniglot_adaptation(config, n_way, k_shot, train_shot=10, train_query=1)
  return quick_adaptation(config, words, meta_batch_size=2)


def reptile_mini(k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """Reptile on miniImageNet, 5-way, with Nichol et al. (2018)'s settings.

  From the authors' commands (openai/supervised-reptile, README.md) and the
  paper's Appendix A: Adam lr 0.001 (--learning-rate), inner batch 10
  (--inner-batch), 8 inner steps (--inner-iters), 15 training shots per class
  (--train-shots), meta-batch 5 (--meta-batch), 100K meta-steps (--meta-iters),
  meta-step 1 annealed to 0 (--meta-step 1 --meta-step-final 0); 50 inner steps at
  test (--eval-iters) on minibatches of 5 (1-shot) or 15 (5-shot) (--eval-batch).
  conv-4 with 32 filters and max-pooling, as maml_mini (the authors' code pools
  before batch norm, with 'SAME' padding); 1 query per class in training, 15 at
  test; 600 test episodes.
  """
  words = parse_arg(arg)
  config = get_base_config()
  set_mini_imagenet(config)
  set_reptile(
    config,
    inner_lr=0.001,
    inner_steps=8,
    test_inner_steps=50,
    inner_batch_size=10,
    test_inner_batch_size=5 if k_shot == 1 else 15,
    meta_batch_size=5,
    num_steps=100_000,
  )
  config.model.filters = 32
  config.train.n_way, config.train.k_shot, config.train.n_query = 5, 15, 1
  config.eval.n_way, config.eval.k_shot, config.eval.n_query = 5, k_shot, 15
  config.eval.test_episodes = 600
  return quick_adaptation(config, words, meta_batch_size=2)


MATCHING_WORDS = ("quick", "cosine", "euclidean", "fce", "no_fce")


def matching(dataset: str, n_way: int, k_shot: int, arg: str | None) -> ml_collections.ConfigDict:
  """Matching Networks (Vinyals et al. 2016) on "omniglot" or "mini_imagenet".

  Training and test episodes have the same N-way K-shot shape, with 15 queries per
  class; Adam at 1e-3, halved every 2000 episodes. Similarity: cosine scaled by
  ``cosine_scale`` (see fsl_jax/algorithms/matching.py for why the scale matters),
  or negative squared Euclidean. Full Context Embeddings are on for miniImageNet
  and off for Omniglot, as in the paper. ``arg`` words: quick, cosine, euclidean,
  fce, no_fce (e.g. ``:euclidean,fce``); ``--config.matching.*`` overrides work too.
  """
  words = parse_arg(arg, MATCHING_WORDS)
  if {"cosine", "euclidean"} <= words or {"fce", "no_fce"} <= words:
    raise ValueError(f"contradictory config arguments {sorted(words)}.")
  config = get_base_config()
  if dataset == "mini_imagenet":
    set_mini_imagenet(config)
    config.eval.test_episodes = 600
    config.train.num_steps = 40_000
  else:
    config.eval.test_episodes = 1000
  config.algorithm = "matching"
  config.matching = ml_collections.ConfigDict(
    dict(
      distance="euclidean" if "euclidean" in words else "cosine",
      cosine_scale=10.0,
      fce=("fce" in words) or (dataset == "mini_imagenet" and "no_fce" not in words),
      lstm_layers=1,
      unrolling_steps=2,
    )
  )
  for section in (config.train, config.eval):
    section.n_way, section.k_shot, section.n_query = n_way, k_shot, 15
  return make_quick(config) if "quick" in words else config
