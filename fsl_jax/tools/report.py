"""Results tables and plots from one or more workdirs.

    python -m fsl_jax.report DIR [DIR ...] [--out=FOLDER] [--episodes_from=DIR | --noepisodes]

writes into ``--out`` (default: the first DIR):
  results.md            one table per dataset and algorithm: n-way/k-shot, the
                        published figure, ours +- 95% CI, the run's config and
                        training time; and Lake's one-shot runs where evaluated.
  learning_curves.png   training loss and validation accuracy against steps, one
                        line per DIR.
  episodes.png          test episode 0 of ``--episodes_from`` (default: the first
                        DIR with checkpoints): support and query images with the
                        best checkpoint's predicted and the true labels.

Each DIR is a training workdir: results.json, metrics.jsonl, checkpoints/.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from fsl_jax.errors import FslError
from fsl_jax.runtime.metrics_log import format_duration
from fsl_jax.tools import plots, published

MAX_QUERY_ROWS = 3  # Query images shown per class in episodes.png.
MAX_CLASSES = 20


# --- Reading workdirs -------------------------------------------------------------------
def read_run(workdir: str) -> dict:
  """{"dir", "name", "results", "curves"} of one workdir; results.json must exist."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FslError(f"{workdir} has no results.json. Train it first (fsl_jax.main).")
  with open(path) as f:
    results = json.load(f)
  curves = defaultdict(lambda: ([], []))  # (split, metric) -> (steps, values)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      for line in f:
        if not line.strip():
          continue
        row = json.loads(line)
        split = row.get("split", row.get("kind"))
        for name, value in row.items():
          if name not in ("step", "split", "kind"):
            curves[split, name][0].append(row["step"])
            curves[split, name][1].append(value)
  name = os.path.basename(os.path.normpath(workdir))
  return {"dir": workdir, "name": name, "results": results, "curves": dict(curves)}


def episode_results(results: dict) -> list[tuple[str, dict]]:
  """(key, result) of every episode evaluation in results.json except validation."""
  return [
    (key, value)
    for key, value in results.items()
    if key != "val" and isinstance(value, dict) and {"n_way", "k_shot", "accuracy"} <= set(value)
  ]


def training_time(results: dict) -> str:
  seconds = results.get("wall_seconds", results.get("train_seconds"))
  return format_duration(seconds) if seconds is not None else "?"


def run_summary(results: dict, result: dict | None = None) -> str:
  """The run's config in a few words: data split, training episodes, model, step tested."""
  config = results.get("config", {})
  train, data, model = config.get("train", {}), config.get("data", {}), config.get("model", {})
  step = (result or {}).get("checkpoint_step")  # Set by --mode=evaluate.
  step = results.get("checkpoint_step", results.get("test_step", "?")) if step is None else step
  words = [
    f"{data.get('split', '?')} split",
    f"trained {train.get('n_way', '?')}-way {train.get('k_shot', '?')}-shot",
    f"{model.get('filters', '?')} filters",
    f"checkpoint step {step}",
  ]
  return ", ".join(words)


# --- results.md ---------------------------------------------------------------------------
def results_table(runs: list[dict]) -> str:
  """Markdown: one table per (dataset, algorithm), rows sorted by setting."""
  groups = defaultdict(list)
  for run in runs:
    config = run["results"].get("config", {})
    dataset = config.get("data", {}).get("dataset", "?")
    label = published.algorithm_label(config)
    for key, result in episode_results(run["results"]):
      groups[dataset, label].append((run, key, result))
  lines = ["# Results", ""]
  lines += [
    "Accuracy in % on test-split episodes, mean +- 95% confidence interval (1.96 standard "
    "errors over episodes). Published figures are for the standard splits (Omniglot: "
    "Vinyals et al.'s; miniImageNet: Ravi & Larochelle's); runs on other splits are not "
    "directly comparable with them. Run time: the training run's wall time (data, training, "
    "validation and test).",
    "",
  ]
  for (dataset, label), rows in sorted(groups.items()):
    lines += [f"## {dataset}, {label}", ""]
    lines += [
      "| setting | published | ours | episodes | results key | run | config | run time |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows.sort(key=lambda r: (r[2]["n_way"], r[2]["k_shot"], r[1], r[0]["name"]))
    for run, key, result in rows:
      paper = published.published_accuracy(dataset, label, result["n_way"], result["k_shot"])
      lines.append(
        f"| {result['n_way']}-way {result['k_shot']}-shot "
        f"| {'-' if paper is None else f'{paper:.2f}'} "
        f"| {100 * result['accuracy']:.2f} +- {100 * result['ci95']:.2f} "
        f"| {result.get('episodes', '?')} | {key} | {run['name']} "
        f"| {run_summary(run['results'], result)} | {training_time(run['results'])} |"
      )
    source = published.SOURCES.get((dataset, label))
    lines += ["", f"Published: {source}." if source else "Published: none on file.", ""]
  lake = [(run, run["results"]["lake_runs"]) for run in runs if "lake_runs" in run["results"]]
  if lake:
    lines += lake_runs_table(lake)
  return "\n".join(lines)


def lake_runs_table(lake: list[tuple[dict, dict]]) -> list[str]:
  """Markdown lines: each run's error on Lake's runs beside the figure published for the
  background set it trained on (none for splits that are neither), then the
  published reference rows (humans, Bayesian Program Learning)."""
  lines = ["## Lake et al.'s 20 one-shot runs (20-way 1-shot, within alphabet)", ""]
  lines += [
    "| run | algorithm | error % | published error % | trained on | per-run error % | config |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for run, result in lake:
    config = run["results"].get("config", {})
    label = published.algorithm_label(config)
    split = config.get("data", {}).get("split", "?")
    background = published.lake_background(split)
    figure = published.LAKE_RUNS_ERROR.get(label, {}).get(background)
    per_run = " ".join(f"{e:g}" for e in result["per_run_error_percent"])
    lines.append(
      f"| {run['name']} | {label} | {result['error_percent']:.2f} +- "
      f"{result.get('ci95_percent', float('nan')):.2f} "
      f"| {published.lake_figure_text(figure, background)} | {split} | {per_run} "
      f"| {run_summary(run['results'], result)} |"
    )
  lines += ["", "Published reference points:", ""]
  for label, name in published.LAKE_RUNS_LABELS.items():
    for background, figure in published.LAKE_RUNS_ERROR[label].items():
      lines.append(f"- {name}: {published.lake_figure_text(figure, background)}, {figure.source}.")
  lines += [
    "",
    f"Published: {published.LAKE_RUNS_SOURCE}. Only runs trained on one minimal background "
    "set (split small1 or small2) compare with the minimal-setting figures, and only runs "
    "on the lake split with the original ones.",
    "",
  ]
  return lines


# --- learning_curves.png ------------------------------------------------------------------
def learning_curves(runs: list[dict], path: str) -> None:
  def series(split, metric, scale=1.0):
    out = []
    for run in runs:
      steps, values = run["curves"].get((split, metric), ([], []))
      out.append(plots.Series(run["name"], steps, [scale * v for v in values]))
    return out

  plots.line_charts(
    [
      plots.Panel(series("train", "loss"), "training loss", "step", "loss"),
      plots.Panel(series("val", "accuracy", 100.0), "validation accuracy", "step", "accuracy %"),
    ],
    path,
  )


# --- episodes.png -------------------------------------------------------------------------
def run_config(results: dict) -> ml_collections.ConfigDict:
  """The run's config from results.json, on top of today's defaults (for keys added since)."""
  saved = results.get("config")
  if not saved:
    raise FslError("results.json has no config, so its model cannot be rebuilt.")
  try:
    from configs import common  # The repository's configs package, when run from its root.

    config = common.get_base_config()
  except ImportError:
    config = ml_collections.ConfigDict()

  def merge(target: ml_collections.ConfigDict, source: dict) -> None:
    for key, value in source.items():
      if isinstance(value, dict) and isinstance(target.get(key), ml_collections.ConfigDict):
        merge(target[key], value)
      else:
        target[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value

  merge(config, saved)
  return config


def predict_test_episode(workdir: str, results: dict):
  """(episode, predictions [N*Q], config, step) for test episode 0 of ``workdir``'s best state."""
  from fsl_jax.data.datasets import load_dataset
  from fsl_jax.data.episodes import Episode, EpisodeSampler, EpisodeShape
  from fsl_jax.evaluate import run_episodes
  from fsl_jax.evaluate_checkpoint import restore_best
  from fsl_jax.runtime import sharding
  from fsl_jax.steps import make_eval_step

  config = run_config(results)
  data = load_dataset(config.data)
  if not {"test", "val"} & set(data):
    raise FslError(
      f"{workdir} trained on split {config.data.split!r}, which has no val or test classes to "
      "draw an episode from; pass --episodes_from=DIR of another run, or --noepisodes."
    )
  part = "test" if "test" in data else "val"
  shape = EpisodeShape(config.eval.n_way, config.eval.k_shot, config.eval.n_query)
  sampler = EpisodeSampler(data[part], shape, config.eval.seed, "config.eval")
  episode = sampler.episode(0)
  state, algorithm = restore_best(config, workdir, episode.support)
  eval_step = make_eval_step(algorithm.loss, shape.n_way, cpu_matmuls=config.cpu_matmuls)
  batch = Episode(*(x[None] for x in episode))
  metrics = run_episodes(eval_step, state, batch, sharding.make_mesh())
  if "predictions" not in metrics:
    raise FslError(f"algorithm {config.algorithm!r} gives no per-query predictions.")
  return episode, metrics["predictions"][0], config, int(jax.device_get(state.step))


def episode_grid(episode, predictions: np.ndarray, shape, title: str, path: str) -> None:
  """Columns are classes; rows the K support shots, then up to MAX_QUERY_ROWS queries."""
  n, k, q = shape.n_way, shape.k_shot, shape.n_query
  shown_q, cols = min(q, MAX_QUERY_ROWS), min(n, MAX_CLASSES)
  image_shape = episode.support.shape[1:]
  support = episode.support.reshape((n, k, *image_shape))[:cols]  # [N, K, H, W, C]
  query = episode.query.reshape((n, q, *image_shape))[:cols, :shown_q]  # [N, Q', H, W, C]
  predicted = predictions.reshape(n, q)[:cols, :shown_q]
  grid = np.concatenate([support, query], axis=1).transpose(1, 0, 2, 3, 4)  # [K+Q', N, ...]
  captions, colors = [], []
  for _ in range(k):
    captions.append([f"class {c}" for c in range(cols)])
    colors.append([plots.GREY] * cols)
  for row in range(shown_q):
    captions.append(
      [
        f"pred {p}" if p == c else f"pred {p}, true {c}"
        for c, p in enumerate(int(x) for x in predicted[:, row])
      ]
    )
    colors.append([plots.GREEN if p == c else plots.RED for c, p in enumerate(predicted[:, row])])
  row_labels = [f"support {s + 1}" for s in range(k)] + [f"query {r + 1}" for r in range(shown_q)]
  plots.image_grid(grid, captions, colors, path, title=title, row_labels=row_labels)


def draw_episodes(run: dict, path: str) -> None:
  from fsl_jax.data.episodes import EpisodeShape

  episode, predictions, config, step = predict_test_episode(run["dir"], run["results"])
  shape = EpisodeShape(config.eval.n_way, config.eval.k_shot, config.eval.n_query)
  accuracy = 100.0 * float(np.mean(predictions == episode.query_labels))
  title = (
    f"{run['name']}: test episode 0, {shape.n_way}-way {shape.k_shot}-shot, "
    f"query accuracy {accuracy:.1f}% over {len(predictions)} queries (checkpoint step {step})"
  )
  episode_grid(episode, predictions, shape, title, path)


def write_report(
  workdirs: list[str], out: str | None = None, episodes_from: str | None = None, episodes=True
) -> dict:
  """Writes results.md, learning_curves.png and (if ``episodes``) episodes.png; returns paths."""
  if not workdirs:
    raise FslError("name at least one workdir: python -m fsl_jax.report DIR [DIR ...]")
  runs = [read_run(d) for d in workdirs]
  out = out or workdirs[0]
  os.makedirs(out, exist_ok=True)
  paths = {
    "results": os.path.join(out, "results.md"),
    "learning_curves": os.path.join(out, "learning_curves.png"),
  }
  with open(paths["results"], "w") as f:
    f.write(results_table(runs))
  learning_curves(runs, paths["learning_curves"])
  if episodes:
    if episodes_from is None:
      with_checkpoints = [r for r in runs if os.path.isdir(os.path.join(r["dir"], "checkpoints"))]
      if not with_checkpoints:
        raise FslError("no DIR has checkpoints/ for episodes.png; pass --noepisodes.")
      # A run that was tested first: train-only splits (small1, small2, small_all) have
      # no test classes to draw.
      source = sorted(with_checkpoints, key=lambda r: "test" not in r["results"])[0]
    else:
      source = read_run(episodes_from)
    paths["episodes"] = os.path.join(out, "episodes.png")
    draw_episodes(source, paths["episodes"])
  return paths


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs ~30 lines per restore.
  f = flags.FLAGS
  try:
    paths = write_report(argv[1:], f.out, f.episodes_from, f.episodes)
  except FslError as e:
    raise SystemExit(f"error: {e}") from e
  for path in paths.values():
    print(f"wrote {path}")


def run_main() -> None:
  """``python -m fsl_jax.report``: defines the flags (importing this module adds none) and runs."""
  flags.DEFINE_string("out", None, "Folder for the outputs (default: the first DIR).")
  flags.DEFINE_string(
    "episodes_from", None, "Workdir whose best checkpoint draws episodes.png (default: first)."
  )
  flags.DEFINE_bool("episodes", True, "Draw episodes.png (restores a checkpoint).")
  app.run(main)


if __name__ == "__main__":
  run_main()
