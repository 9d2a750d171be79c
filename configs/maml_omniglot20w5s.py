"""MAML, Omniglot 20-way 5-shot, with Finn et al. (2017)'s settings.

Meta-batch 16, 5 inner step(s) with inner lr 0.1, Adam meta lr 1e-3; 5 query per class
in training (as Finn et al.); 3 inner steps and 15 queries per class at test,
1000 test episodes with 95% CI. Second order by default; first order with
--config.maml.first_order=True. Finn et al.'s strided conv-4 (stride-2 convs, spatial
mean); the reference PyTorch code's max-pool model with --config.model.downsample=max_pool.

Run:
  python -m fsl_jax.main --config=configs/maml_omniglot20w5s.py --workdir=runs/maml_omniglot20w5s

Offline, on the two minimal zips in FOLDER:
  python -m fsl_jax.main --config=configs/maml_omniglot20w5s.py --workdir=runs/maml_omniglot20w5s \
    --config.data.split=small --config.data.manual_dir=FOLDER

Quick check (seconds): add ':quick' after the file name.
"""

from configs import common


def get_config(arg=None):
  return common.maml_omniglot(n_way=20, k_shot=5, arg=arg)
