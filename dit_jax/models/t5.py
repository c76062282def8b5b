"""T5 encoder (T5 v1.1 / Flan-T5, and the original T5) in Flax Linen, with Hugging Face weights.

The text encoder of PixArt-alpha, SD3 and Imagen. The architecture is transformers'
``T5EncoderModel`` without dropout: a token embedding (no scaling), pre-norm blocks of
self-attention and a feed-forward net, and a final norm. T5 specifics:

- RMSNorm ("T5LayerNorm"): x / sqrt(mean(x^2) + eps) * scale, statistics in float32, no mean
  subtraction, no bias;
- attention logits q.k without the 1/sqrt(d_kv) scaling, plus a learned relative position bias
  (bidirectional log buckets) that the first layer owns and every layer adds;
- feed-forward ``feed_forward_proj``: "gated-gelu" (v1.1 / Flan: gelu_tanh(x W0) * (x W1) W_o)
  or "relu" (original T5: relu(x W_i) W_o); no biases anywhere.

Padding keys (``attention_mask`` False) get no attention, so unpadded positions never depend on
padding. Every parameter carries logical axis names (EMBED for d_model, HEADS / KV for attention,
MLP for d_ff, VOCAB for the vocabulary), so the 4.7B XXL encoder shards over ``fsdp`` / ``tensor``
with ``dit_jax.sharding``'s rules.

``load_t5_encoder(path_or_repo)`` reads a Hugging Face checkpoint (a local directory or a hub
repo id); ``tokenize`` turns prompts into (ids, mask) with the checkpoint's tokenizer.
"""
import json
import logging
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dit_jax import sharding
from dit_jax.models.layers import EMBED, HEADS, HEAD_TOKENS, KV, MLP, MLP_TOKENS, TOKENS, Dense

# Vocabulary rows of the token embedding (kept whole: lookups gather rows; d_model shards).
VOCAB = "vocab"
# feed_forward_proj -> (gated, activation); "gated-gelu" is transformers' "gelu_new" (tanh).
FEED_FORWARD = {
    "gated-gelu": (True, lambda x: nn.gelu(x, approximate=True)),
    "relu": (False, nn.relu),
}
# Checkpoint keys of a full encoder-decoder model that the encoder does not use.
IGNORED_PREFIXES = ("decoder.", "lm_head.")
EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")

Dtype = Any


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """Bucket (q_len, k_len) int32 of each relative position (key - query), bidirectional.

  transformers' ``T5Attention._relative_position_bucket``: half the buckets for keys after the
  query; within a half, exact buckets for distances below num_buckets / 4 and log-spaced ones up
  to ``max_distance`` (farther shares the last bucket). The log is taken in float32 as there, so
  distances on a bucket boundary round the same way.
  """
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  half = num_buckets // 2
  max_exact = half // 2
  distance = np.abs(rel)
  scaled = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  buckets = (rel > 0) * half + np.where(distance < max_exact, distance, large)
  return buckets.astype(np.int32)


class RMSNorm(nn.Module):
  """T5's layer norm: float32 root-mean-square statistics, a learned scale, no bias."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (EMBED,)),
                       (x.shape[-1],), self.param_dtype)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return x.astype(self.dtype) * scale.astype(self.dtype)


def _normal(std: float) -> nn.initializers.Initializer:
  return nn.initializers.normal(std)


class SelfAttention(nn.Module):
  """Multi-head self-attention without logit scaling, with an additive position bias and a key
  mask. Initialization follows Mesh TensorFlow (as transformers' ``_init_weights``)."""
  num_heads: int
  d_kv: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
    d, inner = x.shape[-1], self.num_heads * self.d_kv
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    heads = (self.num_heads, self.d_kv)
    q = Dense(heads, (EMBED,), (HEADS, KV), kernel_init=_normal((d * self.d_kv) ** -0.5),
              name="q", **kw)(x)
    k = Dense(heads, (EMBED,), (HEADS, KV), kernel_init=_normal(d ** -0.5), name="k", **kw)(x)
    v = Dense(heads, (EMBED,), (HEADS, KV), kernel_init=_normal(d ** -0.5), name="v", **kw)(x)
    q, k, v = (nn.with_logical_constraint(a, HEAD_TOKENS) for a in (q, k, v))
    # XLA's attention takes the bias; logits and softmax are float32 whatever the dtype.
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0,
                                       implementation="xla")
    out = nn.with_logical_constraint(out, HEAD_TOKENS)
    return Dense((d,), (HEADS, KV), (EMBED,), kernel_init=_normal(inner ** -0.5), name="o",
                 **kw)(out)


class FeedForward(nn.Module):
  """T5's feed-forward net: gated (wi_0, wi_1, wo) or plain (wi, wo), no biases."""
  d_ff: int
  feed_forward_proj: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gated, act = FEED_FORWARD[self.feed_forward_proj]
    d = x.shape[-1]
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    wi = lambda name: Dense((self.d_ff,), (EMBED,), (MLP,), kernel_init=_normal(d ** -0.5),
                            name=name, **kw)(x)
    h = act(wi("wi_0")) * wi("wi_1") if gated else act(wi("wi"))
    h = nn.with_logical_constraint(h, MLP_TOKENS)
    return Dense((d,), (MLP,), (EMBED,), kernel_init=_normal(self.d_ff ** -0.5), name="wo",
                 **kw)(h)


class T5Block(nn.Module):
  """Pre-norm residual block: x + attention(norm(x)), then x + ffn(norm(x))."""
  num_heads: int
  d_kv: int
  d_ff: int
  feed_forward_proj: str
  layer_norm_epsilon: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: RMSNorm(self.layer_norm_epsilon, name=name, **kw)
    x = x + SelfAttention(self.num_heads, self.d_kv, name="attention", **kw)(
        norm("attention_norm")(x), bias, mask)
    x = nn.with_logical_constraint(x, TOKENS)
    x = x + FeedForward(self.d_ff, self.feed_forward_proj, name="ffn", **kw)(norm("ffn_norm")(x))
    return nn.with_logical_constraint(x, TOKENS)


class T5Encoder(nn.Module):
  """T5 encoder: ``(input_ids (B, L) int, attention_mask (B, L) bool/int) -> (B, L, d_model)``.

  Keyword names and defaults follow transformers' ``T5Config`` (see ``config_from_hf``).
  Outputs at padding positions are unspecified; unpadded positions do not depend on padding.

  ``absolute_positions`` > 0 (not T5; 0 for pretrained weights) adds a learned table of that
  many position embeddings ("position_embedding") to the token embeddings. A small encoder
  trained from scratch through a diffusion loss does not learn T5's relative bias: nothing
  downstream asks for word order until the encoder provides it, so its outputs stay a bag of
  words (measured on the digit-pairs default: docs/text.md). Absolute positions give the order
  from the first step.
  """
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward_proj: str = "relu"
  layer_norm_epsilon: float = 1e-6
  absolute_positions: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    if self.feed_forward_proj not in FEED_FORWARD:
      raise ValueError(f"feed_forward_proj={self.feed_forward_proj!r} is not supported; use one "
                       f"of {sorted(FEED_FORWARD)}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    table = self.param("token_embedding", nn.with_logical_partitioning(_normal(1.0), (VOCAB, EMBED)),
                       (self.vocab_size, self.d_model), self.param_dtype)
    x = jnp.take(table, jnp.asarray(input_ids, jnp.int32), axis=0).astype(self.dtype)
    length = x.shape[1]
    if self.absolute_positions:
      if length > self.absolute_positions:
        raise ValueError(f"{length} tokens exceed the encoder's {self.absolute_positions} "
                         "absolute positions; pad or truncate captions to at most that many.")
      positions = self.param("position_embedding", nn.with_logical_partitioning(
          _normal(1.0), (None, EMBED)), (self.absolute_positions, self.d_model), self.param_dtype)
      x = x + positions[:length].astype(self.dtype)
    x = nn.with_logical_constraint(x, TOKENS)
    position_table = self.param(
        "relative_attention_bias",
        nn.with_logical_partitioning(_normal(self.d_model ** -0.5), (None, HEADS)),
        (self.relative_attention_num_buckets, self.num_heads), self.param_dtype)
    buckets = relative_position_buckets(length, length, self.relative_attention_num_buckets,
                                        self.relative_attention_max_distance)
    # (1, heads, L, L): one bias for all layers, as the first layer computes it in transformers.
    bias = jnp.transpose(position_table[buckets].astype(jnp.float32), (2, 0, 1))[None]
    mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
    for i in range(self.num_layers):
      x = T5Block(self.num_heads, self.d_kv, self.d_ff, self.feed_forward_proj,
                  self.layer_norm_epsilon, name=f"block_{i}", **kw)(x, bias, mask)
    return RMSNorm(self.layer_norm_epsilon, name="final_norm", **kw)(x)


def config_from_hf(hf_config: Mapping[str, Any]) -> dict:
  """``T5Encoder`` keyword arguments from a transformers ``T5Config`` dict (config.json).

  Raises ValueError naming missing fields or an unsupported ``feed_forward_proj``.
  """
  required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
  missing = [k for k in required if k not in hf_config]
  if missing:
    raise ValueError(f"T5 config lacks {missing}; is this a transformers T5 config.json?")
  kwargs = {k: int(hf_config[k]) for k in required}
  kwargs.update(
      relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
      feed_forward_proj=hf_config.get("feed_forward_proj", "relu"),
      layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)))
  if kwargs["feed_forward_proj"] not in FEED_FORWARD:
    raise ValueError(f"feed_forward_proj={kwargs['feed_forward_proj']!r} in the T5 config is not "
                     f"supported; use one of {sorted(FEED_FORWARD)}.")
  return kwargs


def _key_map(config: Mapping[str, Any]) -> dict:
  """transformers key -> (Flax path, transformers shape, Flax shape) for every encoder weight
  except the token embedding. Linear weights are (out, in); Flax kernels (in..., out...)."""
  d, heads, d_kv, d_ff = config["d_model"], config["num_heads"], config["d_kv"], config["d_ff"]
  inner = heads * d_kv
  gated, _ = FEED_FORWARD[config["feed_forward_proj"]]
  out = {
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
          ("relative_attention_bias",), (config["relative_attention_num_buckets"], heads), None),
      "encoder.final_layer_norm.weight": (("final_norm", "scale"), (d,), None),
  }
  for i in range(config["num_layers"]):
    hf, fx = f"encoder.block.{i}.layer.", f"block_{i}"
    out[hf + "0.layer_norm.weight"] = ((fx, "attention_norm", "scale"), (d,), None)
    for name in "qkv":
      out[hf + f"0.SelfAttention.{name}.weight"] = (
          (fx, "attention", name, "kernel"), (inner, d), (d, heads, d_kv))
    out[hf + "0.SelfAttention.o.weight"] = ((fx, "attention", "o", "kernel"), (d, inner),
                                            (heads, d_kv, d))
    out[hf + "1.layer_norm.weight"] = ((fx, "ffn_norm", "scale"), (d,), None)
    for name in (("wi_0", "wi_1") if gated else ("wi",)):
      out[hf + f"1.DenseReluDense.{name}.weight"] = ((fx, "ffn", name, "kernel"), (d_ff, d), (d, d_ff))
    out[hf + "1.DenseReluDense.wo.weight"] = ((fx, "ffn", "wo", "kernel"), (d, d_ff), (d_ff, d))
  return out


def _to_numpy(value) -> np.ndarray:
  """A torch tensor (any float dtype, bfloat16 included), jax array or numpy array as numpy."""
  if hasattr(value, "detach"):  # torch: numpy() has no bfloat16
    return value.detach().float().numpy()
  return np.asarray(value)


def params_from_hf(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
  """Flax params (the tree under "params", numpy) from a transformers T5 state dict.

  ``state_dict``: key -> torch tensor or array, as ``T5EncoderModel.state_dict()`` or a
  checkpoint file (keys ``shared.weight`` or ``encoder.embed_tokens.weight``,
  ``encoder.block.{i}.layer.{0,1}...``; a full encoder-decoder checkpoint's ``decoder.*`` and
  ``lm_head.*`` are ignored). ``config``: ``T5Encoder`` keyword arguments (``config_from_hf``);
  values are stored in its ``param_dtype`` (float32 by default).

  Raises ValueError naming every missing key, unexpected key and shape mismatch.
  """
  dtype = config.get("param_dtype", jnp.float32)
  key_map = _key_map(config)
  embedding_key = next((k for k in EMBEDDING_KEYS if k in state_dict), None)
  missing = sorted(set(key_map) - set(state_dict))
  missing += [] if embedding_key else [" or ".join(EMBEDDING_KEYS)]
  unexpected = sorted(k for k in state_dict if k not in key_map and k not in EMBEDDING_KEYS
                      and not k.startswith(IGNORED_PREFIXES))
  entries = dict(key_map)
  if embedding_key:
    entries[embedding_key] = (("token_embedding",), (config["vocab_size"], config["d_model"]), None)
  params, wrong_shape = {}, []
  for key, (path, hf_shape, flax_shape) in entries.items():
    if key not in state_dict:
      continue
    value = _to_numpy(state_dict[key])
    if value.shape != hf_shape:
      wrong_shape.append(f"{key}: shape {value.shape}, expected {hf_shape}")
      continue
    if flax_shape is not None:
      value = value.T.reshape(flax_shape)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.ascontiguousarray(value.astype(dtype))
  problems = [f"missing keys {missing}"] if missing else []
  problems += [f"unexpected keys {unexpected}"] if unexpected else []
  problems += [f"shape mismatches {wrong_shape}"] if wrong_shape else []
  if problems:
    raise ValueError(
        "The state dict does not match the T5 encoder config "
        f"({config['num_layers']} layers, d_model {config['d_model']}, feed_forward_proj "
        f"{config['feed_forward_proj']!r}): " + "; ".join(problems) +
        ". Check that config.json belongs to these weights.")
  return params


def _host_device():
  """The CPU device, where checkpoint tensors are read (None: the default device)."""
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return None


def _weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """The checkpoint files of a transformers model directory: safetensors (sharded or not)
  preferred over PyTorch pickles."""
  for index, single in (("model.safetensors.index.json", "model.safetensors"),
                        ("pytorch_model.bin.index.json", "pytorch_model.bin")):
    if (directory / index).is_file():
      weight_map = json.loads((directory / index).read_text())["weight_map"]
      return [directory / name for name in sorted(set(weight_map.values()))]
    if (directory / single).is_file():
      return [directory / single]
  raise FileNotFoundError(
      f"No T5 weights in {directory}: expected model.safetensors, model.safetensors.index.json, "
      f"pytorch_model.bin or pytorch_model.bin.index.json beside config.json; found "
      f"{sorted(p.name for p in directory.iterdir())}.")


def _read_state_dict(files: Sequence[pathlib.Path]) -> dict:
  """Encoder tensors of the checkpoint ``files`` as numpy (decoder tensors are not read)."""
  wanted = lambda key: not key.startswith(IGNORED_PREFIXES)
  state = {}
  for path in files:
    if path.suffix == ".safetensors":
      from safetensors import safe_open  # pylint: disable=import-outside-toplevel
      # The flax reader takes bfloat16 (the numpy one does not); tensors stay on the host.
      with jax.default_device(_host_device()), safe_open(path, framework="flax") as f:
        state.update({k: np.asarray(f.get_tensor(k)) for k in f.keys() if wanted(k)})
    else:
      try:
        import torch  # pylint: disable=import-outside-toplevel
      except ImportError as e:
        raise ImportError(f"Reading {path} needs torch (pip install torch), or convert the "
                          "checkpoint to safetensors.") from e
      loaded = torch.load(path, map_location="cpu", weights_only=True)
      state.update({k: _to_numpy(v) for k, v in loaded.items() if wanted(k)})
  return state


def _local_directory(path_or_repo: str | os.PathLike, subfolder: str) -> pathlib.Path:
  """``path_or_repo`` if it is a directory, else the hub snapshot of the repo's config and
  weights (safetensors when the repo has them, else PyTorch pickles)."""
  path = pathlib.Path(path_or_repo)
  if path.is_dir():
    return path / subfolder
  if path.is_absolute() or str(path_or_repo).startswith((".", "~")) or len(path.parts) > 2:
    raise FileNotFoundError(f"{path_or_repo} is not a directory (nor a hub repo id such as "
                            "'google/flan-t5-xxl').")
  from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
  prefix = f"{subfolder}/" if subfolder else ""
  for patterns in (("*.safetensors", "*.safetensors.index.json"), ("*.bin", "*.bin.index.json")):
    allow = [prefix + "config.json"] + [prefix + p for p in patterns]
    directory = pathlib.Path(snapshot_download(str(path_or_repo), allow_patterns=allow)) / subfolder
    if any(directory.glob(patterns[0])):
      return directory
  return directory


def load_t5_encoder(path_or_repo: str | os.PathLike, dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32, subfolder: str = "",
                    mesh: jax.sharding.Mesh | None = None,
                    rules=sharding.DEFAULT_LOGICAL_AXIS_RULES) -> tuple[T5Encoder, dict]:
  """(T5Encoder, params) from a transformers checkpoint: a local directory with config.json
  and model.safetensors / pytorch_model.bin (sharded ones with their index too), or a Hugging
  Face hub repo id (e.g. "google/flan-t5-xxl"; ``subfolder="text_encoder"`` for pipelines such
  as PixArt's). Encoder-decoder checkpoints work: their decoder is not read.

  ``params`` is the Flax tree under "params"; with a ``mesh`` its leaves are placed with the
  shardings the logical ``rules`` give them (d_model over fsdp, heads and d_ff over tensor),
  else they stay numpy arrays on the host.
  """
  directory = _local_directory(path_or_repo, subfolder)
  config_path = directory / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"No config.json in {directory}; pass a transformers T5 model "
                            "directory or hub repo (and its subfolder, if any).")
  kwargs = config_from_hf(json.loads(config_path.read_text()))
  module = T5Encoder(**kwargs, dtype=dtype, param_dtype=param_dtype)
  params = params_from_hf(_read_state_dict(_weight_files(directory)),
                          dict(kwargs, param_dtype=param_dtype))
  if mesh is not None:
    ids = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]
    params = jax.device_put(params, sharding.logical_to_shardings(abstract, mesh, rules))
  return module, params


def tokenize(tokenizer_path_or_repo, prompts: Sequence[str],
             max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids (N, max_length) int32, mask (N, max_length) bool) of ``prompts``, padded to
  ``max_length`` with the end-of-sequence token kept last.

  ``tokenizer_path_or_repo``: a directory or hub repo with a transformers tokenizer (or a
  loaded tokenizer). A prompt longer than ``max_length`` tokens is truncated, with a warning
  that names its number (0-based) and the limit.
  """
  if not prompts:
    raise ValueError("tokenize got no prompts; pass at least one (an empty string is the null "
                     "prompt).")
  tokenizer = tokenizer_path_or_repo
  if isinstance(tokenizer, (str, os.PathLike)):
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    tokenizer = AutoTokenizer.from_pretrained(tokenizer)
  for i, ids in enumerate(tokenizer(list(prompts))["input_ids"]):
    if len(ids) > max_length:
      logging.warning("Prompt %d (%r) has %d tokens, more than max_length=%d: truncated to "
                      "%d tokens.", i, prompts[i][:80], len(ids), max_length, max_length)
  encoded = tokenizer(list(prompts), padding="max_length", truncation=True,
                      max_length=max_length, return_tensors="np")
  return (encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(bool))
