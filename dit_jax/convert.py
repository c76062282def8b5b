"""Official DiT weights (facebookresearch/DiT state dicts) -> Flax params of ``DiT``.

  python -m dit_jax.convert --official XL/2-256 --output DIR          # or XL/2-512
  python -m dit_jax.convert --official DiT-XL-2-256x256.pt --output DIR [--image_size 256]

reads a released checkpoint (torch is imported only by this command line), converts it and
writes DIR/checkpoints/0 with the layout of dit_jax.checkpoint (state = {step, params,
ema_params}, both the converted EMA weights, and the config of configs/imagenet.py for that
variant and resolution), which ``python -m dit_jax.sample --workdir DIR`` restores.

``--official XL/2-256`` (or ``XL/2-512``) downloads the released file from DiT's download URL
(``OFFICIAL_BASE_URL``; $DIT_JAX_OFFICIAL_URL names a mirror) into ``dit_jax.downloads.cache_dir()``
once, checked by sha256 (``dit_jax.downloads``), and converts it; a local path converts that file.

Layout changes (official -> Flax): Linear weights (out, in) -> kernels (in, out); the fused qkv
(3D, D) -> (D, 3, heads, head_dim) (the official output order is (3, heads, head_dim)); the
attention output (D, D) -> (heads, head_dim, D); the patch conv (D, C, p, p) -> (p, p, C, D);
``pos_embed`` is checked against the fixed sin-cos table and dropped (it is a constant here).
Scanned models (``scan_blocks=True``) get the blocks stacked along a leading depth axis.
"""
import argparse
import math
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
from flax import linen as nn

from dit_jax import config_files, downloads
from dit_jax.models import layers
from dit_jax.models.dit import DiT, build_model, init_inputs
from dit_jax.models.vae_weights import vae_params_from_diffusers  # noqa: F401  (public API)

POS_EMBED = "pos_embed"
POS_EMBED_ATOL = 1e-5
IMAGENET_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "imagenet.py"
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/DiT/models"  # DiT's download.py
OFFICIAL_URL_ENV = "DIT_JAX_OFFICIAL_URL"
# Released checkpoints: name ("variant-resolution") -> (file name, sha256 or None). Meta
# publishes no hashes. The 256 px value is the one two independent projects pin after
# downloading the file (2,700,611,775 bytes); no source states one for 512 px, so its first
# download's sha256 is recorded and later uses are checked against it (dit_jax.downloads).
OFFICIAL_CHECKPOINTS = {
    "XL/2-256": ("DiT-XL-2-256x256.pt",
                 "9ec1876e4c03471bca126663a30e2d1b20610b6d2f87850a39a36f25cc685521"),
    "XL/2-512": ("DiT-XL-2-512x512.pt", None),
}
OFFICIAL_FILES = ("pass a released DiT .pt (e.g. DiT-XL-2-256x256.pt) or a checkpoint of DiT's "
                  "train.py ({model, ema, opt, args}).")
# Official block submodule -> (Flax path inside a block, number of kernel input axes).
BLOCK_LINEARS = {
    "attn.qkv": (("attn", "qkv"), 1),
    "attn.proj": (("attn", "proj"), 2),
    "mlp.fc1": (("mlp", "fc1"), 1),
    "mlp.fc2": (("mlp", "fc2"), 1),
    "adaLN_modulation.1": (("adaLN_modulation",), 1),
}
TOP_LINEARS = {
    "t_embedder.mlp.0": ("t_embedder", "mlp_0"),
    "t_embedder.mlp.2": ("t_embedder", "mlp_2"),
    "final_layer.linear": ("final_layer", "linear"),
    "final_layer.adaLN_modulation.1": ("final_layer", "adaLN_modulation"),
}


def _official_shape(kind: str, shape: tuple, n_in: int) -> tuple:
  if kind == "linear":
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
  if kind == "bias":
    return (math.prod(shape),)
  if kind == "conv":
    p, _, c, d = shape
    return (d, c, p, p)
  return tuple(shape)


def _to_flax(kind: str, value: np.ndarray, shape: tuple) -> np.ndarray:
  if kind == "linear":
    return value.T.reshape(shape)
  if kind == "conv":
    return value.transpose(2, 3, 1, 0)
  return value.reshape(shape)


def _key_map(depth: int) -> dict[str, tuple[tuple[str, ...], str, int, int | None]]:
  """Official key -> (Flax path, kind, kernel input axes, block index or None)."""
  out = {
      "x_embedder.proj.weight": (("x_embedder", "kernel"), "conv", 0, None),
      "x_embedder.proj.bias": (("x_embedder", "bias"), "bias", 0, None),
      "y_embedder.embedding_table.weight": (("y_embedder", "embedding_table"), "table", 0, None),
  }
  for key, path in TOP_LINEARS.items():
    out[f"{key}.weight"] = (path + ("kernel",), "linear", 1, None)
    out[f"{key}.bias"] = (path + ("bias",), "bias", 0, None)
  for i in range(depth):
    for key, (path, n_in) in BLOCK_LINEARS.items():
      out[f"blocks.{i}.{key}.weight"] = (path + ("kernel",), "linear", n_in, i)
      out[f"blocks.{i}.{key}.bias"] = (path + ("bias",), "bias", 0, i)
  return out


def _get(tree: Mapping, path: tuple[str, ...]):
  for name in path:
    tree = tree[name]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def params_from_official(state_dict: Mapping[str, Any], model: DiT) -> dict:
  """Flax params (the tree under "params", numpy, ``model.param_dtype``) from an official DiT
  state dict (key -> array, e.g. the EMA weights of DiT-XL-2-256x256.pt).

  Raises ValueError naming every missing key, unexpected key and shape mismatch.
  """
  if model.block_type != "adaln_zero":
    raise ValueError(f"Official checkpoints are adaLN-Zero models; got block_type={model.block_type!r}.")
  abstract = nn.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), *init_inputs(model)))["params"])
  key_map = _key_map(model.depth)
  expected = set(key_map) | {POS_EMBED}
  missing = sorted(expected - set(state_dict))
  extra = sorted(set(state_dict) - expected)
  problems = [f"missing keys {missing}"] if missing else []
  problems += [f"unexpected keys {extra}"] if extra else []

  def flax_shape(path, block):
    if block is None:
      return _get(abstract, path).shape
    if model.scan_blocks:
      return _get(abstract["blocks"], path).shape[1:]
    return _get(abstract[f"blocks_{block}"], path).shape

  converted = {}
  for key, (path, kind, n_in, block) in key_map.items():
    if key not in state_dict:
      continue
    value = np.asarray(state_dict[key], dtype=np.float32)
    shape = tuple(flax_shape(path, block))
    want = _official_shape(kind, shape, n_in)
    if value.shape != want:
      problems.append(f"{key} has shape {value.shape}, expected {want}")
      continue
    converted[key] = (path, block, _to_flax(kind, value, shape).astype(model.param_dtype))
  if POS_EMBED in state_dict:
    problems += _check_pos_embed(np.asarray(state_dict[POS_EMBED], np.float64), model)
  if problems:
    raise ValueError("Cannot convert the official DiT state dict for this model: "
                     + "; ".join(problems) + ". Check the variant, image size, num_classes, "
                     "class_dropout_prob and learn_sigma of the model against the checkpoint.")

  params: dict = {}
  blocks: dict = {}
  for path, block, value in converted.values():
    if block is None:
      _set(params, path, value)
    elif model.scan_blocks:
      blocks.setdefault(path, [None] * model.depth)[block] = value
    else:
      _set(params, (f"blocks_{block}",) + path, value)
  for path, values in blocks.items():
    _set(params, ("blocks",) + path, np.stack(values))
  return params


def _check_pos_embed(pos: np.ndarray, model: DiT) -> list[str]:
  grid = model.input_size // model.patch_size
  table = layers.sincos_pos_embed_2d(model.hidden_size, grid)[None]
  if pos.shape != table.shape:
    return [f"{POS_EMBED} has shape {pos.shape}, expected {table.shape}"]
  if not np.allclose(pos, table, atol=POS_EMBED_ATOL):
    return [f"{POS_EMBED} differs from the fixed 2-D sin-cos table (max abs difference "
            f"{np.abs(pos - table).max():.3g}); this model has no learned position table"]
  return []


def _load_official(path: str) -> dict:
  """The EMA state dict of a released model or a DiT training checkpoint, as float32 numpy.

  Raises ValueError, naming the file, for anything else (torch's own message for a file that
  is no checkpoint asks to file an issue with PyTorch).
  """
  import torch  # only the command line needs torch

  try:  # training checkpoints hold their argparse arguments: a plain attribute container
    with torch.serialization.safe_globals([argparse.Namespace]):
      state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many kinds for bad files
    raise ValueError(f"--official {path} is not a PyTorch checkpoint of tensors ({type(e).__name__} "
                     f"from torch.load); {OFFICIAL_FILES}") from e
  if isinstance(state, dict) and isinstance(state.get("ema"), dict):
    state = state["ema"]  # a training checkpoint {model, ema, opt, args}: sample with the EMA
  if not isinstance(state, dict):
    raise ValueError(f"--official {path} holds a {type(state).__name__}, not a state dict "
                     f"(parameter name -> tensor); {OFFICIAL_FILES}")
  not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise ValueError(f"--official {path}: the entries {not_tensors[:5]} are not tensors, so this "
                     f"is no DiT state dict; {OFFICIAL_FILES}")
  return {k: v.float().numpy() for k, v in state.items()}


def _check_output(output: str) -> None:
  """Refuses an --output that holds checkpoints: a second conversion would stop at Orbax's
  "step 0 already exists", and a training workdir would get an ImageNet-shaped checkpoint 0
  among its own."""
  from dit_jax import checkpoint  # the checkpoint layout belongs to training

  if os.path.isfile(output):
    raise ValueError(f"--output {output} is a file; give a new directory.")
  ckpt_dir = checkpoint.checkpoint_dir(output)
  steps = sorted(p.name for p in ckpt_dir.iterdir()) if ckpt_dir.is_dir() else []
  if steps == ["0"]:
    raise ValueError(f"--output {output} already holds a checkpoint 0 (an earlier conversion?); "
                     f"give a new directory, or delete {ckpt_dir} to convert again.")
  if steps:
    raise ValueError(f"--output {output} is a training workdir (checkpoints {steps[:5]}"
                     f"{' ...' if len(steps) > 5 else ''}); converting into it would add a "
                     "checkpoint 0 of another model among them. Give a new directory.")


def official_checkpoint(name: str) -> pathlib.Path:
  """The cached, hash-checked released checkpoint ``name`` (a key of OFFICIAL_CHECKPOINTS),
  downloaded from OFFICIAL_BASE_URL ($DIT_JAX_OFFICIAL_URL if set) on first use."""
  file_name, sha256 = OFFICIAL_CHECKPOINTS[name]
  base = os.environ.get(OFFICIAL_URL_ENV) or OFFICIAL_BASE_URL
  return downloads.download(f"{base.rstrip('/')}/{file_name}", sha256=sha256,
                            manual_hint=f"Download {file_name} by other means and pass its path "
                                        "as --official.")


def _resolve(official: str, variant: str | None, image_size: int | None) -> tuple[str, str, int]:
  """(local file, variant, image size) for --official: a released name or a local path."""
  if official in OFFICIAL_CHECKPOINTS:
    named_variant, named_size = official.rsplit("-", 1)
    for flag, given, named in (("--variant", variant, named_variant),
                               ("--image_size", image_size, int(named_size))):
      if given is not None and given != named:
        raise ValueError(f"--official {official} is DiT-{named_variant} at {named_size} px; "
                         f"{flag} {given} contradicts it (leave {flag} out).")
    return str(official_checkpoint(official)), named_variant, int(named_size)
  if not os.path.isfile(official):
    raise ValueError(f"--official {official} is neither a file nor a released checkpoint "
                     f"({', '.join(OFFICIAL_CHECKPOINTS)}).")
  return official, variant or "XL/2", image_size or 256


def convert_official(official: str, output: str, variant: str | None = None,
                     image_size: int | None = None, config_path: str | os.PathLike = IMAGENET_CONFIG
                     ) -> tuple[str, int, int]:
  """Converts ``official`` (a name of OFFICIAL_CHECKPOINTS, downloaded if needed, or a local
  .pt) into ``output``/checkpoints/0; returns (variant, image size, parameter count).

  ``variant`` and ``image_size`` default to the name's (XL/2 and 256 for a file). Every
  problem of the input or output raises ValueError (OSError for a failed download) before
  anything is written.
  """
  _check_output(output)  # before a download of gigabytes
  path, variant, image_size = _resolve(official, variant, image_size)
  config = config_files.load(config_path, f"variant={variant},res={image_size}")
  params = params_from_official(_load_official(path), build_model(config.model))
  from dit_jax import checkpoint  # the checkpoint layout belongs to training

  checkpoint.save_params_only(output, config, params)
  return variant, image_size, sum(v.size for v in jax.tree.leaves(params))


def cached_official(name: str, config_path: str | os.PathLike = IMAGENET_CONFIG) -> str:
  """A workdir with the released checkpoint ``name`` converted, under
  cache_dir()/converted/<file name without .pt>: downloaded, checked and converted on the first
  call, returned as it is by later ones (what the Colab notebook samples from)."""
  from dit_jax import checkpoint  # the checkpoint layout belongs to training

  stem = pathlib.Path(OFFICIAL_CHECKPOINTS[name][0]).stem
  workdir = os.path.join(downloads.cache_dir(), "converted", stem)
  if not (checkpoint.checkpoint_dir(workdir) / "0").is_dir():
    convert_official(name, workdir, config_path=config_path)
  return workdir


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--official", required=True,
                      help=f"a released checkpoint ({', '.join(OFFICIAL_CHECKPOINTS)}: downloaded "
                           "and cached) or a local official .pt (state dict or training "
                           "checkpoint)")
  parser.add_argument("--output", required=True, help="workdir to write checkpoints/0 into")
  parser.add_argument("--image_size", type=int, default=None,
                      help="256 or 512 (default: the released name's, else 256)")
  parser.add_argument("--variant", default=None,
                      help="DiT variant of the checkpoint (default: the released name's, "
                           "else XL/2)")
  parser.add_argument("--config", default=str(IMAGENET_CONFIG),
                      help="config file with get_config('variant=V,res=R') (configs/imagenet.py)")
  args = parser.parse_args(argv)

  try:
    variant, size, count = convert_official(args.official, args.output, args.variant,
                                            args.image_size, args.config)
  except (ValueError, OSError) as e:
    parser.error(str(e))
  print(f"Wrote {count:,} parameters of DiT-{variant} ({size} px) to {args.output}")


if __name__ == "__main__":
  main()
