"""Matching Networks with Full Context Embeddings, miniImageNet 5-way 1-shot (Vinyals et al. 2016).

Training and test: 5-way 1-shot episodes with 15 queries per class; conv-4 with
64 filters (1600-d embeddings), FCE with a 1-layer bidirectional LSTM and 2
attention steps; cosine attention (scaled, see fsl_jax/algorithms/matching.py).
Test: 600 episodes, 95% CI.

Run, with the miniImageNet files in FOLDER (see fsl_jax/data/mini_imagenet.py):
  python -m fsl_jax.main --config=configs/matching_mini5w1s.py --workdir=runs/matching_mini5w1s \
    --config.data.manual_dir=FOLDER

Switches, as words after ':' (comma-separated): euclidean (negative squared l2
instead of cosine), no_fce, quick (seconds).
"""

from configs import common


def get_config(arg=None):
  return common.matching("mini_imagenet", n_way=5, k_shot=1, arg=arg)
