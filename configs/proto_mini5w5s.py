"""Prototypical Networks, miniImageNet 5-way 5-shot (Snell et al. 2017).

Training: 20-way 5-shot episodes with 15 queries per class; conv-4 with 64
filters; Adam at 1e-3, halved every 2000 episodes. Test: 5-way 5-shot, 15 queries,
600 episodes, 95% CI. Images are 84x84 RGB, uint8 in host memory, normalised on
device with config.model.pixel_mean / pixel_std.

miniImageNet cannot be downloaded: supply your copy (CSV + images, pickle caches or
MetaOptNet pickles; see fsl_jax/data/mini_imagenet.py) with
--config.data.manual_dir=FOLDER. Use --config.data.split=custom for your own split.

Run:
  python -m fsl_jax.main --config=configs/proto_mini5w5s.py --workdir=runs/proto_mini5w5s \
    --config.data.manual_dir=FOLDER

Quick check: add ':quick' after the file name (6 steps at full size: minutes on a
CPU; add --config.data.image_size=28 --config.model.filters=8 for about a minute).
"""

from configs import common


def get_config(arg=None):
  return common.proto_mini(k_shot=5, arg=arg)
