"""Lake et al.'s 20 one-shot runs: the reader, and the error of each run."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fixtures_lake_runs import class_mask, expected_error_percent, write_lake_runs

from configs import proto_omniglot5w1s
from fsl_jax.algorithms import make_algorithm
from fsl_jax.data.class_images import resize
from fsl_jax.data.lake_runs import load_lake_runs, parse_labels
from fsl_jax.errors import DataError
from fsl_jax.evaluate import evaluate_lake_runs
from fsl_jax.runtime import sharding
from fsl_jax.state import create_train_state
from fsl_jax.steps import make_eval_step


@pytest.fixture(scope="module")
def lake_zip(tmp_path_factory):
  return write_lake_runs(tmp_path_factory.mktemp("lake") / "all_runs.zip", as_zip=True)


@pytest.fixture(scope="module")
def lake_folder(tmp_path_factory):
  return write_lake_runs(tmp_path_factory.mktemp("lake") / "all_runs", as_zip=False)


def test_zip_and_folder_read_alike_in_class_order(lake_zip, lake_folder):
  runs = load_lake_runs(lake_zip, image_size=28)
  assert runs.support.shape == runs.query.shape == (20, 20, 28, 28, 1)
  assert runs.support.dtype == np.uint8
  np.testing.assert_array_equal(runs.support_labels, np.tile(np.arange(20), (20, 1)))
  np.testing.assert_array_equal(runs.query_labels, runs.support_labels)
  for a, b in zip(runs, load_lake_runs(lake_folder, image_size=28), strict=True):
    np.testing.assert_array_equal(a, b)
  # Run 1 has no wrong item: after reordering, query n is class n's drawing.
  np.testing.assert_array_equal(runs.query[0], runs.support[0])
  # Run 2 has one (fixture): exactly one query differs from its class's drawing.
  differs = (runs.query[1] != runs.support[1]).any(axis=(1, 2, 3))
  assert differs.sum() == 1


def test_images_are_preprocessed_like_the_training_data(lake_zip):
  runs = load_lake_runs(lake_zip, image_size=28)
  # Training data: ink = 255 at 105x105, then class_images.resize (Lanczos).
  inked = np.where(class_mask(run=3, klass=7), 255, 0).astype(np.uint8)[..., None]
  np.testing.assert_array_equal(runs.support[2, 6], resize(inked, 28))
  full = load_lake_runs(lake_zip, image_size=105)
  np.testing.assert_array_equal(full.support[2, 6], inked)


def test_run_relative_label_paths_are_accepted(tmp_path):
  relative = load_lake_runs(write_lake_runs(tmp_path / "r", as_zip=False, relative=True), 28)
  release = load_lake_runs(write_lake_runs(tmp_path / "a.zip", as_zip=True), 28)
  np.testing.assert_array_equal(relative.query, release.query)
  pairs = parse_labels("test/item01.png training/class12.png\n", "run05")
  assert pairs == parse_labels("run05/test/item01.png run05/training/class12.png", "run05")


@pytest.mark.parametrize(
  "line", ["run05/test/item01.png", "run04/test/item01.png run05/training/class12.png"]
)
def test_malformed_labels_are_named(line):
  with pytest.raises(DataError, match=r"class_labels\.txt"):
    parse_labels(line, "run05")


def test_missing_path_or_run_says_what_is_expected(tmp_path):
  with pytest.raises(DataError, match="neither a zip nor a folder"):
    load_lake_runs(str(tmp_path / "nowhere"))
  folder = write_lake_runs(tmp_path / "runs", as_zip=False)
  (tmp_path / "runs" / "run07" / "test" / "item03.png").unlink()
  with pytest.raises(DataError, match=r"run07/test/item03\.png"):
    load_lake_runs(folder)


def test_per_run_errors_are_the_known_ones_from_zip_and_folder(lake_zip, lake_folder):
  # An untrained ProtoNet still maps identical drawings to identical embeddings,
  # so it errs exactly on the fixture's wrong items: 0, 5, 10, 15, 0, ... percent.
  config = proto_omniglot5w1s.get_config("quick")
  config.model.filters = 16
  model, algorithm = make_algorithm(config)
  example = jnp.zeros((20, 28, 28, 1), jnp.uint8)
  state = create_train_state(model, optax.sgd(0.0), example, 0, algorithm.init_params)
  eval_step = make_eval_step(algorithm.loss, 20)
  for path in (lake_zip, lake_folder):
    result = evaluate_lake_runs(eval_step, state, load_lake_runs(path, 28), sharding.make_mesh())
    assert result["per_run_error_percent"] == expected_error_percent()
    assert result["error_percent"] == pytest.approx(np.mean(expected_error_percent()))
    assert result["runs"] == 20 and result["ci95_percent"] > 0
  assert eval_step._cache_size() == 1
