"""Reptile, miniImageNet 5-way 5-shot, with Nichol et al. (2018)'s settings.

Training: 5-way episodes with 15 shots per class (their --train-shots 15) and 1 query
per class (metrics only); 8 inner Adam steps (beta1 = 0) at lr 0.001 on minibatches
of 10 support images; meta-batch 5; meta-step SGD with step size 1 annealed linearly
to 0 over 100K steps. Test: 50 inner steps on minibatches of 15, 15 queries per class,
600 test episodes with 95% CI. conv-4 with 32 filters and max-pooling, as the MAML
configs. Transductive batch norm: compare with their "Reptile + Transduction" figure.

miniImageNet cannot be downloaded: supply your copy (CSV + images, pickle caches or
MetaOptNet pickles; see fsl_jax/data/mini_imagenet.py) with
--config.data.manual_dir=FOLDER. Use --config.data.split=custom for your own split.

Run:
  python -m fsl_jax.main --config=configs/reptile_mini5w5s.py --workdir=runs/reptile_mini5w5s \
    --config.data.manual_dir=FOLDER

Quick check: add ':quick' after the file name (6 steps at full size: minutes on a
CPU; add --config.data.image_size=28 --config.model.filters=8 for about a minute).
"""

from configs import common


def get_config(arg=None):
  return common.reptile_mini(k_shot=5, arg=arg)
