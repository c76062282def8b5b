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
import jax
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from dit_jax import config_checks, config_files, sample, train
from dit_jax.data import imagefolder, precompute_text, sources, text_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


# Training from the cache (config.data.text_cache): an image folder whose images carry their
# captions in <image>.txt files, encoded with --image_folder, read back beside their images.
FOLDER_CAPTIONS = CAPTIONS[:6]  # images a/0, a/1, a/2, b/0, b/1, b/2 in the source's order


@pytest.fixture(scope="module")
def captioned_folder(t5_dir, tmp_path_factory):
  """(image folder, its cache): 6 RGB 8x8 PNGs in 2 classes, image i filled with the gray
  level 40 i and captioned FOLDER_CAPTIONS[i]."""
  root = tmp_path_factory.mktemp("captioned")
  for i, caption in enumerate(FOLDER_CAPTIONS):
    path = root / "ab"[i // 3] / f"{i % 3}.png"
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(path)
    path.with_suffix(".txt").write_text(f"  {caption.replace(' ', chr(10), 1)}\n", encoding="utf-8")
  cache = root.parent / (root.name + "_cache")
  precompute_text.precompute(precompute_text.parse_args(
      ["--image_folder", str(root), "--encoder", str(t5_dir[0]), "--output", str(cache),
       "--max_length", str(MAX_LENGTH), "--batch_size", "8"]))
  return root, cache


def _folder_data_config(root, cache) -> dict:
  return dict(source="imagefolder", data_dir=str(root), split="", image_size=8, flip=False,
              text_cache=str(cache))


def test_image_folder_captions_come_with_their_images(t5_dir, captioned_folder, tmp_path):
  _, model, tokenizer = t5_dir
  root, cache = captioned_folder
  assert imagefolder.sidecar_captions(str(root)) == FOLDER_CAPTIONS  # line breaks, spaces joined
  assert text_cache.read_meta(str(cache))["captions"] == str(root)
  source = sources.make_source(_folder_data_config(root, cache))
  assert len(source) == 6 and "TextEmbeddingCache" in repr(source)
  for i, caption in enumerate(FOLDER_CAPTIONS):
    element = source[i]
    np.testing.assert_allclose(element["x"], 40 * i / 127.5 - 1, atol=1e-6)  # image i ...
    _assert_matches_reference(element, _reference(model, tokenizer, caption, MAX_LENGTH))  # ... caption i
  # An unreadable image is replaced by the next one, and so is its caption.
  broken = tmp_path / "broken"
  shutil.copytree(root, broken)
  (broken / "a" / "1.png").write_bytes(b"not a png")
  element = sources.make_source(_folder_data_config(broken, cache))[1]
  assert element["skipped"] == 1
  np.testing.assert_allclose(element["x"], 80 / 127.5 - 1, atol=1e-6)
  _assert_matches_reference(element, _reference(model, tokenizer, FOLDER_CAPTIONS[2], MAX_LENGTH))


def test_captions_must_match_the_images(captioned_folder, tmp_path):
  root, cache = captioned_folder
  fewer = tmp_path / "fewer"
  shutil.copytree(root, fewer)
  os.remove(fewer / "b" / "2.png")
  with pytest.raises(sources.DataDirError, match=r"holds 6 captions but ImageFolderSource.* has "
                                                 r"5 examples; caption i must describe example i"):
    sources.make_source(_folder_data_config(fewer, cache))
  os.remove(fewer / "b" / "1.txt")
  with pytest.raises(ValueError, match=r"1 of 5 images .* have no caption file .*b/1.txt"):
    imagefolder.sidecar_captions(str(fewer))


def _text_to_image_config(root, cache):
  """configs/text_to_image.py (smoke) on the captioned folder's cache, in pixel space."""
  config = config_files.sibling(os.path.join(ROOT, "configs", "digits.py"), "text_to_image",
                                f"smoke,text_cache={cache},source=imagefolder")
  config.model.update(in_channels=3)
  config.data.update(_folder_data_config(root, cache), num_workers=0)
  config.update(num_train_steps=4, global_batch_size=4, checkpoint_every_steps=4)
  return config


def test_text_to_image_config_reads_the_cache(t5_dir, captioned_folder):
  config = _text_to_image_config(*captioned_folder)
  model = config_checks.model_kwargs(config.model.to_dict())
  assert (model["context_dim"], model["context_length"], model["block_type"]) == (
      32, MAX_LENGTH, "cross_attention")
  assert config.text.to_dict() == dict(
      encoder=os.path.abspath(t5_dir[0]), encoder_subfolder="", max_length=MAX_LENGTH,
      tokenizer=os.path.abspath(t5_dir[0]), tokenizer_subfolder="")
  assert not config.data.flip
  with pytest.raises(ValueError, match="pass text_cache=DIR"):
    config_files.sibling(os.path.join(ROOT, "configs", "digits.py"), "text_to_image", "smoke")


def test_trains_on_cached_captions_and_samples_from_prompts(t5_dir, captioned_folder, tmp_path):
  root, cache = captioned_folder
  config = _text_to_image_config(root, cache)
  workdir = tmp_path / "run"
  state = train.train(config, str(workdir), devices=jax.devices()[:1])
  assert int(state.step) == 4
  prompts = ["a 3 to the left of a 7", "digit"]
  out = tmp_path / "s.npz"
  sample.sample_to_files(str(workdir), num_samples=3, prompts=prompts, output=str(out),
                         num_steps=5)
  with np.load(out) as npz:
    assert npz["arr_0"].shape == (3, 8, 8, 3) and npz["arr_0"].dtype == np.uint8
    assert list(npz["prompts"]) == [prompts[0], prompts[1], prompts[0]]


@pytest.mark.parametrize("change,message", [
    (dict(model=dict(context_dim=16)), r"config.model.context_dim=16 but the cached embeddings are "
                                       r"32 wide; set it to 32"),
    (dict(model=dict(text_vocab_size=12)), r"config.model.text_vocab_size=12: .* set it to 0"),
    (dict(text=dict(encoder="google/flan-t5-small")), r"config.text.encoder='google/flan-t5-small'"
                                                      r" but the cache was built with '/"),
    (dict(text=dict(max_length=9)), r"config.text.max_length=9 but the cache was built with 8"),
    (dict(text=dict(tokenizer_subfolder="tokenizer")), r"config.text.tokenizer_subfolder="
                                                       r"'tokenizer' but the cache was built with ''"),
    (dict(data=dict(text_cache="/nonexistent")), r"config.data.text_cache=/nonexistent: no "
                                                 r"prompt-embedding cache there"),
])
def test_config_checks_name_what_disagrees_with_the_cache(captioned_folder, change, message):
  config = _text_to_image_config(*captioned_folder)
  for section, values in change.items():
    config[section].update(values)
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate(config, num_devices=1)
