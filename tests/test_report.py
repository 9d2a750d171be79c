"""python -m fsl_jax.report: results.md rows, learning_curves.png and episodes.png."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import maml_omniglot5w1s, proto_omniglot5w1s
from fsl_jax.algorithms import make_algorithm
from fsl_jax.errors import FslError
from fsl_jax.runtime.checkpointing import Checkpoints
from fsl_jax.state import create_train_state, make_optimizer
from fsl_jax.tools import plots, published, report


def episode_result(accuracy, ci95, n_way, k_shot, episodes=1000):
  return dict(
    accuracy=accuracy, ci95=ci95, n_way=n_way, k_shot=k_shot, n_query=15, episodes=episodes
  )


def write_workdir(path, config, results, curves=True, checkpoint=False):
  path.mkdir()
  (path / "results.json").write_text(json.dumps({**results, "config": config.to_dict()}))
  if curves:
    rows = [{"step": s, "split": "train", "loss": 2.0 / s, "accuracy": 0.5} for s in (1, 2, 4)]
    rows += [
      {"step": s, "split": "val", "loss": 0.3, "accuracy": a} for s, a in ((2, 0.6), (4, 0.8))
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  if checkpoint:
    model, algorithm = make_algorithm(config)
    tx = make_optimizer(config)
    example = jnp.zeros((5, 28, 28, 1), jnp.uint8)
    state = create_train_state(model, tx, example, 0, algorithm.init_params)
    checkpoints = Checkpoints(str(path))
    checkpoints.save(state, val_accuracy=0.5)
    checkpoints.close()
  return str(path)


@pytest.fixture(scope="module")
def report_dirs(tmp_path_factory, omniglot_small_data_dir, omniglot_manual_dir):
  root = tmp_path_factory.mktemp("report")
  proto = proto_omniglot5w1s.get_config("quick")
  proto.data.split = "small"
  proto.data.data_dir = str(omniglot_small_data_dir)
  proto.data.manual_dir = str(omniglot_manual_dir)
  proto.model.filters = 8
  proto_results = {
    "val": episode_result(0.97, 0.01, 5, 1, episodes=300),
    "test": episode_result(0.95872, 0.0031256, 5, 1),
    "test_20way_1shot": episode_result(0.8744, 0.00264, 20, 1),
    "lake_runs": {
      "error_percent": 7.5,
      "ci95_percent": 2.5,
      "per_run_error_percent": [0.0, 5.0, 10.0, 15.0] * 5,
    },
    "checkpoint_step": 800,
    "wall_seconds": 1585.0,
  }
  fomaml = maml_omniglot5w1s.get_config("quick")
  fomaml.maml.first_order = True
  fomaml_results = {"test": episode_result(0.85, 0.005, 20, 1), "train_seconds": 60.0}
  minimal = proto_omniglot5w1s.get_config("quick")
  minimal.data.split = "small1"  # Lake et al.'s minimal setting: one 5-alphabet set.
  minimal_results = {
    "lake_runs": {
      "error_percent": 25.0,
      "ci95_percent": 4.0,
      "per_run_error_percent": [20.0, 30.0] * 10,
    },
    "checkpoint_step": 900,
  }
  minimal.data.data_dir = str(omniglot_small_data_dir)
  minimal.data.manual_dir = str(omniglot_manual_dir)
  minimal.model.filters = 8
  dirs = [
    write_workdir(root / "proto", proto, proto_results, checkpoint=True),
    write_workdir(root / "fomaml", fomaml, fomaml_results, curves=False),
    write_workdir(root / "minimal", minimal, minimal_results, curves=False, checkpoint=True),
  ]
  out = root / "out"
  return report.write_report(dirs, out=str(out)), out


def test_results_md_has_one_table_per_dataset_and_algorithm(report_dirs):
  paths, out = report_dirs
  assert paths["results"] == str(out / "results.md")
  text = (out / "results.md").read_text()
  assert "## omniglot, protonet" in text and "## omniglot, maml_first_order" in text
  assert (
    "| 5-way 1-shot | 98.80 | 95.87 +- 0.31 | 1000 | test | proto | small split, "
    "trained 60-way 1-shot, 8 filters, checkpoint step 800 | 26m25s |" in text
  )
  assert "| 20-way 1-shot | 96.00 | 87.44 +- 0.26 | 1000 | test_20way_1shot | proto |" in text
  assert "| 20-way 1-shot | 89.40 | 85.00 +- 0.50 | 1000 | test | fomaml |" in text
  assert "| 5-way 1-shot | - " not in text and "97.00" not in text  # Validation is not a row.
  assert (
    "Snell, Swersky & Zemel (2017), Prototypical Networks for Few-shot Learning, Table 1" in text
  )
  # First-order MAML on Omniglot is Nichol et al.'s figure, not Finn et al.'s.
  assert "Nichol, Achiam & Schulman (2018)" in text and "with transduction" in text


def test_lake_runs_compare_only_a_minimal_background_set_with_the_minimal_figures(report_dirs):
  text = (report_dirs[1] / "results.md").read_text()
  # The small split trains on 4 alphabets of small1: no published setting matches it.
  assert "| proto | protonet | 7.50 +- 2.50 | - | small | 0 5 10 15 0" in text
  minimal = (
    "| minimal | protonet | 25.00 +- 4.00 | 30.1 (minimal background; not confirmed "
    "against the paper) | small1 | 20 30 20"
  )
  assert minimal in text
  assert "- Humans: 4.5 (original background), Lake, Salakhutdinov & Tenenbaum (2015)" in text
  assert "- Bayesian Program Learning: 3.3 (original background)" in text
  assert "- Bayesian Program Learning: 4.2 (minimal background; not confirmed" in text


def test_learning_curves_png_draws_each_series(report_dirs):
  paths, _ = report_dirs
  image = np.asarray(Image.open(paths["learning_curves"]).convert("RGB"))
  assert image.shape == (400, 1120, 3)
  first = np.array([int(plots.COLORS[0][i : i + 2], 16) for i in (1, 3, 5)])
  # The first run's lines are drawn in both panels (left: loss, right: accuracy).
  for panel in (image[:, :560], image[:, 560:]):
    assert (np.abs(panel.astype(int) - first).sum(axis=-1) == 0).sum() > 50


def test_episodes_png_shows_support_and_labelled_queries(report_dirs):
  paths, _ = report_dirs
  image = Image.open(paths["episodes"])
  # 5 classes of 28x28 at scale 3, 1 support row and 3 query rows.
  assert image.height == 34 + 4 * (28 * 3 + 24) + 8
  pixels = np.asarray(image.convert("RGB")).astype(int)
  green = np.array([int(plots.GREEN[i : i + 2], 16) for i in (1, 3, 5)])
  red = np.array([int(plots.RED[i : i + 2], 16) for i in (1, 3, 5)])
  framed = sum((np.abs(pixels - c).sum(-1) == 0).sum() for c in (green, red))
  assert framed > 15 * 4 * 28 * 3  # Every query cell has a green or red frame.


def test_episode_grid_marks_right_and_wrong_predictions(tmp_path):
  shape = type("Shape", (), {"n_way": 2, "k_shot": 1, "n_query": 1})
  episode = type("E", (), {})()
  episode.support = np.zeros((2, 4, 4, 1), np.uint8)
  episode.query = np.full((2, 4, 4, 1), 255, np.uint8)
  captions = {}

  def grab(images, caps, colors, path, **kwargs):
    captions.update(caps=caps, colors=colors, shape=images.shape)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(plots, "image_grid", grab)
    report.episode_grid(episode, np.array([0, 0]), shape, "t", str(tmp_path / "e.png"))
  assert captions["shape"] == (2, 2, 4, 4, 1)
  assert captions["caps"][1] == ["pred 0", "pred 0, true 1"]
  assert captions["colors"][1] == [plots.GREEN, plots.RED]


@pytest.mark.parametrize("low, high", [(0.27, 1.45), (0, 800), (83.8, 96.4), (-6, 6), (3, 3)])
def test_ticks_are_round_and_enclose_the_data(low, high):
  ticks = plots.nice_ticks(low, high)
  assert ticks[0] <= low and ticks[-1] >= high and 2 <= len(ticks) <= 9
  step = ticks[1] - ticks[0]
  mantissa = step / 10 ** np.floor(np.log10(step))
  assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-6
  np.testing.assert_allclose(np.diff(ticks), step)
  assert plots.nice_ticks(0, 800) == [0, 200, 400, 600, 800]


def test_missing_results_is_an_error(tmp_path):
  with pytest.raises(FslError, match=r"no results\.json"):
    report.write_report([str(tmp_path)])


def test_a_series_keeps_python_floats_from_any_array_and_checks_lengths():
  series = plots.Series("wave", jnp.linspace(0.0, 1.0, 3), np.array([[1.0], [2.0], [3.0]]))
  assert series.xs == [0.0, 0.5, 1.0] and series.ys == [1.0, 2.0, 3.0]
  assert all(type(v) is float for v in series.xs + series.ys)
  with pytest.raises(ValueError, match="'wave': 3 xs but 2 ys"):
    plots.Series("wave", [0.0, 1.0, 2.0], [1.0, 2.0])


def test_episodes_come_from_a_tested_run_and_a_train_only_run_alone_names_the_fix(report_dirs):
  """A run on a train-only split (small1) has no test classes to draw an episode from."""
  paths, out = report_dirs
  # report_dirs lists proto (tested) before minimal: both have checkpoints.
  minimal = str(out.parent / "minimal")
  with pytest.raises(FslError, match=r"split 'small1'.*no val or test classes.*--episodes_from"):
    report.write_report([minimal], out=str(out.parent / "alone"))
  paths = report.write_report(
    [minimal, str(out.parent / "proto")], out=str(out.parent / "both"), episodes=True
  )
  assert os.path.isfile(paths["episodes"])


def test_each_meta_gradient_is_compared_with_its_own_published_figures():
  from configs import imaml_omniglot5w1s, reptile_omniglot5w1s

  labels = {}
  for name, module in [
    ("maml", maml_omniglot5w1s),
    ("imaml", imaml_omniglot5w1s),
    ("reptile", reptile_omniglot5w1s),
  ]:
    config = module.get_config().to_dict()
    labels[name] = published.algorithm_label(config)
    config.setdefault("maml", {})["first_order"] = True
    labels[f"{name} first order"] = published.algorithm_label(config)
  assert labels == {
    "maml": "maml",
    "maml first order": "maml_first_order",
    "imaml": "imaml",
    "imaml first order": "imaml_first_order",
    "reptile": "reptile",
    "reptile first order": "reptile",
  }
  assert published.published_accuracy("omniglot", "imaml", 5, 1) == 99.16
  assert published.published_accuracy("omniglot", "imaml_first_order", 5, 1) is None
