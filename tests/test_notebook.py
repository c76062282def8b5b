"""Executes notebooks/sample.ipynb headless (nbclient + ipykernel) on a small checkpoint.

The notebook's parameters cell is replaced to point at a digits smoke checkpoint written here;
the test passes when every cell runs without error, the grid is displayed as a PNG, and the
quality cell prints the metrics, so the Colab notebook cannot silently rot. Only the network
steps are left to the tests of what they call (the released weights: test_convert, the hub
VAE: test_vae). The install cell's check of PIP_SOURCE runs here too: its messages for an empty
and a missing source, and what it passes to pip otherwise. The shipped form has no placeholder.
"""
import os
import pathlib

import jax
import nbformat
import pytest
from nbclient import NotebookClient

from dit_jax import checkpoint, sharding
from dit_jax import train_state as ts

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sample.ipynb"
PARAMETERS_TAG = "parameters"


def _smoke_config(name: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"{name}_config", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


# (config, the printed shape of the 6 samples, the quality keys printed, the displayed formats)
CASES = {
    "digits": ("(6, 8, 8, 1) uint8", ("'accuracy'", "'fd'"), ("image/png",)),
    "moving_digits": ("(6, 8, 16, 16, 1) uint8", ("'frame_accuracy'", "'identity'"),
                      ("image/png", "image/gif")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sample_notebook_executes(tmp_path, name):
  shape, scores, formats = CASES[name]
  config = _smoke_config(name)
  state = ts.init_train_state(config, sharding.create_mesh({"data": -1}), jax.random.key(0))
  checkpoint.save_params_only(str(tmp_path / "run"), config, state.ema_params)

  nb = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [c for c in nb.cells if PARAMETERS_TAG in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  tagged[0].source = "\n".join([
      "PIP_SOURCE = ''", f"CHECKPOINT = {str(tmp_path / 'run')!r}", "VAE = 'unused: pixels'",
      "STEP = None", "CLASSES = [0, 7]", "SAMPLES_PER_CLASS = 3", "CFG_SCALE = 2.0",
      "NUM_STEPS = 4", "SAMPLER = None", "SEED = 0"])
  env_before = dict(os.environ)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(ROOT)}}).execute()
  assert dict(os.environ) == env_before

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  for kind in formats:
    assert any(kind in o.get("data", {}) for o in outputs), f"no {kind} grid was displayed"
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert shape in text and "VAE None" in text
  assert all(score in text for score in scores), text


def _cell(nb, heading: str):
  """The code cell after the markdown cell that starts with ``heading``."""
  index = next(i for i, c in enumerate(nb.cells) if c.source.startswith(heading))
  return nb.cells[index + 1]


def test_shipped_parameters_download_the_released_weights():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  namespace = {}
  exec(next(c for c in nb.cells if PARAMETERS_TAG in c.metadata.get("tags", [])).source, namespace)
  from dit_jax import convert
  assert namespace["CHECKPOINT"] in convert.OFFICIAL_CHECKPOINTS
  assert namespace["VAE"] == "stabilityai/sd-vae-ft-ema" and namespace["PIP_SOURCE"] == ""
  assert "YOUR_ORG" not in nbformat.writes(nb)


def test_install_cell_checks_pip_source(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  namespace = {"PIP_SOURCE": "", "CHECKPOINT": "XL/2-256"}
  exec(_cell(nb, "## Install").source, namespace)  # dit_jax is installed: nothing to do
  pip_target = namespace["pip_target"]
  with pytest.raises(ValueError) as raised:
    pip_target("  ")
  assert str(raised.value).startswith("dit_jax is not installed and PIP_SOURCE is empty. Set "
                                      "PIP_SOURCE in the form above to a git URL")
  with pytest.raises(FileNotFoundError, match=f"PIP_SOURCE '{tmp_path}/dit_jax.whl' does not exist"):
    pip_target(f"{tmp_path}/dit_jax.whl")
  (tmp_path / "dit_jax-0.1.0-py3-none-any.whl").write_bytes(b"")
  for source in ["git+https://github.com/ORG/dit_jax.git@main", str(ROOT),
                 str(tmp_path / "dit_jax-0.1.0-py3-none-any.whl")]:
    assert pip_target(f" {source} ") == source
