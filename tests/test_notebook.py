"""Executes notebooks/sample.ipynb headless (nbclient + ipykernel) on a small checkpoint.

The notebook's parameters cell is replaced to point at a digits smoke checkpoint written here;
the test passes when every cell runs without error, the grid is displayed as a PNG, and the
quality cell prints the metrics, so the Colab notebook cannot silently rot.
"""
import os
import pathlib

import jax
import nbformat
from nbclient import NotebookClient

from dit_jax import checkpoint, sharding
from dit_jax import train_state as ts

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sample.ipynb"
PARAMETERS_TAG = "parameters"


def _digits_smoke_config():
  import importlib.util
  spec = importlib.util.spec_from_file_location("digits_config", ROOT / "configs" / "digits.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


def test_sample_notebook_executes(tmp_path):
  config = _digits_smoke_config()
  state = ts.init_train_state(config, sharding.create_mesh({"data": -1}), jax.random.key(0))
  checkpoint.save_params_only(str(tmp_path / "run"), config, state.ema_params)

  nb = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [c for c in nb.cells if PARAMETERS_TAG in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  tagged[0].source = "\n".join([
      f"WORKDIR = {str(tmp_path / 'run')!r}", "STEP = None", "CLASSES = [0, 7]",
      "SAMPLES_PER_CLASS = 3", "CFG_SCALE = 2.0", "NUM_STEPS = 4", "SAMPLER = None", "SEED = 0",
      "VAE_DIR = None", "PIP_SOURCE = 'unused: dit_jax is installed'"])
  env_before = dict(os.environ)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(ROOT)}}).execute()
  assert dict(os.environ) == env_before

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "the grid was not displayed"
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "(6, 8, 8, 1) uint8" in text
  assert "'accuracy'" in text and "'fd'" in text
