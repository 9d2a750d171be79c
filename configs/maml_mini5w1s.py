"""MAML, miniImageNet 5-way 1-shot, with Finn et al. (2017)'s settings.

conv-4 with 32 filters; meta-batch 4, 5 inner steps with inner lr 0.01 in training,
10 at test; 15 queries per class; Adam meta lr 1e-3; 600 test episodes with 95% CI.
Second order by default; first order with --config.maml.first_order=True.

miniImageNet cannot be downloaded: supply your copy (CSV + images, pickle caches or
MetaOptNet pickles; see fsl_jax/data/mini_imagenet.py) with
--config.data.manual_dir=FOLDER. Use --config.data.split=custom for your own split.

Run:
  python -m fsl_jax.main --config=configs/maml_mini5w1s.py --workdir=runs/maml_mini5w1s \
    --config.data.manual_dir=FOLDER

Quick check: add ':quick' after the file name (6 steps at full size: minutes on a
CPU; add --config.data.image_size=28 --config.model.filters=8 for about a minute).
"""

from configs import common


def get_config(arg=None):
  return common.maml_mini(k_shot=1, arg=arg)
