"""Published test accuracies (%) that the report compares with, and their sources.

Omniglot figures are on Vinyals et al.'s split (1200 training characters plus
rotations), miniImageNet on Ravi & Larochelle's split, both 5-way and 20-way
(Omniglot) or 5-way (miniImageNet) with 1 and 5 shots. Runs on other splits
(e.g. the small Omniglot split) are not directly comparable; the report says so.
"""

from __future__ import annotations

import dataclasses

from fsl_jax.data import omniglot_splits

# (dataset, algorithm) -> {(n_way, k_shot): accuracy in %}.
ACCURACY = {
  ("omniglot", "protonet"): {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9},
  ("mini_imagenet", "protonet"): {(5, 1): 49.42, (5, 5): 68.20},
  ("omniglot", "matching"): {(5, 1): 98.1, (5, 5): 98.9, (20, 1): 93.8, (20, 5): 98.5},
  ("mini_imagenet", "matching"): {(5, 1): 43.56, (5, 5): 55.31},
  ("omniglot", "maml"): {(5, 1): 98.7, (5, 5): 99.9, (20, 1): 95.8, (20, 5): 98.9},
  ("mini_imagenet", "maml"): {(5, 1): 48.70, (5, 5): 63.11},
  ("omniglot", "maml_first_order"): {(5, 1): 98.3, (5, 5): 99.2, (20, 1): 89.4, (20, 5): 97.9},
  ("mini_imagenet", "maml_first_order"): {(5, 1): 48.07, (5, 5): 63.15},
  # "Reptile + Transduction": fsl_jax's batch norm is transductive, as theirs with it.
  ("omniglot", "reptile"): {(5, 1): 97.68, (5, 5): 99.48, (20, 1): 89.43, (20, 5): 97.12},
  ("mini_imagenet", "reptile"): {(5, 1): 49.97, (5, 5): 65.99},
  # iMAML with gradient descent in the inner loop, as configs/imaml_*.py.
  ("omniglot", "imaml"): {(5, 1): 99.16, (5, 5): 99.67, (20, 1): 94.46, (20, 5): 98.69},
}

SOURCES = {
  ("omniglot", "protonet"): "Snell, Swersky & Zemel (2017), Prototypical Networks for Few-shot "
  "Learning, Table 1",
  ("mini_imagenet", "protonet"): "Snell, Swersky & Zemel (2017), Prototypical Networks for "
  "Few-shot Learning, Table 2",
  ("omniglot", "matching"): "Vinyals et al. (2016), Matching Networks for One Shot Learning, "
  "Table 1",
  ("mini_imagenet", "matching"): "Ravi & Larochelle (2017), Optimization as a Model for Few-Shot "
  "Learning, Table 1: Matching Networks with full context embeddings re-run on the 64/16/20 "
  "split used here (Vinyals et al.'s own Table 2 gives 44.2 / 57.0 on a different split)",
  ("omniglot", "maml"): "Finn, Abbeel & Levine (2017), Model-Agnostic Meta-Learning, Table 1",
  ("mini_imagenet", "maml"): "Finn, Abbeel & Levine (2017), Model-Agnostic Meta-Learning, Table 1",
  ("omniglot", "maml_first_order"): "Nichol, Achiam & Schulman (2018), On First-Order "
  "Meta-Learning Algorithms, Omniglot table: first-order MAML with transduction (batch norm "
  "on the whole query set at test time, as fsl_jax's MAML); Finn et al. report first order on "
  "miniImageNet only",
  ("mini_imagenet", "maml_first_order"): "Finn, Abbeel & Levine (2017), Model-Agnostic "
  "Meta-Learning, Table 1 (first-order approximation)",
  ("omniglot", "reptile"): "Nichol, Achiam & Schulman (2018), On First-Order Meta-Learning "
  "Algorithms (arXiv:1803.02999v3), Table 2: Reptile + Transduction (batch norm statistics "
  "shared by the test images, as fsl_jax's transductive batch norm); without transduction "
  "95.39 / 98.90 / 88.14 / 96.65",
  ("mini_imagenet", "reptile"): "Nichol, Achiam & Schulman (2018), On First-Order "
  "Meta-Learning Algorithms (arXiv:1803.02999v3), Table 1: Reptile + Transduction (batch norm "
  "statistics shared by the test images, as fsl_jax's transductive batch norm); without "
  "transduction 47.07 / 62.74",
  ("omniglot", "imaml"): "Rajeswaran, Finn, Kakade & Levine (2019), Meta-Learning with "
  "Implicit Gradients, Table 2: iMAML, GD (16 inner steps at 5-way, 25 at 20-way, lambda 2.0, "
  "5 CG steps); the Hessian-free inner solver gives 99.50 / 99.74 / 96.18 / 99.14. Its "
  "miniImageNet figure (Table 3) is not listed: it could not be checked against the text here",
}


@dataclasses.dataclass(frozen=True)
class LakeFigure:
  """One published error rate (%) on Lake's 20 within-alphabet 20-way 1-shot runs."""

  error: float
  # Whether the figure was checked against a source that could be read; a figure
  # that was not is printed with that caveat, never as plainly published.
  confirmed: bool
  source: str


_LAKE_2015 = (
  "Lake, Salakhutdinov & Tenenbaum (2015), Human-level concept learning through "
  "probabilistic program induction, restated in Lake et al. (2019) Table 1"
)
_LAKE_2019 = (
  "Lake, Salakhutdinov & Tenenbaum (2019), The Omniglot challenge: a 3-year progress "
  "report, Table 1"
)
# Background set ("original": the 30-alphabet images_background; "minimal": one of
# the two 5-alphabet small sets) -> figure, per model. Humans and BPL are the
# reference points of the task, printed with every Lake-runs table.
LAKE_RUNS_ERROR = {
  "human": {"original": LakeFigure(4.5, True, _LAKE_2015)},
  "bpl": {
    "original": LakeFigure(3.3, True, _LAKE_2015),
    "minimal": LakeFigure(4.2, False, _LAKE_2019),
  },
  "protonet": {
    "original": LakeFigure(13.7, False, _LAKE_2019),
    "minimal": LakeFigure(30.1, False, _LAKE_2019),
  },
}
LAKE_RUNS_LABELS = {"human": "Humans", "bpl": "Bayesian Program Learning"}
LAKE_RUNS_SOURCE = _LAKE_2019


def lake_background(split: str) -> str | None:
  """The published setting a run on ``split`` compares with: "original" (the lake
  split's 30-alphabet background set), "minimal" (one 5-alphabet set, small1 or
  small2), or None (small and small_all train on neither; vinyals adds background
  characters of the evaluation set)."""
  if split == "lake":
    return "original"
  if split in omniglot_splits.MINIMAL_SPLITS:
    return "minimal"
  return None


def lake_figure_text(figure: LakeFigure | None, background: str | None) -> str:
  """ "13.7 (original background)", with "not confirmed" where it was not checked."""
  if figure is None:
    return "-"
  caveat = "" if figure.confirmed else "; not confirmed against the paper"
  return f"{figure.error:g} ({background} background{caveat})"


def algorithm_label(config: dict) -> str:
  """The key of ACCURACY for a run's config: MAML is split by meta-gradient and first_order."""
  algorithm = config.get("algorithm", "?")
  maml = config.get("maml", {})
  if algorithm == "maml" and maml.get("meta_gradient") == "implicit":
    algorithm = "imaml"
  if algorithm in ("maml", "imaml") and maml.get("first_order"):
    return f"{algorithm}_first_order"
  return algorithm


def published_accuracy(dataset: str, label: str, n_way: int, k_shot: int) -> float | None:
  return ACCURACY.get((dataset, label), {}).get((n_way, k_shot))
