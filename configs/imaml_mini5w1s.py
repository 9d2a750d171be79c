"""iMAML, miniImageNet, 5-way 1-shot, with Rajeswaran et al. (2019)'s settings.

10 inner steps of gradient descent (lr 0.01) on the support loss regularised towards the
meta-parameters with lambda 2.0; the meta-gradient by 5 CG steps (damping 1.0); MAML's
miniImageNet model (32 filters) and meta-batch 4. See configs/common.py (imaml_mini) for
which settings the paper confirms.

Run:
  python -m fsl_jax.main --config=configs/imaml_mini5w1s.py --workdir=runs/imaml_mini5w1s

With the miniImageNet files in FOLDER (docs/data.md):
  python -m fsl_jax.main --config=configs/imaml_mini5w1s.py --workdir=runs/imaml_mini5w1s \
    --config.data.manual_dir=FOLDER

Quick check (seconds): add ':quick' after the file name.
"""

from configs import common


def get_config(arg=None):
  return common.imaml_mini(k_shot=1, arg=arg)
