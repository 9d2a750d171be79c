"""Reptile, Omniglot 5-way 1-shot, with Nichol et al. (2018)'s settings.

Training: 5-way episodes with 10 shots per class (their --train-shots 10) and 1 query
per class (metrics only); 5 inner Adam steps (beta1 = 0) at lr 0.001 on minibatches
of 10 support images; meta-batch 5; meta-step SGD with step size 1 annealed linearly
to 0 over 100K steps. Test: 50 inner steps on minibatches of 5, 15 queries per class,
1000 test episodes with 95% CI. Transductive batch norm: compare with their
"Reptile + Transduction" figure. Finn et al.'s strided conv-4, as the MAML configs.

Run:
  python -m fsl_jax.main --config=configs/reptile_omniglot5w1s.py \
    --workdir=runs/reptile_omniglot5w1s

Offline, on the two minimal zips in FOLDER:
  python -m fsl_jax.main --config=configs/reptile_omniglot5w1s.py \
    --workdir=runs/reptile_omniglot5w1s --config.data.split=small --config.data.manual_dir=FOLDER

Quick check (seconds): add ':quick' after the file name.
"""

from configs import common


def get_config(arg=None):
  return common.reptile_omniglot(n_way=5, k_shot=1, arg=arg)
