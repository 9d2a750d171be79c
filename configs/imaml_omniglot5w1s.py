"""iMAML, Omniglot, 5-way 1-shot, with Rajeswaran et al. (2019)'s settings.

16 inner steps of gradient descent (lr 0.1) on the support loss regularised towards the
meta-parameters with lambda 2.0; the meta-gradient (I + H/lambda)^-1 grad L_query by 5 CG
steps (damping 1.0); meta-batch 32, Adam meta lr 1e-3; Finn et al.'s strided conv-4.
Rajeswaran et al. (2019), Table 2: 99.16 +- 0.35% (iMAML, GD).

Run:
  python -m fsl_jax.main --config=configs/imaml_omniglot5w1s.py --workdir=runs/imaml_omniglot5w1s

Offline, on the two minimal zips in FOLDER:
  python -m fsl_jax.main --config=configs/imaml_omniglot5w1s.py --workdir=runs/imaml_omniglot5w1s \
    --config.data.split=small --config.data.manual_dir=FOLDER

Quick check (seconds): add ':quick' after the file name.
"""

from configs import common


def get_config(arg=None):
  return common.imaml_omniglot(n_way=5, k_shot=1, arg=arg)
