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
  return common.proto_omniglot(n_way=5, k_shot=1, arg=arg)
