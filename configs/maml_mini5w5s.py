"""MAML, miniImageNet 5-way 5-shot, with Finn et al. (2017)'s settings.

conv-4 with 32 filters; meta-batch 2, 5 inner steps with inner lr 0.01 in training,
10 at test; 15 queries per class; Adam meta lr 1e-3; 600 test episodes with 95% CI.
Second order by default; first order with --config.maml.first_order=True.

miniImageNet cannot be downloaded: supply your copy with
--config.data.manual_dir=FOLDER (the error message says which files).

Run:
  python -m fsl_jax.main --config=configs/maml_mini5w5s.py --workdir=runs/maml_mini5w5s \
    --config.data.manual_dir=FOLDER

Quick check (seconds): add ':quick' after the file name.
"""

from configs import common


def get_config(arg=None):
  return common.maml_mini(k_shot=5, arg=arg)
