"""The prompt-embedding cache: on-disk format and its reader, `TextEmbeddingCache`.

A cache directory (written by `python -m dit_jax.data.precompute_text`) holds `meta.json` and
ArrayRecord shards `text-SSSSS-of-NNNNN.array_record`, each finished one with a `.json` marker
beside it, as the latent cache (latents.py) does. Shard s holds a contiguous run of captions in
file order, so record i of the concatenated shards is caption i (line i + 1 of the caption
file). A record is the int32 caption index, the int32 token count n (the tokenizer mask's real
tokens, end-of-sequence included), then the encoder outputs of those n tokens, (n, d_model) in
the cache dtype: padding is not stored (T5 outputs at padding positions are meaningless, and
short captions would otherwise cost max_length rows). The reader pads back to max_length with
zeros and returns the mask, the (context, context_mask) pair text-conditioned DiTs take.

meta.json names the encoder (a local directory's absolute path or a hub repo id), a hash of
its T5 config, the compute and storage dtypes, the tokenizer, max_length, d_model and the
caption file's hash; a rerun with other settings is refused rather than mixing shards.

The directory may be local or gs://: meta.json and the markers go through etils.epath, the
shards through ArrayRecord's reader (see latents.py for which schemes it opens).
"""
import os

import grain
import ml_dtypes
import numpy as np

from dit_jax.data import sources

META_FILE = "meta.json"
SHARD_PATTERN = "text-{:05d}-of-{:05d}.array_record"
DONE_SUFFIX = ".json"
# One record per chunk (random access), uncompressed: as the latent cache.
WRITER_OPTIONS = "group_size:1,uncompressed"
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_HEADER = np.dtype(np.int32).itemsize * 2  # caption index, token count


def encoder_name(path_or_repo: str) -> str:
  """How meta.json names an encoder or tokenizer: a local directory's absolute path, or a hub
  repo id as given."""
  return os.path.abspath(path_or_repo) if os.path.isdir(path_or_repo) else path_or_repo


def shard_path(cache_dir: str, shard: int, num_shards: int) -> str:
  return str(sources.as_path(cache_dir) / SHARD_PATTERN.format(shard, num_shards))


def shard_bounds(num_captions: int, num_shards: int) -> np.ndarray:
  """Caption index bounds (num_shards + 1,): shard s holds captions bounds[s]:bounds[s + 1]."""
  return np.linspace(0, num_captions, num_shards + 1).astype(int)


def process_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
  """The shards process `process_index` of `process_count` writes: p, p + P, p + 2P, ..."""
  return list(range(process_index, num_shards, process_count))


def encode_record(index: int, embeddings: np.ndarray) -> bytes:
  """(caption index, embeddings (n, d) of the n real tokens) -> record bytes."""
  return (np.array([index, len(embeddings)], np.int32).tobytes()
          + np.ascontiguousarray(embeddings).tobytes())


def decode_record(record: bytes, d_model: int, dtype: np.dtype) -> tuple[int, np.ndarray]:
  """Record bytes -> (caption index, embeddings (n, d_model)) without copying the payload."""
  index, n = np.frombuffer(record, np.int32, count=2)
  return int(index), np.frombuffer(record, dtype, count=int(n) * d_model,
                                   offset=_HEADER).reshape(int(n), d_model)


def read_meta(cache_dir: str) -> dict:
  return sources.read_json(
      cache_dir, META_FILE, f"no prompt-embedding cache there ({META_FILE} missing); build it "
      "with `python -m dit_jax.data.precompute_text --captions FILE --output DIR ...`.")


def write_meta(cache_dir: str, meta: dict) -> None:
  sources.write_json(cache_dir, META_FILE, meta)


def open_cache(cache_dir: str) -> tuple[dict, list[str]]:
  """(meta, shard paths) of the finished cache in `cache_dir`; DataDirError naming the first
  unfinished shard when one lacks its marker."""
  meta = read_meta(cache_dir)
  num_shards = meta["num_shards"]
  paths = [shard_path(cache_dir, s, num_shards) for s in range(num_shards)]
  unfinished = [p + DONE_SUFFIX for p in paths if not sources.as_path(p + DONE_SUFFIX).exists()]
  if unfinished:
    raise sources.DataDirError(
        cache_dir, f"the prompt-embedding cache is incomplete ({len(unfinished)} of {num_shards} "
        f"shards unfinished: no marker {unfinished[0]}); rerun precompute_text (on every host "
        "for a multi-host run) to finish it.")
  return meta, paths


class TextEmbeddingCache:
  """Random access to a finished cache by caption index:
  `cache[i] -> dict(context=float32 (max_length, d_model), context_mask=bool (max_length,))`,
  padding rows zero and masked out. Pickles as its directory (workers reopen the shards)."""

  def __init__(self, cache_dir: str):
    self.cache_dir = str(cache_dir)
    meta, paths = open_cache(self.cache_dir)
    self.max_length = int(meta["max_length"])
    self.d_model = int(meta["d_model"])
    self._dtype = DTYPES[meta["dtype"]]
    try:
      self._records = grain.sources.ArrayRecordDataSource(paths)
    except RuntimeError as e:  # from ArrayRecord's C++ reader: "open() failed: ...; opening PATH"
      raise sources.DataDirError(
          self.cache_dir, f"ArrayRecord's reader cannot open a shard ({e}); it reads local files "
          "and gs:// objects only: copy the cache to one.") from e
    if len(self._records) != meta["num_captions"]:
      raise sources.DataDirError(
          self.cache_dir, f"the shards hold {len(self._records)} records but meta.json says "
          f"{meta['num_captions']} captions; delete the cache and rebuild it.")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    if not -len(self) <= index < len(self):
      raise IndexError(f"caption {index} out of range for {len(self)} cached captions")
    index %= len(self)
    stored, embeddings = decode_record(self._records[index], self.d_model, self._dtype)
    if stored != index:
      raise sources.DataDirError(
          self.cache_dir, f"record {index} holds caption {stored}: the shards are out of order "
          "or from another run; delete the cache and rebuild it.")
    context = np.zeros((self.max_length, self.d_model), np.float32)
    context[:len(embeddings)] = embeddings
    return dict(context=context, context_mask=np.arange(self.max_length) < len(embeddings))

  def __reduce__(self):
    return (TextEmbeddingCache, (self.cache_dir,))

  def __repr__(self) -> str:
    return f"TextEmbeddingCache(cache_dir={self.cache_dir!r})"


class CaptionedSource:
  """Any data source with the cached embeddings of its captions: example i gets caption i as
  `context` / `context_mask` (config.data.text_cache). An example a skipping source replaced by
  the next readable one (`skipped` > 0) gets that example's caption, so image and caption
  always belong together."""

  def __init__(self, source, cache_dir: str):
    self._source = source
    self._cache = TextEmbeddingCache(cache_dir)
    if len(self._cache) != len(source):
      raise sources.DataDirError(
          self._cache.cache_dir, f"the prompt-embedding cache holds {len(self._cache)} captions "
          f"but {source!r} has {len(source)} examples; caption i must describe example i: build "
          "the cache from the data's own captions (precompute_text --image_folder ROOT reads an "
          "image folder's <image>.txt files in the source's order).")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    element = self._source[index]
    read = (index + int(element.get("skipped", 0))) % len(self)  # the example actually returned
    return dict(element, **self._cache[read])

  def __repr__(self) -> str:
    return f"CaptionedSource({self._source!r}, {self._cache!r})"


def training_problems(meta: dict, model_kwargs: dict, text_cfg: dict) -> list[str]:
  """What keeps a model (config.model kwargs) and config.text from training on a cache with
  `meta`: each problem names the field and the value that works."""
  problems = []
  if model_kwargs.get("text_vocab_size", 0):
    problems.append(f"config.model.text_vocab_size={model_kwargs['text_vocab_size']}: a model "
                    "trained on cached encoder outputs has no encoder of its own; set it to 0")
  if model_kwargs.get("context_dim", 0) != meta["d_model"]:
    problems.append(f"config.model.context_dim={model_kwargs.get('context_dim', 0)} but the "
                    f"cached embeddings are {meta['d_model']} wide; set it to {meta['d_model']}")
  for name, value in text_settings(meta).items():
    given = text_cfg.get(name, "")
    if name in ("encoder", "tokenizer"):
      given = encoder_name(given)
    if given != value:
      problems.append(f"config.text.{name}={text_cfg.get(name)!r} but the cache was built with "
                      f"{value!r}; set it to {value!r} so sampling encodes prompts as "
                      "training saw them")
  return problems


def text_settings(meta: dict) -> dict:
  """The config.text fields (dit_jax.text) that encode prompts as the cache with `meta` did."""
  return dict(encoder=meta["encoder"], encoder_subfolder=meta["subfolder"],
              tokenizer=meta["tokenizer"], tokenizer_subfolder=meta["tokenizer_subfolder"],
              max_length=meta["max_length"])
