"""Converts diffusers' AutoencoderKL weights (e.g. sd-vae-ft-ema/-mse) into Flax params.

  python -m dit_jax.models.vae_weights --hub stabilityai/sd-vae-ft-ema --output vae/sd-vae-ft-ema
  python -m dit_jax.models.vae_weights --safetensors diffusion_pytorch_model.safetensors \
      --config config.json --output vae/sd-vae-ft-ema

``--hub REPO`` fetches `config.json` and `diffusion_pytorch_model.safetensors` of a Hugging Face
hub repository through huggingface_hub (its cache, $HF_HUB_CACHE; it checks the files against
the hub's hashes; HF_HUB_OFFLINE=1 reads only the cache), ``--revision`` pins a commit; local
files are converted as they are. The output directory holds `config.json` (copied) and
`params.msgpack` (Flax params, float32); `load_vae(dir)` and
`dit_jax.models.vae.make_encode_fn(dir)` read it.

Key mapping: diffusers "encoder.down_blocks.0.resnets.1.conv1.weight" is the Flax path
encoder/down_blocks_0_resnets_1/conv1/kernel; conv weights (O, I, kh, kw) become (kh, kw, I, O),
linear weights (O, I) become (I, O), GroupNorm weight is `scale`. Old diffusers checkpoints name
the attention projections query/key/value/proj_attn; they are renamed to to_q/to_k/to_v/to_out.0.
"""
import argparse
import json
import math
import os
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dit_jax import downloads
from dit_jax.models import vae

PARAMS_FILE = "params.msgpack"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # the name diffusers saves under
DIT_VAES = ("stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse")  # the VAEs DiT samples with
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _torch_key(path: tuple[str, ...]) -> str:
  """Flax path ("encoder", "down_blocks_0_resnets_1", "conv1", "kernel") -> diffusers key."""
  modules = [re.sub(r"_(\d+)(_|$)", lambda m: "." + m.group(1) + ("." if m.group(2) else ""), p)
             for p in path[:-1]]
  return ".".join(modules + [_LEAF_NAMES[path[-1]]])


def _rename_old_attention(key: str) -> str:
  parts = key.split(".")
  if len(parts) >= 2 and parts[-2] in _OLD_ATTENTION_NAMES and "attentions" in parts:
    return ".".join(parts[:-2] + [_OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
  return key


def _to_flax_layout(value: np.ndarray, leaf: str, shape: tuple[int, ...]) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4 and len(shape) == 2:  # 1x1 conv stored for a linear
    value = value[:, :, 0, 0]
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if leaf == "kernel" and value.ndim == 2:
    return value.T
  return value


def vae_params_from_diffusers(state_dict: Mapping[str, Any], model: vae.AutoencoderKL) -> dict:
  """Returns `{"params": ...}`-less Flax params for `model` from a diffusers state dict.

  Args:
    state_dict: diffusers AutoencoderKL key -> array (numpy or torch tensors on CPU).
    model: the AutoencoderKL whose config the weights were trained with.

  Raises:
    ValueError: naming every missing, unexpected and mis-shaped key.
  """
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), jnp.zeros((1, 2 * model.downsample_factor, 2 * model.downsample_factor,
                                    model.in_channels)))))["params"]
  expected = {_torch_key(path): (path, leaf.shape) for path, leaf in
              flax.traverse_util.flatten_dict(abstract).items()}
  given = {_rename_old_attention(k): np.asarray(v) for k, v in state_dict.items()}
  missing = sorted(set(expected) - set(given))
  extra = sorted(set(given) - set(expected))
  flat, misshaped = {}, []
  for key in sorted(set(expected) & set(given)):
    path, shape = expected[key]
    value = _to_flax_layout(given[key], path[-1], shape)
    if value.shape != shape:
      misshaped.append(f"{key}: checkpoint {given[key].shape} -> {value.shape}, model expects {shape}")
    flat[path] = value.astype(model.param_dtype)
  if missing or extra or misshaped:
    raise ValueError(
        "VAE state dict does not match the config (is config.json the one shipped with these "
        f"weights?). missing: {missing}; unexpected: {extra}; mis-shaped: {misshaped}")
  return flax.traverse_util.unflatten_dict(flat)


def num_params(params) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def save_vae(output_dir: str, config: dict, params) -> None:
  """Writes `config.json` and `params.msgpack` (float32 numpy) into `output_dir`."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, vae.CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2)
  host = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  with open(os.path.join(output_dir, PARAMS_FILE), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(host))


def load_vae(vae_dir: str, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
  """Reads a directory written by `save_vae` -> (AutoencoderKL, params)."""
  params_path = os.path.join(vae_dir, PARAMS_FILE)
  config_path = os.path.join(vae_dir, vae.CONFIG_FILE)
  for path in (config_path, params_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist; convert the VAE with `python -m "
                              f"dit_jax.models.vae_weights --hub {DIT_VAES[0]} --output DIR`.")
  with open(config_path) as f:
    model = vae.AutoencoderKL.from_diffusers_config(json.load(f), dtype=dtype, param_dtype=param_dtype)
  with open(params_path, "rb") as f:
    params = flax.serialization.msgpack_restore(f.read())
  return model, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)


def convert(safetensors_path: str, config_path: str, output_dir: str) -> int:
  """Converts a local safetensors file; returns the parameter count."""
  from safetensors.numpy import load_file  # local: only the CLI reads safetensors
  with open(config_path) as f:
    config = json.load(f)
  model = vae.AutoencoderKL.from_diffusers_config(config)
  params = vae_params_from_diffusers(load_file(safetensors_path), model)
  save_vae(output_dir, config, params)
  return num_params(params)


def hub_files(repo_id: str, revision: str | None = None) -> tuple[str, str]:
  """(config.json, safetensors) paths of a hub repository's VAE, fetched through
  huggingface_hub's cache. Raises OSError naming the repository and the manual route."""
  from huggingface_hub import errors, hf_hub_download  # local: only hub conversions need it
  paths = []
  for name in (vae.CONFIG_FILE, WEIGHTS_FILE):
    try:
      paths.append(hf_hub_download(repo_id, name, revision=revision))
    except (OSError, errors.EntryNotFoundError) as err:
      raise OSError(f"Could not fetch {name} of {repo_id} from the Hugging Face hub "
                    f"({type(err).__name__}: {err}). Check the name (DiT samples with "
                    f"{' or '.join(DIT_VAES)}) and the network, or download {vae.CONFIG_FILE} "
                    f"and {WEIGHTS_FILE} by hand and pass --config and --safetensors.") from err
  return paths[0], paths[1]


def convert_from_hub(repo_id: str, output_dir: str, revision: str | None = None) -> int:
  """Fetches (``hub_files``) and converts a hub VAE into ``output_dir``; the parameter count."""
  config_path, weights_path = hub_files(repo_id, revision)
  return convert(weights_path, config_path, output_dir)


def cached_hub_vae(repo_id: str) -> str:
  """A directory with hub VAE ``repo_id`` converted, under cache_dir()/vae/<org>--<name>:
  fetched and converted on the first call, returned as it is by later ones (delete it to
  convert a newer revision)."""
  output_dir = os.path.join(downloads.cache_dir(), "vae", repo_id.replace("/", "--"))
  if not os.path.exists(os.path.join(output_dir, PARAMS_FILE)):
    convert_from_hub(repo_id, output_dir)
  return output_dir


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--hub", help=f"Hugging Face hub repository, e.g. {DIT_VAES[0]}")
  parser.add_argument("--revision", help="with --hub: a branch, tag or commit (default: main)")
  parser.add_argument("--safetensors", help=f"a local {WEIGHTS_FILE} (instead of --hub)")
  parser.add_argument("--config", help="the diffusers config.json shipped with it")
  parser.add_argument("--output", required=True, help="output directory")
  args = parser.parse_args(argv)
  local = (args.safetensors, args.config)
  if args.hub and any(local):
    parser.error("give --hub REPO or --safetensors FILE --config FILE, not both.")
  if not args.hub and not all(local):
    parser.error("give --hub REPO (e.g. --hub stabilityai/sd-vae-ft-ema) or both --safetensors "
                 "and --config.")
  try:
    count = (convert_from_hub(args.hub, args.output, args.revision) if args.hub
             else convert(args.safetensors, args.config, args.output))
  except OSError as err:
    parser.error(str(err))
  print(f"wrote {args.output}/{PARAMS_FILE} ({count:,} parameters)")


if __name__ == "__main__":
  main()
