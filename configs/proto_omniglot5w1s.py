"""Prototypical Networks, Omniglot 5-way 1-shot (Snell et al. 2017).

Training: 60-way 1-shot episodes with 5 queries per class; Adam at 1e-3, halved
every 2000 episodes. Test: 5-way 1-shot, 15 queries, 1000 episodes, 95% CI.

Run (downloads the official zips on first use):
  python -m fsl_jax.main --config=configs/proto_omniglot5w1s.py --workdir=runs/proto_omniglot5w1s

Offline, on the two minimal zips in FOLDER (split "small"):
  python -m fsl_jax.main --config=configs/proto_omniglot5w1s.py --workdir=runs/proto_omniglot5w1s \
    --config.data.split=small --config.data.manual_dir=FOLDER

Quick check (seconds): add ':quick' after the file name.
"""

from configs import common


def get_config(arg=None):
  words = common.parse_arg(arg)
  config = common.get_base_config()
  config.algorithm = "protonet"
  config.protonet = dict(distance="euclidean", cosine_scale=10.0)
  config.train.n_way = 60
  config.train.k_shot = 1
  config.train.n_query = 5
  config.eval.n_way = 5
  config.eval.k_shot = 1
  config.eval.n_query = 15
  config.eval.test_episodes = 1000
  if "quick" in words:
    common.make_quick(config)
  return config
