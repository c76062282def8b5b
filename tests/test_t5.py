"""The Flax T5 encoder (dit_jax.models.t5) against transformers' PyTorch T5EncoderModel.

Tiny random T5 configs (no download), float32: v1.1 / Flan's gated-GELU and the original ReLU
feed-forward, with few relative-position buckets and a short max distance so that sequences of
24 tokens reach the log-spaced and the clipped buckets. Norm scales and every weight are random
so a missed scale, a transposed kernel or a wrong bucket shows. Checked: outputs within 1e-5
(relative to the largest output) on unpadded positions with and without padding; padding ids
have no effect; the bucket table equals transformers' over +-300 positions; the checkpoint
loader (safetensors, sharded safetensors, bfloat16) and the converter's errors; the optional
absolute positions against transformers fed the summed embeddings; sharded over 8 fake CPU
devices (fsdp=4, tensor=2) equals one device; tokenize's truncation warning.
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from jax.sharding import PartitionSpec as P
from transformers import T5Config, T5EncoderModel, T5Tokenizer
from transformers.models.t5.modeling_t5 import T5Attention

from dit_jax import sharding
from dit_jax.models import t5

BATCH, LENGTH = 4, 24
LENGTHS = (24, 17, 5, 1)  # unpadded tokens per row
RTOL = 1e-5


def _torch_model(feed_forward_proj: str) -> T5EncoderModel:
  config = T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=20,
                    feed_forward_proj=feed_forward_proj, dropout_rate=0.0)
  torch.manual_seed(0)
  model = T5EncoderModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1 + 0.5 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (0.5 if "relative" in name else 0.15))
  return model


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 100, size=(BATCH, LENGTH)).astype(np.int32)
  mask = np.arange(LENGTH)[None, :] < np.asarray(LENGTHS)[:, None]
  return ids, mask


def _torch_out(model, ids, mask) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(),
                attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  return out.numpy()


def _assert_close(got, want, mask):
  """Largest difference on unpadded positions <= RTOL x the largest reference output there."""
  got, want = np.asarray(got)[mask], np.asarray(want)[mask]
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert err <= RTOL, f"relative error {err:.2e} > {RTOL:.0e}"


@pytest.fixture(scope="module", params=["gated-gelu", "relu"])
def pair(request):
  """(torch model, Flax module, Flax params) for one feed-forward kind."""
  model = _torch_model(request.param)
  config = t5.config_from_hf(model.config.to_dict())
  params = t5.params_from_hf(model.state_dict(), config)
  return model, t5.T5Encoder(**config), params


def test_matches_transformers_with_and_without_padding(pair):
  model, module, params = pair
  apply = jax.jit(module.apply)
  ids, mask = _inputs()
  _assert_close(apply({"params": params}, ids, mask), _torch_out(model, ids, mask), mask)
  full = np.ones_like(mask)
  _assert_close(apply({"params": params}, ids, full), _torch_out(model, ids, full), full)


def test_padding_tokens_have_no_effect(pair):
  _, module, params = pair
  apply = jax.jit(module.apply)
  ids, mask = _inputs()
  other = np.where(mask, ids, (ids + 37) % 100)
  assert (other != ids).any()
  a = np.asarray(apply({"params": params}, ids, mask))[mask]
  b = np.asarray(apply({"params": params}, other, mask))[mask]
  np.testing.assert_array_equal(a, b)


def test_param_tree_matches_init(pair):
  _, module, params = pair
  ids, mask = _inputs()
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), ids, mask))["params"]
  assert jax.tree.structure(abstract) == jax.tree.structure(params)
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, params)


def test_absolute_positions_add_to_the_token_embeddings(pair):
  """``absolute_positions`` (not T5: for encoders trained from scratch) adds its table to the
  token embeddings: transformers' encoder fed those sums as ``inputs_embeds`` is the reference."""
  model, module, params = pair
  table = np.random.default_rng(3).normal(size=(LENGTH + 2, module.d_model)).astype(np.float32)
  ids, mask = _inputs()
  with_positions = module.clone(absolute_positions=LENGTH + 2)
  got = jax.jit(with_positions.apply)({"params": {**params, "position_embedding": table}}, ids, mask)
  embeds = model.shared.weight.detach().numpy()[ids] + table[:LENGTH]
  with torch.no_grad():
    want = model(inputs_embeds=torch.from_numpy(embeds),
                 attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
  _assert_close(got, want, mask)
  with pytest.raises(ValueError, match=f"{LENGTH} tokens exceed the encoder's 5 absolute positions"):
    module.clone(absolute_positions=5).init(jax.random.key(0), ids, mask)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (64, 256)])
def test_buckets_match_transformers(num_buckets, max_distance):
  length = 301
  rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  want = T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      rel, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance)
  got = t5.relative_position_buckets(length, length, num_buckets, max_distance)
  np.testing.assert_array_equal(got, want.numpy())


def test_loader_reads_saved_checkpoints(tmp_path):
  model = _torch_model("gated-gelu")
  ids, mask = _inputs(1)
  want = _torch_out(model, ids, mask)
  model.save_pretrained(tmp_path / "single")
  model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  for name in ("single", "sharded"):
    module, params = t5.load_t5_encoder(tmp_path / name)
    _assert_close(module.apply({"params": params}, ids, mask), want, mask)
  # bfloat16 checkpoints (common for the XXL encoder) load, as the bfloat16-rounded weights.
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  module, params = t5.load_t5_encoder(tmp_path / "bf16")
  _assert_close(module.apply({"params": params}, ids, mask),
                _torch_out(model.float(), ids, mask), mask)


def test_converter_names_missing_keys_and_wrong_shapes():
  model = _torch_model("gated-gelu")
  config = t5.config_from_hf(model.config.to_dict())
  state = dict(model.state_dict())
  del state["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
  state["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(64, 32)
  state["encoder.extra.weight"] = torch.zeros(3)
  state["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(3)  # ignored
  with pytest.raises(ValueError) as e:
    t5.params_from_hf(state, config)
  message = str(e.value)
  assert "missing keys ['encoder.block.1.layer.1.DenseReluDense.wi_1.weight']" in message
  assert "encoder.block.0.layer.0.SelfAttention.q.weight: shape (64, 32), expected (64, 64)" in message
  assert "unexpected keys ['encoder.extra.weight']" in message
  assert "decoder" not in message


def test_sharded_matches_single_device(devices, tmp_path):
  model = _torch_model("gated-gelu")
  model.save_pretrained(tmp_path)
  mesh = sharding.create_mesh(dict(data=1, fsdp=4, tensor=2))
  module, params = t5.load_t5_encoder(tmp_path, mesh=mesh)
  assert params["block_0"]["attention"]["q"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert params["block_0"]["attention"]["o"]["kernel"].sharding.spec == P("tensor", None, "fsdp")
  assert params["block_1"]["ffn"]["wo"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert params["token_embedding"].sharding.spec == P(None, "fsdp")
  ids, mask = _inputs(2)
  with sharding.mesh_context(mesh):
    batch = sharding.batch_sharding(mesh)
    got = jax.jit(module.apply)({"params": params}, jax.device_put(ids, batch),
                                jax.device_put(mask, batch))
  assert got.sharding.shard_shape(got.shape)[0] == BATCH // 4  # the batch split over fsdp
  single = jax.tree.map(np.asarray, params)
  _assert_close(got, module.apply({"params": single}, ids, mask), mask)


def test_tokenize_pads_and_warns_on_truncation(tmp_path, caplog):
  words = ["a", "3", "7", "to", "the", "left", "right", "of"]
  vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in words]
  T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(tmp_path)
  prompts = ["a 3 to the left of a 7", "a 7"]
  with caplog.at_level(logging.WARNING):
    ids, mask = t5.tokenize(str(tmp_path), prompts, max_length=6)
  # Piece ids: <pad>=0, </s>=1, <unk>=2, then the words in order from 3.
  np.testing.assert_array_equal(ids, [[3, 4, 6, 7, 8, 1], [3, 5, 1, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert "Prompt 0" in caplog.text and "max_length=6" in caplog.text
  assert "Prompt 1" not in caplog.text
  with pytest.raises(ValueError, match="no prompts"):
    t5.tokenize(str(tmp_path), [], max_length=6)
