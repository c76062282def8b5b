"""Scaling sweeps: expand a grid into named training runs, run them, report quality vs Gflops.

  python -m dit_jax.sweep --grid configs/sweeps/digits.py [--run local|print|launch|none]
      [--workdir_root DIR] [--report] [--report_dir DIR]

A grid file defines ``get_sweep() -> dict`` with
  config:     the base config, as given to ``dit_jax.train --config`` ("configs/digits.py").
  fixed:      {"field.path": value} applied to every run (e.g. an equal step budget).
  axes:       [{"field.path": [values], ...}, ...]: fields inside one dict vary together (zipped,
              e.g. width with heads); the runs are the product over the dicts.
  keep:       optional predicate on a run's {"field.path": value} dict to prune the product.
  evaluation: optional dict(quality="digits" | "fid", num_samples=, sampler=,
              num_sampling_steps=, cfg_scale=; for "fid" also reference= and optionally
              inception_weights=): sample each finished run with ``dit_jax.sample`` and score
              it, with the digits classifier or with ``dit_jax.evaluate`` (FID, sFID, IS,
              precision, recall against the reference npz).
Runs are named from their values ("p2_w128_d4") and live in WORKDIR_ROOT/NAME. ``--run local``
trains them one after another (subprocesses of ``dit_jax.train``), skipping runs whose final
checkpoint exists; ``print`` prints one ``launch/up.sh`` command per run (a TPU each, named
TPU_PREFIX-NAME); ``launch`` runs those commands. ``--report`` collects every finished run's
final metrics (cached in WORKDIR/sweep_result.json) and writes results.csv, results.md and
PNG plots of loss and quality against Gflops and training compute, each with a power law
y = a * x^b fitted by least squares in log-log space. A run trained with ``config.eval`` (FID
during training) reports its last logged ``eval/fid`` when the grid has no evaluation, so the
paper's plot, FID against forward Gflops, comes either way.

Gflops are forward multiply-accumulates per image (the paper's convention, ``dit_gflops``);
training compute = Gflops x global batch x steps x 3 (forward + backward). The final loss is
the mean of the logged training losses over the last 10% of steps (one logged loss is noisy).
"""
import csv
import dataclasses
import itertools
import json
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Callable, Sequence

from absl import app, flags
from etils import epath
import numpy as np

from dit_jax import config_files

RUN_MODES = ("local", "print", "launch", "none")
RESULT_FILE = "sweep_result.json"
SAMPLES_FILE = "sweep_samples.npz"
FINAL_LOSS_FRACTION = 0.1
# Short names of common fields in run names; other fields use their last path component.
ABBREVIATIONS = {"patch_size": "p", "hidden_size": "w", "depth": "d", "num_heads": "h",
                 "variant": "", "mlp_ratio": "mlp", "learning_rate": "lr",
                 "global_batch_size": "bs", "num_train_steps": "steps"}
# Metrics plotted against compute: (column, label); "error" is 1 - accuracy (lower is better,
# like the loss and the Fréchet distance, so all three can follow decreasing power laws).
PLOTTED = (("final_loss", "final training loss"), ("fid", "FID (Inception pool3)"),
           ("fd", "Fréchet distance (digits features)"),
           ("error", "classifier error (1 - accuracy)"))
QUALITIES = ("digits", "fid")
FID_FILE = "sweep_fid.json"
FID_SCORES = ("fid", "sfid", "inception_score", "precision", "recall")
X_AXES = (("gflops", "forward Gflops per image"),
          ("train_compute", "training compute (Gflops x batch x steps x 3)"))
LAUNCH_UP = pathlib.Path(__file__).resolve().parent.parent / "launch" / "up.sh"

FLAGS = flags.FLAGS
flags.DEFINE_string("grid", None, "Grid file, e.g. configs/sweeps/digits.py.")
flags.DEFINE_enum("run", "local", RUN_MODES, "Train here one after another, print or launch "
                  "the TPU commands, or none (only --report).")
flags.DEFINE_string("workdir_root", None, "Parent of the run workdirs (default "
                    "workdirs/sweeps/GRID_NAME; a gs:// path for --run launch).")
flags.DEFINE_bool("report", False, "Collect final metrics and write the table and plots.")
flags.DEFINE_string("report_dir", None, "Where the report goes (default WORKDIR_ROOT/report).")
flags.DEFINE_string("tpu_prefix", "dit-sweep", "TPU names are TPU_PREFIX-RUN_NAME.")
flags.DEFINE_string("launch_args", "", "Extra launch/up.sh flags, e.g. "
                    "'--zone=us-east5-a --accelerator_type=v5p-8 --spot'.")


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of the grid: its name and the config fields it sets (beyond ``fixed``)."""
  name: str
  values: dict


def load_grid(path: str) -> dict:
  """Imports a grid file and returns its ``get_sweep()`` dict, checked."""
  grid = config_files.import_file(path, "configs/sweeps/digits.py").get_sweep()
  unknown = set(grid) - {"config", "fixed", "axes", "keep", "evaluation"}
  if unknown or "config" not in grid:
    raise ValueError(f"{path}: get_sweep() needs 'config' and may have fixed, axes, keep, "
                     f"evaluation; got unknown keys {sorted(unknown)}.")
  return grid


def format_value(value) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  return str(value).replace("/", "-")


def run_name(values: dict) -> str:
  """"p2_w128_d4" for {"model.patch_size": 2, "model.hidden_size": 128, "model.depth": 4}."""
  short = {field: ABBREVIATIONS.get(field.rsplit(".", 1)[-1], field.rsplit(".", 1)[-1])
           for field in values}
  clashes = sorted(f for f in short if list(short.values()).count(short[f]) > 1)
  if clashes:
    raise ValueError(f"grid fields {clashes} share a short name in run names; vary only one of "
                     "them, or add a distinct entry to dit_jax.sweep.ABBREVIATIONS.")
  return "_".join(short[f] + format_value(v) for f, v in values.items()) or "base"


def expand(grid: dict) -> list[Run]:
  """The grid's runs in order: the product over ``axes`` (each dict zipped), pruned by ``keep``."""
  groups = []
  for axis in grid.get("axes", []):
    lengths = {field: len(values) for field, values in axis.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"grid axis {axis}: fields varied together need equally long value lists, "
                       f"got lengths {lengths}.")
    n = next(iter(lengths.values()))
    groups.append([{f: vals[i] for f, vals in axis.items()} for i in range(n)])
  keep: Callable[[dict], bool] = grid.get("keep") or (lambda values: True)
  runs = []
  for combo in itertools.product(*groups):
    values = {k: v for group in combo for k, v in group.items()}
    if keep(values):
      runs.append(Run(run_name(values), values))
  names = [r.name for r in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"grid gives several runs the same name {duplicates}: their values print "
                     "alike (e.g. 1e-4 and 1.00001e-4); make the values distinct.")
  return runs


def override_flags(overrides: dict) -> list[str]:
  return [f"--config.{field}={value}" for field, value in overrides.items()]


def build_config(grid: dict, run: Run):
  """The run's full config: the base config's ``get_config(arg)`` with fixed and run values set
  (a field the base config does not define raises KeyError)."""
  return config_files.override(config_files.load_spec(grid["config"]),
                               {**grid.get("fixed", {}), **run.values}, grid["config"])


def model_stats(config) -> dict:
  """Gflops, parameter count and training compute of a config's model (no allocation)."""
  from dit_jax import flops  # pylint: disable=import-outside-toplevel
  from dit_jax.models import dit  # pylint: disable=import-outside-toplevel
  model = dit.build_model(config.model)
  gflops = flops.dit_gflops(model)
  return dict(gflops=gflops, params=dit.num_params(model),
              train_compute=gflops * config.global_batch_size * config.num_train_steps * 3)


def train_command(grid: dict, run: Run, workdir: str) -> list[str]:
  overrides = {**grid.get("fixed", {}), **run.values}
  return [sys.executable, "-m", "dit_jax.train", f"--config={grid['config']}",
          f"--workdir={workdir}", *override_flags(overrides)]


def launch_command(grid: dict, run: Run, workdir: str, tpu_prefix: str, launch_args: str):
  """launch/up.sh for one run: its own TPU, named TPU_PREFIX-RUN_NAME (lowercase, hyphens)."""
  tpu = re.sub(r"[^a-z0-9-]+", "-", f"{tpu_prefix}-{run.name}".lower()).strip("-")
  overrides = {**grid.get("fixed", {}), **run.values}
  return ["bash", str(LAUNCH_UP), "--name", tpu, *shlex.split(launch_args),
          "--config", grid["config"], "--workdir", workdir, "--", *override_flags(overrides)]


def is_trained(workdir: str, num_steps: int) -> bool:
  """True when the run's final checkpoint (WORKDIR/checkpoints/NUM_STEPS) has been written."""
  return (epath.Path(workdir) / "checkpoints" / str(num_steps)).is_dir()


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """Scalars of the TensorBoard event files in ``workdir`` and its subdirectories: tag -> [(step, value)]."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=import-outside-toplevel
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  scalars: dict[str, list[tuple[int, float]]] = {}
  root = epath.Path(workdir)
  for path in sorted([*root.glob("*tfevents*"), *root.glob("*/*tfevents*")]):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      for value in event.summary.value:
        if value.HasField("simple_value"):
          number = value.simple_value
        elif value.HasField("tensor") and not value.tensor.string_val:
          array = tensor_util.make_ndarray(value.tensor)
          if array.size != 1:
            continue
          number = float(array.reshape(()))
        else:
          continue
        scalars.setdefault(value.tag, []).append((event.step, float(number)))
  return {tag: sorted(points) for tag, points in scalars.items()}


def final_loss(scalars: dict, num_steps: int) -> float:
  """Mean training loss over the last FINAL_LOSS_FRACTION of the steps."""
  tag = next((t for t in ("loss", "train/loss", "train_loss") if t in scalars), None)
  if tag is None:
    raise ValueError(f"no training loss among the logged scalars {sorted(scalars)}.")
  start = num_steps * (1 - FINAL_LOSS_FRACTION)
  tail = [v for step, v in scalars[tag] if step >= start] or [scalars[tag][-1][1]]
  return float(np.mean(tail))


def evaluate_quality(evaluation: dict, workdir: str) -> dict:
  """Samples the run's EMA model with ``dit_jax.sample`` and scores the samples."""
  kind = evaluation.get("quality")
  if kind not in QUALITIES:
    raise ValueError(f"evaluation quality {kind!r} unknown; use one of {QUALITIES}.")
  if kind == "fid" and not evaluation.get("reference"):
    raise ValueError("evaluation quality 'fid' needs reference= (a reference npz).")
  output = str(epath.Path(workdir) / SAMPLES_FILE)
  cmd = [sys.executable, "-m", "dit_jax.sample", f"--workdir={workdir}", f"--output={output}",
         f"--num_samples={evaluation.get('num_samples', 1000)}", "--seed=0", "--eval=false"]
  for key in ("sampler", "num_sampling_steps", "cfg_scale"):
    if key in evaluation:
      cmd.append(f"--{key}={evaluation[key]}")
  subprocess.run(cmd, check=True)
  if kind == "fid":
    return fid_scores(evaluation, output, str(epath.Path(workdir) / FID_FILE))
  from dit_jax import quality  # pylint: disable=import-outside-toplevel
  with epath.Path(output).open("rb") as f:
    data = np.load(f)
    return quality.digits_quality(data["arr_0"], data["labels"])


def fid_scores(evaluation: dict, samples: str, output: str) -> dict:
  """Runs ``dit_jax.evaluate`` on the samples; returns FID, sFID, IS, precision and recall."""
  cmd = [sys.executable, "-m", "dit_jax.evaluate", f"--samples={samples}",
         f"--reference={evaluation['reference']}", f"--output={output}"]
  if evaluation.get("inception_weights"):
    cmd.append(f"--inception_weights={evaluation['inception_weights']}")
  subprocess.run(cmd, check=True)
  result = json.loads(epath.Path(output).read_text())
  return {k: result[k] for k in FID_SCORES if result.get(k) is not None}


def collect(grid: dict, run: Run, workdir: str) -> dict | None:
  """The run's report row (cached in WORKDIR/sweep_result.json); None if it has not finished."""
  config = build_config(grid, run)
  cache = epath.Path(workdir) / RESULT_FILE
  if cache.exists():
    return json.loads(cache.read_text())
  if not is_trained(workdir, config.num_train_steps):
    return None
  row = dict(name=run.name, **{k.rsplit(".", 1)[-1]: v for k, v in run.values.items()},
             **model_stats(config))
  scalars = read_scalars(workdir)
  row["final_loss"] = final_loss(scalars, config.num_train_steps)
  if "eval/fid" in scalars:  # FID during training (config.eval): its last value
    row["fid"] = scalars["eval/fid"][-1][1]
  if grid.get("evaluation"):
    metrics = evaluate_quality(grid["evaluation"], workdir)
    row.update(metrics)
    if "accuracy" in metrics:
      row["error"] = 1.0 - metrics["accuracy"]
  cache.write_text(json.dumps(row, indent=1))
  return row


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
  """(a, b) of y = a * x^b, least squares on (log x, log y); points with x or y <= 0 are dropped."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
  if ok.sum() < 2:
    raise ValueError(f"a power-law fit needs at least 2 positive points, got {int(ok.sum())}.")
  b, log_a = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
  return float(math.exp(log_a)), float(b)


def write_report(rows: list[dict], out_dir: str) -> dict[str, float]:
  """Writes results.csv, results.md and one PNG per x axis; returns the fitted exponents."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  if not rows:
    raise ValueError("no finished runs to report; train them first (--run local or launch).")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = sorted(rows, key=lambda r: r["gflops"])
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with (out / "results.csv").open("w") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  metrics = [(m, label) for m, label in PLOTTED if all(m in r for r in rows)]
  exponents = {}
  for x_key, x_label in X_AXES:
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, (m, label) in zip(axes[0], metrics):
      x = np.array([r[x_key] for r in rows])
      y = np.array([r[m] for r in rows])
      patches = np.array([str(r.get("patch_size", "")) for r in rows])
      for patch in dict.fromkeys(patches):  # one colour per patch size, as in the paper's plots
        ax.loglog(x[patches == patch], y[patches == patch], "o",
                  label=f"patch {patch}" if patch else None)
      for xi, yi, r in zip(x, y, rows):
        ax.annotate(r["name"], (xi, yi), fontsize=6, alpha=0.7)
      try:
        a, b = fit_power_law(x, y)
      except ValueError:
        continue
      exponents[f"{m} vs {x_key}"] = b
      grid_x = np.geomspace(x.min(), x.max(), 50)
      ax.loglog(grid_x, a * grid_x**b, "--", label=f"fit: {a:.3g} x^{b:.3f}")
      ax.set(xlabel=x_label, ylabel=label, title=f"{label}\nexponent {b:.3f}")
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # overlapping labels
      ax.legend(fontsize=8)
    fig.tight_layout()
    with (out / f"vs_{x_key}.png").open("wb") as f:
      fig.savefig(f, dpi=100)
    plt.close(fig)
  (out / "results.md").write_text(markdown_table(rows, columns) + "\n\nPower-law exponents "
                                  "(y = a * x^b):\n\n" + "".join(
                                      f"- {k}: b = {v:.3f}\n" for k, v in exponents.items()))
  return exponents


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  def cell(v):
    if isinstance(v, float):
      return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"
    return str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def main(argv):
  del argv
  if not FLAGS.grid:
    raise app.UsageError("--grid is required, e.g. --grid configs/sweeps/digits.py")
  grid = load_grid(FLAGS.grid)
  root = FLAGS.workdir_root or f"workdirs/sweeps/{pathlib.Path(FLAGS.grid).stem}"
  if FLAGS.run in ("print", "launch") and not root.startswith("gs://"):
    raise app.UsageError(f"--run {FLAGS.run} starts TPU jobs, whose workdirs must be on GCS; "
                         "pass --workdir_root gs://BUCKET/SWEEP.")
  if "://" not in root:
    root = os.path.abspath(root)  # Orbax refuses relative checkpoint paths.
  runs = expand(grid)
  print(f"{len(runs)} runs: {', '.join(r.name for r in runs)}")
  for run in runs:
    workdir = f"{root}/{run.name}"
    if FLAGS.run == "print":
      print(shlex.join(launch_command(grid, run, workdir, FLAGS.tpu_prefix, FLAGS.launch_args)))
    elif FLAGS.run != "none" and is_trained(workdir, build_config(grid, run).num_train_steps):
      print(f"{run.name}: finished, skipped")
    elif FLAGS.run == "local":
      print(f"{run.name}: training in {workdir}", flush=True)
      subprocess.run(train_command(grid, run, workdir), check=True)
    elif FLAGS.run == "launch":
      subprocess.run(launch_command(grid, run, workdir, FLAGS.tpu_prefix, FLAGS.launch_args),
                     check=True)
  if FLAGS.report:
    rows = [row for run in runs if (row := collect(grid, run, f"{root}/{run.name}"))]
    missing = len(runs) - len(rows)
    report_dir = FLAGS.report_dir or f"{root}/report"
    exponents = write_report(rows, report_dir)
    print(f"report of {len(rows)} runs ({missing} not finished) in {report_dir}")
    for name, b in exponents.items():
      print(f"power-law exponent {name}: {b:.3f}")


if __name__ == "__main__":
  app.run(main)
