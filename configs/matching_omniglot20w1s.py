"""Matching Networks, Omniglot 20-way 1-shot (Vinyals et al. 2016).

Training and test: 20-way 1-shot episodes with 15 queries per class; cosine
attention (scaled, see fsl_jax/algorithms/matching.py), no Full Context Embeddings.
Test: 1000 episodes, 95% CI.

Run (downloads the official zips on first use):
  python -m fsl_jax.main --config=configs/matching_omniglot20w1s.py --workdir=runs/matching_omniglot20w1s

Switches, as words after ':' (comma-separated): euclidean (negative squared l2
instead of cosine), fce (Full Context Embeddings), quick (seconds), e.g.
  python -m fsl_jax.main --config=configs/matching_omniglot20w1s.py:euclidean,fce --workdir=DIR \
    --config.data.split=small --config.data.manual_dir=FOLDER
"""

from configs import common


def get_config(arg=None):
  return common.matching("omniglot", n_way=20, k_shot=1, arg=arg)
