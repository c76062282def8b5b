"""The prompt-embedding cache (precompute_text + text_cache) against transformers.

A tiny random T5 encoder (transformers' T5EncoderModel, saved with save_pretrained) and a tiny
sentencepiece tokenizer, both written to a temporary directory (no download). The reference for
every cached caption is transformers' PyTorch encoder run on that caption alone (tokenized by
the tokenizer alone, no padding), so batching, padding, sharding over 8 fake CPU devices, the
shard split and the record format are all checked against an independent implementation.
"""
import logging
import os
import pickle
import shutil

import grain
import numpy as np
import pytest
import torch
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from dit_jax.data import precompute_text, sources, text_cache

WORDS = ["a", "3", "7", "to", "the", "left", "right", "of", "and", "followed", "by", "digit"]
MAX_LENGTH = 8
# Token counts (end-of-sequence included): 3, 9 (truncated to 8, line 2), 2, 6, 4, 7, 2.
CAPTIONS = ["a 3", "a 3 to the left of a 7", "7", "the 7 of a 3", "3 and 7",
            "a 3 followed by a 7", "digit"]
LENGTHS = [3, 8, 2, 6, 4, 7, 2]
RTOL = 1e-5


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
  """(directory with config, weights and tokenizer, the torch model, the tokenizer)."""
  path = tmp_path_factory.mktemp("t5")
  config = T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=20,
                    feed_forward_proj="gated-gelu", dropout_rate=0.0)
  torch.manual_seed(0)
  model = T5EncoderModel(config).eval()
  with torch.no_grad():  # random norm scales and larger weights, so a slip shows
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1 + 0.5 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (0.5 if "relative" in name else 0.15))
  model.save_pretrained(path)
  vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in WORDS]
  tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
  tokenizer.save_pretrained(path)
  return path, model, tokenizer


def _reference(model, tokenizer, caption: str, max_length: int) -> np.ndarray:
  """transformers' encoder on `caption` alone: (n, d_model)."""
  ids = tokenizer(caption, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
  with torch.no_grad():
    return model(input_ids=ids).last_hidden_state[0].numpy()


def _write_captions(path, captions) -> str:
  path.write_text("".join(c + "\n" for c in captions), encoding="utf-8")
  return str(path)


def _args(captions, encoder, output, *extra):
  return precompute_text.parse_args(
      ["--captions", str(captions), "--encoder", str(encoder), "--output", str(output),
       "--max_length", str(MAX_LENGTH), "--batch_size", "8", "--num_shards", "2", *extra])


def _raw_records(cache_dir) -> list[bytes]:
  paths = sorted(str(p) for p in cache_dir.glob("*.array_record"))
  source = grain.sources.ArrayRecordDataSource(paths)
  return [source[i] for i in range(len(source))]


def _entries(cache_dir):
  cache = text_cache.TextEmbeddingCache(str(cache_dir))
  return [cache[i] for i in range(len(cache))]


@pytest.fixture(scope="module")
def built(t5_dir, tmp_path_factory):
  """(cache directory, captions file, summary, log text) of the 7 captions in 2 shards."""
  path, _, _ = t5_dir
  tmp = tmp_path_factory.mktemp("cache")
  captions = _write_captions(tmp / "captions.txt", CAPTIONS)
  handler = logging.Handler()
  records = []
  handler.emit = records.append
  logging.getLogger().addHandler(handler)
  try:
    summary = precompute_text.precompute(_args(captions, path, tmp / "out"))
  finally:
    logging.getLogger().removeHandler(handler)
  return tmp / "out", captions, summary, "\n".join(r.getMessage() for r in records)


def _assert_matches_reference(entry, want, atol_fraction=0.0):
  n = len(want)
  context, mask = entry["context"], entry["context_mask"]
  assert context.shape == (MAX_LENGTH, 32) and context.dtype == np.float32
  assert mask.dtype == bool
  np.testing.assert_array_equal(mask, np.arange(MAX_LENGTH) < n)
  err = np.max(np.abs(context[:n] - want)) / np.max(np.abs(want))
  assert err <= max(RTOL, atol_fraction), f"relative error {err:.2e}"
  assert not context[n:].any()


def test_cache_matches_encoder_per_caption(t5_dir, built):
  _, model, tokenizer = t5_dir
  cache_dir, _, summary, log = built
  assert summary == dict(summary, captions=7, truncated=1, shards_done=2, num_shards=2,
                         shards_encoded_now=2)
  assert sorted(os.listdir(cache_dir)) == [
      "meta.json", "text-00000-of-00002.array_record", "text-00000-of-00002.array_record.json",
      "text-00001-of-00002.array_record", "text-00001-of-00002.array_record.json"]
  meta = text_cache.read_meta(str(cache_dir))
  assert (meta["max_length"], meta["d_model"], meta["dtype"], meta["num_captions"]) == (8, 32, "float32", 7)
  assert meta["encoder"] == os.path.abspath(t5_dir[0])
  assert "line 2 " in log and "max_length=8" in log and "line 1 " not in log
  # Records: int32 index, int32 token count, then only the real tokens' float32 rows.
  for i, (record, n) in enumerate(zip(_raw_records(cache_dir), LENGTHS)):
    assert len(record) == 8 + n * 32 * 4
    np.testing.assert_array_equal(np.frombuffer(record, np.int32, count=2), [i, n])
  entries = _entries(cache_dir)
  assert len(entries) == 7
  for i, (caption, n) in enumerate(zip(CAPTIONS, LENGTHS)):
    want = _reference(model, tokenizer, caption, MAX_LENGTH)
    assert len(want) == n, caption
    _assert_matches_reference(entries[i], want)


def test_reader_pickles_and_indexes(built):
  cache_dir = str(built[0])
  cache = text_cache.TextEmbeddingCache(cache_dir)
  again = pickle.loads(pickle.dumps(cache))
  assert repr(again) == repr(cache) == f"TextEmbeddingCache(cache_dir={cache_dir!r})"
  np.testing.assert_array_equal(again[6]["context"], cache[-1]["context"])
  with pytest.raises(IndexError, match="caption 7 out of range for 7"):
    cache[7]  # pylint: disable=pointless-statement
  with pytest.raises(sources.DataDirError, match="meta.json missing"):
    text_cache.TextEmbeddingCache(os.path.dirname(cache_dir))


def test_resume_rewrites_only_the_missing_shard_and_refuses_other_settings(t5_dir, built, tmp_path):
  cache_dir, captions, _, _ = built
  out = tmp_path / "out"
  shutil.copytree(cache_dir, out)
  before = _entries(out)
  shard = [str(out / f"text-0000{s}-of-00002.array_record") for s in range(2)]
  mtime0 = os.stat(shard[0]).st_mtime_ns
  os.remove(shard[1])
  os.remove(shard[1] + ".json")
  with pytest.raises(sources.DataDirError, match="1 of 2 shards unfinished"):
    text_cache.TextEmbeddingCache(str(out))
  summary = precompute_text.precompute(_args(captions, t5_dir[0], out))
  assert (summary["shards_encoded_now"], summary["shards_done"], summary["captions"]) == (1, 2, 7)
  assert os.stat(shard[0]).st_mtime_ns == mtime0 and os.path.exists(shard[1])
  for a, b in zip(before, _entries(out)):
    np.testing.assert_array_equal(a["context"], b["context"])
    np.testing.assert_array_equal(a["context_mask"], b["context_mask"])
  assert precompute_text.precompute(_args(captions, t5_dir[0], out))["shards_encoded_now"] == 0
  args = _args(captions, t5_dir[0], out)
  args.max_length = 12
  with pytest.raises(ValueError, match=r"other settings \{'max_length': \(8, 12\)\}.*another --output"):
    precompute_text.precompute(args)


def test_hosts_write_interleaved_shards(t5_dir, built, tmp_path):
  assert text_cache.process_shards(5, 0, 2) == [0, 2, 4]
  assert text_cache.process_shards(5, 1, 2) == [1, 3]
  assert text_cache.process_shards(2, 2, 3) == []
  captions = built[1]
  args = _args(captions, t5_dir[0], tmp_path, "--num_shards", "3")
  first = precompute_text.precompute(args, process_index=0, process_count=2)
  assert (first["shards_encoded_now"], first["shards_done"], first["captions"]) == (2, 2, 5)
  assert not os.path.exists(tmp_path / "text-00001-of-00003.array_record")
  with pytest.raises(sources.DataDirError, match="no marker .*text-00001-of-00003"):
    text_cache.TextEmbeddingCache(str(tmp_path))
  second = precompute_text.precompute(args, process_index=1, process_count=2)
  assert (second["shards_encoded_now"], second["shards_done"], second["captions"]) == (1, 3, 7)
  for a, b in zip(_entries(built[0]), _entries(tmp_path)):
    np.testing.assert_allclose(a["context"], b["context"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a["context_mask"], b["context_mask"])


def test_bfloat16_storage(t5_dir, built, tmp_path):
  path, model, tokenizer = t5_dir
  precompute_text.precompute(_args(built[1], path, tmp_path, "--dtype", "bfloat16",
                                   "--tokenizer", str(path)))
  assert text_cache.read_meta(str(tmp_path))["dtype"] == "bfloat16"
  assert len(_raw_records(tmp_path)[0]) == 8 + LENGTHS[0] * 32 * 2  # 2 bytes a value
  for entry, caption in zip(_entries(tmp_path), CAPTIONS):
    want = _reference(model, tokenizer, caption, MAX_LENGTH)
    # bfloat16 keeps 8 significant bits: a relative rounding error of at most 2^-9 per value.
    np.testing.assert_allclose(entry["context"][:len(want)], want, rtol=2 ** -8,
                               atol=RTOL * np.max(np.abs(want)))
    _assert_matches_reference(entry, want, atol_fraction=2 ** -8)


@pytest.mark.parametrize("content,message", [
    ("a 3\n\n7\n", r"line 2 is empty \(blank lines: \[2\]\)"),
    ("a 3\n7\n \n", r"line 3 is empty"),
    ("a 3\n7\n\n", r"line 3 is empty"),
    ("", r"is empty; write one caption per line"),
    ("\n", r"line 1 is empty"),
])
def test_bad_caption_files(t5_dir, tmp_path, content, message):
  captions = tmp_path / "captions.txt"
  captions.write_text(content, encoding="utf-8")
  with pytest.raises(ValueError, match=message):
    precompute_text.precompute(_args(captions, t5_dir[0], tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_caption_file_details(t5_dir, tmp_path):
  path = tmp_path / "captions.txt"
  path.write_bytes(b"a 3\r\n7")  # CRLF, no final newline
  assert precompute_text.read_captions(str(path))[0] == ["a 3", "7"]
  path.write_bytes(b"a 3\n7\xff\n")
  with pytest.raises(ValueError, match="not UTF-8: byte 5 on line 2"):
    precompute_text.read_captions(str(path))
  captions = _write_captions(path, CAPTIONS)
  with pytest.raises(ValueError, match="--num_shards=8 is more than the 7 captions"):
    precompute_text.precompute(_args(captions, t5_dir[0], tmp_path / "a", "--num_shards", "8"))
  with pytest.raises(ValueError, match="--batch_size=6 is not a multiple of the 8 batch shards"):
    precompute_text.precompute(_args(captions, t5_dir[0], tmp_path / "b", "--batch_size", "6"))
