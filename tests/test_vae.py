"""Checks the Flax SD-VAE against diffusers' PyTorch AutoencoderKL and DIT-FACTS.md.

- Parity: a small random diffusers AutoencoderKL (3 down blocks) converted with
  `vae_params_from_diffusers` gives the same posterior mean/logvar and decoding (~1e-4), with
  both the current (to_q/...) and the old (query/key/value/proj_attn) attention key names.
- The stabilityai SD-VAE config has 83,653,863 parameters (DIT-FACTS.md), counted abstractly.
- Conversion errors name missing, unexpected and mis-shaped keys; the CLI round-trips a
  safetensors file into a directory that `load_vae` / `make_encode_fn` read.
- ``--hub REPO`` fetches the two files through huggingface_hub: here from a fake hub cache in
  its layout, offline (HF_HUB_OFFLINE=1), in a subprocess so the environment is read as a user
  sets it; a repository it cannot fetch is a usage error naming it and the manual route.
"""
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import linen as nn

from dit_jax.models import vae, vae_weights

SMALL = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
             layers_per_block=1, norm_num_groups=16, down_block_types=("DownEncoderBlock2D",) * 3,
             up_block_types=("UpDecoderBlock2D",) * 3, sample_size=32)


@pytest.fixture(scope="module")
def torch_vae():
  torch.manual_seed(0)
  model = TorchAutoencoderKL(**SMALL).eval()
  with torch.no_grad():  # random, non-trivial norms and biases so every parameter matters
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def _state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _old_names(state_dict):
  new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  out = {}
  for k, v in state_dict.items():
    for new, old in new_to_old.items():
      k = k.replace(f".{new}.", f".{old}.")
    out[k] = v
  return out


@pytest.mark.parametrize("old_names", [False, True])
def test_parity_with_diffusers(torch_vae, old_names):
  state = _state_dict(torch_vae)
  if old_names:
    state = _old_names(state)
    assert any(".query." in k for k in state)
  model = vae.AutoencoderKL.from_diffusers_config(dict(torch_vae.config))
  params = vae_weights.vae_params_from_diffusers(state, model)
  x = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    posterior = torch_vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    ref_mean = posterior.mean.numpy().transpose(0, 2, 3, 1)
    ref_logvar = posterior.logvar.numpy().transpose(0, 2, 3, 1)
    ref_dec = torch_vae.decode(posterior.mean).sample.numpy().transpose(0, 2, 3, 1)
  mean, logvar = model.apply({"params": params}, x, method=model.encode)
  dec = model.apply({"params": params}, mean, method=model.decode)
  assert mean.shape == (2, 8, 8, 4)
  np.testing.assert_allclose(mean, ref_mean, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(logvar, ref_logvar, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(dec, ref_dec, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(model.apply({"params": params}, x), dec, atol=1e-5)
  bf16 = vae.AutoencoderKL.from_diffusers_config(dict(torch_vae.config), dtype=jnp.bfloat16)
  mean_bf16, _ = bf16.apply({"params": params}, x, method=bf16.encode)
  assert mean_bf16.dtype == jnp.float32
  np.testing.assert_allclose(mean_bf16, ref_mean, atol=0.1 * np.abs(ref_mean).max())


def test_sd_vae_parameter_count():
  model = vae.AutoencoderKL.from_diffusers_config(vae.SD_VAE_CONFIG)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract))) == 83_653_863
  kernel = abstract["params"]["encoder"]["conv_in"]["kernel"]
  assert kernel.names == (None, None, vae.CONV_IN, vae.CONV_OUT)  # logical axis names


def test_conversion_errors_name_keys(torch_vae):
  model = vae.AutoencoderKL.from_diffusers_config(dict(torch_vae.config))
  state = _state_dict(torch_vae)
  state.pop("encoder.conv_in.bias")
  state["decoder.bogus.weight"] = np.zeros(3)
  state["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  with pytest.raises(ValueError) as err:
    vae_weights.vae_params_from_diffusers(state, model)
  for name in ("encoder.conv_in.bias", "decoder.bogus.weight", "quant_conv.weight"):
    assert name in str(err.value)


def test_cli_roundtrip_and_encode_fn(torch_vae, tmp_path):
  from safetensors.numpy import save_file
  save_file(_state_dict(torch_vae), str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(dict(torch_vae.config)))
  out = tmp_path / "flax_vae"
  vae_weights.main(["--safetensors", str(tmp_path / "model.safetensors"),
                    "--config", str(tmp_path / "config.json"), "--output", str(out)])
  model, params = vae_weights.load_vae(str(out))
  assert vae.latent_shape(str(out), 32) == (8, 8, 4)
  x = np.random.RandomState(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    posterior = torch_vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
  mean = posterior.mean.numpy().transpose(0, 2, 3, 1)
  std = posterior.std.numpy().transpose(0, 2, 3, 1)
  rng = jax.random.key(3)
  latents = vae.make_encode_fn(str(out))(x, rng)
  eps = jax.random.normal(rng, mean.shape)
  np.testing.assert_allclose(latents, (mean + std * np.asarray(eps)) * 0.18215, atol=1e-4)


def _fake_hub(cache: pathlib.Path, repo_id: str, files: dict[str, bytes]) -> None:
  """huggingface_hub's cache layout: refs/main names a commit whose snapshot holds the files."""
  repo = cache / f"models--{repo_id.replace('/', '--')}"
  commit = "0123456789abcdef0123456789abcdef01234567"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  snapshot = repo / "snapshots" / commit
  snapshot.mkdir(parents=True)
  for name, data in files.items():
    (snapshot / name).write_bytes(data)


def test_cli_hub_fetches_through_huggingface_hub(torch_vae, tmp_path):
  from safetensors.numpy import save
  state_dict = _state_dict(torch_vae)
  _fake_hub(tmp_path / "hub", "stabilityai/sd-vae-ft-ema", {
      "config.json": json.dumps(dict(torch_vae.config)).encode(),
      vae_weights.WEIGHTS_FILE: save(state_dict)})
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
             HF_HOME=str(tmp_path / "hf_home"))

  def run(repo_id, out):
    return subprocess.run([sys.executable, "-m", "dit_jax.models.vae_weights", "--hub", repo_id,
                           "--output", str(out)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=pathlib.Path(__file__).resolve().parents[1])

  proc = run("stabilityai/sd-vae-ft-ema", tmp_path / "ema")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"wrote {tmp_path / 'ema'}/params.msgpack" in proc.stdout
  model, params = vae_weights.load_vae(str(tmp_path / "ema"))
  want = vae_weights.vae_params_from_diffusers(state_dict, model)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, want)

  proc = run("stabilityai/sd-vae-ft-mse", tmp_path / "mse")  # not in the fake hub
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert ("Could not fetch config.json of stabilityai/sd-vae-ft-mse from the Hugging Face hub "
          "(LocalEntryNotFoundError") in proc.stderr
  assert "pass --config and --safetensors" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "mse").exists()


def test_cli_needs_one_source(tmp_path, capsys):
  for argv, message in [
      (["--output", str(tmp_path)], "give --hub REPO (e.g. --hub stabilityai/sd-vae-ft-ema) or both"),
      (["--hub", "a/b", "--config", "c.json", "--output", str(tmp_path)], "not both"),
      (["--safetensors", str(tmp_path / "none.safetensors"), "--config",
        str(tmp_path / "none.json"), "--output", str(tmp_path / "out")], "none.json"),
  ]:
    with pytest.raises(SystemExit) as exit_info:
      vae_weights.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cached_hub_vae_converts_once(tmp_path, monkeypatch):
  monkeypatch.setenv("DIT_JAX_CACHE", str(tmp_path))
  calls = []

  def fake_convert(repo_id, output_dir):
    calls.append((repo_id, output_dir))
    os.makedirs(output_dir)
    pathlib.Path(output_dir, vae_weights.PARAMS_FILE).write_bytes(b"")

  monkeypatch.setattr(vae_weights, "convert_from_hub", fake_convert)
  want = str(tmp_path / "vae" / "stabilityai--sd-vae-ft-mse")
  assert vae_weights.cached_hub_vae("stabilityai/sd-vae-ft-mse") == want
  assert vae_weights.cached_hub_vae("stabilityai/sd-vae-ft-mse") == want
  assert calls == [("stabilityai/sd-vae-ft-mse", want)]
