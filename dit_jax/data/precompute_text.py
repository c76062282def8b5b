"""Encodes a caption file with a T5 encoder into the prompt-embedding cache (format: text_cache.py).

  python -m dit_jax.data.precompute_text --captions captions.txt --encoder google/flan-t5-xxl \
      --output /data/captions_t5xxl --max_length 120 --batch_size 256 --dtype bfloat16 \
      --encoder_dtype bfloat16
  python -m dit_jax.data.precompute_text --captions captions.txt --encoder PixArt-alpha/PixArt-XL-2-1024-MS \
      --subfolder text_encoder --tokenizer_subfolder tokenizer --output /data/pixart_t5 --max_length 120

The caption file holds one caption per line (UTF-8; caption i is line i + 1; blank lines are an
error); --image_folder ROOT instead reads each image's `<image>.txt` in the imagefolder source's
order, so that training with config.data.text_cache gives every image its own caption. Captions
are tokenized with --max_length (longer ones are truncated with a warning that names the line)
and encoded by the Flax T5 encoder (dit_jax.models.t5), its weights sharded over
this process's devices (d_model over fsdp, heads and d_ff over tensor) and each batch split over
data x fsdp. Shards are split over processes (process p writes shards p, p + P, ...; on a pod pass
--distributed on every host). Finished shards are skipped, so an interrupted run is resumed by
rerunning the same command; a rerun with another encoder, tokenizer, max_length, dtype or caption
file is refused. --output may be a bucket (gs://): shards are staged locally, then copied.
"""
import argparse
import hashlib
import json
import logging
import math
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dit_jax import sharding
from dit_jax.data import sources, text_cache
from dit_jax.models import t5

CAPTIONS_PER_SHARD = 2_000  # T5-XXL (d_model 4096) at ~20 tokens a caption: ~0.7 GB a float32 shard
_TMP_SUFFIX = ".tmp"
_META_KEYS = ("encoder", "subfolder", "encoder_config_sha256", "encoder_dtype", "tokenizer",
              "tokenizer_subfolder", "max_length", "d_model", "dtype", "num_captions", "num_shards",
              "captions_sha256")


def read_captions(path: str) -> tuple[list[str], str]:
  """(captions, sha256 of the file) from a UTF-8 file with one caption per line (a final
  newline is optional, CRLF line ends are taken). Raises ValueError naming the file and the
  line numbers (1-based) of blank lines, or saying that the file is empty or not UTF-8."""
  raw = sources.as_path(path).read_bytes()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise ValueError(f"{path} is not UTF-8: byte {e.start} on line {line} ({e.reason}); save "
                     "the caption file as UTF-8.") from e
  lines = text.split("\n")
  if lines[-1] == "":
    lines.pop()  # the final newline ends the last caption
  if not lines:
    raise ValueError(f"{path} is empty; write one caption per line.")
  captions = [line.removesuffix("\r") for line in lines]
  blank = [i + 1 for i, c in enumerate(captions) if not c.strip()]
  if blank:
    raise ValueError(f"{path}: line {blank[0]} is empty (blank lines: {blank[:10]}"
                     f"{' ...' if len(blank) > 10 else ''}); every line must hold a caption: "
                     "remove the blank lines.")
  return captions, hashlib.sha256(raw).hexdigest()


def captions_name(args) -> str:
  """Where the captions come from (--captions or --image_folder), for messages and meta.json."""
  return args.captions or args.image_folder


def load_captions(args) -> tuple[list[str], str]:
  """(captions, sha256 of their text) from --captions FILE or --image_folder ROOT."""
  if not args.image_folder:
    return read_captions(args.captions)
  from dit_jax.data import imagefolder  # pylint: disable=import-outside-toplevel
  captions = imagefolder.sidecar_captions(args.image_folder)
  return captions, hashlib.sha256("\n".join(captions).encode()).hexdigest()


def encoder_config(encoder: str, subfolder: str) -> dict:
  """T5Encoder keyword arguments from the checkpoint's config.json (no weights are read)."""
  from transformers import AutoConfig  # pylint: disable=import-outside-toplevel
  return t5.config_from_hf(AutoConfig.from_pretrained(encoder, subfolder=subfolder).to_dict())


def make_encoder(args):
  """(fn(ids, mask) -> float32 (B, max_length, d_model), batch multiple): the Flax T5 encoder
  on a mesh of this process's devices; batches must be multiples of data x fsdp."""
  mesh = sharding.create_mesh(dict(data=args.data, fsdp=args.fsdp, tensor=args.tensor),
                              jax.local_devices())
  dtype = jnp.dtype(args.encoder_dtype)
  module, params = t5.load_t5_encoder(args.encoder, dtype=dtype, param_dtype=dtype,
                                      subfolder=args.subfolder, mesh=mesh)
  batch = sharding.batch_sharding(mesh)
  apply = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask).astype(jnp.float32))

  def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with sharding.mesh_context(mesh):
      out = apply(params, jax.device_put(ids, batch), jax.device_put(mask, batch))
    return np.asarray(out)

  return encode, sharding.batch_shard_count(mesh)


def tokenize_lines(tokenizer, captions: list[str], first_index: int, max_length: int,
                   captions_path: str) -> tuple[np.ndarray, np.ndarray, int]:
  """(ids int32, mask bool, number truncated) of captions first_index, first_index + 1, ...,
  right-padded to max_length; a truncated caption is logged with its line number."""
  truncated = 0
  for j, ids in enumerate(tokenizer(captions)["input_ids"]):
    if len(ids) > max_length:
      truncated += 1
      logging.warning("%s line %d (%r) has %d tokens, more than --max_length=%d: truncated.",
                      captions_path, first_index + j + 1, captions[j][:80], len(ids), max_length)
  encoded = tokenizer(captions, padding="max_length", truncation=True, max_length=max_length,
                      padding_side="right", return_tensors="np")
  return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(bool), truncated


def _write_shard(path, captions, first_index, encode, tokenizer, args, progress) -> None:
  from array_record.python.array_record_module import ArrayRecordWriter  # local: tool-only
  local = "://" not in path
  dtype = text_cache.DTYPES[args.dtype]
  with tempfile.TemporaryDirectory() as tmp:
    staging = path + _TMP_SUFFIX if local else os.path.join(tmp, os.path.basename(path))
    writer = ArrayRecordWriter(staging, text_cache.WRITER_OPTIONS)
    tokens = truncated = 0
    for start in range(0, len(captions), args.batch_size):
      chunk = captions[start:start + args.batch_size]
      ids, mask, cut = tokenize_lines(tokenizer, chunk, first_index + start, args.max_length,
                                      captions_name(args))
      pad = args.batch_size - len(chunk)  # one compiled shape: the last batch repeats its last row
      out = encode(np.concatenate([ids, np.repeat(ids[-1:], pad, 0)]),
                   np.concatenate([mask, np.repeat(mask[-1:], pad, 0)]))
      for j, n in enumerate(mask.sum(axis=1)):
        writer.write(text_cache.encode_record(first_index + start + j, out[j, :n].astype(dtype)))
      tokens += int(mask.sum())
      truncated += cut
      progress.update(len(chunk))
    writer.close()
    if local:
      os.replace(staging, path)
    else:
      sources.as_path(staging).copy(path, overwrite=True)
  sources.as_path(path + text_cache.DONE_SUFFIX).write_text(
      json.dumps(dict(captions=len(captions), tokens=tokens, truncated=truncated)))


def _check_or_write_meta(output: str, meta: dict, process_index: int) -> None:
  if (sources.as_path(output) / text_cache.META_FILE).exists():
    old = text_cache.read_meta(output)
    diff = {k: (old.get(k), meta.get(k)) for k in _META_KEYS if old.get(k) != meta.get(k)}
    if diff:
      raise ValueError(f"{output} holds a prompt-embedding cache built with other settings "
                       f"{diff} (old, new); use another --output or the original settings.")
  elif process_index == 0:
    text_cache.write_meta(output, meta)


def precompute(args, process_index: int | None = None, process_count: int | None = None) -> dict:
  """Encodes this process's unfinished shards; returns the summary of the whole cache so far.

  process_index / process_count default to JAX's (tests pass them to exercise the host split).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if args.max_length < 1:
    raise ValueError(f"--max_length={args.max_length}: pass a positive token count.")
  captions, captions_sha256 = load_captions(args)
  num_shards = args.num_shards or math.ceil(len(captions) / CAPTIONS_PER_SHARD)
  if num_shards > len(captions):
    raise ValueError(f"--num_shards={num_shards} is more than the {len(captions)} captions of "
                     f"{captions_name(args)}; pass at most {len(captions)}.")
  config = encoder_config(args.encoder, args.subfolder)
  tokenizer_name = args.tokenizer or args.encoder
  meta = dict(
      encoder=text_cache.encoder_name(args.encoder), subfolder=args.subfolder,
      encoder_config_sha256=hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
      encoder_config=config, encoder_dtype=args.encoder_dtype,
      tokenizer=text_cache.encoder_name(tokenizer_name), tokenizer_subfolder=args.tokenizer_subfolder,
      max_length=args.max_length, d_model=config["d_model"], dtype=args.dtype,
      num_captions=len(captions), num_shards=num_shards,
      captions=captions_name(args),
      captions_sha256=captions_sha256)
  sources.as_path(args.output).mkdir(parents=True, exist_ok=True)
  _check_or_write_meta(args.output, meta, process_index)
  paths = [text_cache.shard_path(args.output, s, num_shards) for s in range(num_shards)]
  todo = [s for s in text_cache.process_shards(num_shards, process_index, process_count)
          if not sources.as_path(paths[s] + text_cache.DONE_SUFFIX).exists()]
  bounds = text_cache.shard_bounds(len(captions), num_shards)
  start = time.time()
  if todo:
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, subfolder=args.tokenizer_subfolder)
    encode, multiple = make_encoder(args)
    if args.batch_size % multiple:
      raise ValueError(f"--batch_size={args.batch_size} is not a multiple of the {multiple} "
                       f"batch shards (--data x --fsdp over this process's devices); pass a "
                       f"multiple of {multiple}.")
    with tqdm(total=sum(bounds[s + 1] - bounds[s] for s in todo), unit="caption",
              desc=f"process {process_index}") as progress:
      for s in todo:
        _write_shard(paths[s], captions[bounds[s]:bounds[s + 1]], int(bounds[s]), encode,
                     tokenizer, args, progress)
  summary = dict(captions=0, truncated=0, shards_done=0, num_shards=num_shards,
                 shards_encoded_now=len(todo), seconds=round(time.time() - start, 1))
  for path in paths:
    marker = sources.as_path(path + text_cache.DONE_SUFFIX)
    if marker.exists():
      done = json.loads(marker.read_text())
      summary["captions"] += done["captions"]
      summary["truncated"] += done["truncated"]
      summary["shards_done"] += 1
  return summary


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  captions = parser.add_mutually_exclusive_group(required=True)
  captions.add_argument("--captions", default="", help="UTF-8 text file, one caption per line")
  captions.add_argument("--image_folder", default="",
                        help="an image folder (imagefolder layout) with <image>.txt captions: "
                             "caption i is image i of the imagefolder source (config.data.text_cache)")
  parser.add_argument("--encoder", required=True,
                      help="transformers T5 checkpoint: a local directory or a hub repo id")
  parser.add_argument("--subfolder", default="", help="the encoder's subfolder (e.g. text_encoder)")
  parser.add_argument("--tokenizer", default="", help="tokenizer directory or hub repo (default: --encoder)")
  parser.add_argument("--tokenizer_subfolder", default="", help="e.g. tokenizer (pipelines)")
  parser.add_argument("--output", required=True, help="cache directory (local or gs://)")
  parser.add_argument("--max_length", type=int, required=True, help="tokens per caption (PixArt: 120)")
  parser.add_argument("--batch_size", type=int, default=64,
                      help="captions per encoder call per process; a multiple of --data x --fsdp")
  parser.add_argument("--dtype", default="float32", choices=sorted(text_cache.DTYPES),
                      help="storage dtype (bfloat16 halves the size; float32 is exact)")
  parser.add_argument("--encoder_dtype", default="float32", choices=["float32", "bfloat16"],
                      help="the encoder's compute and parameter dtype")
  parser.add_argument("--num_shards", type=int, default=0, help=f"0: one per {CAPTIONS_PER_SHARD} captions")
  parser.add_argument("--data", type=int, default=1, help="mesh: batch-only axis over local devices")
  parser.add_argument("--fsdp", type=int, default=-1, help="mesh: batch and d_model axis (-1: the rest)")
  parser.add_argument("--tensor", type=int, default=1, help="mesh: heads and d_ff axis")
  parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (pods)")
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.distributed:
    jax.distributed.initialize()
  summary = precompute(args)
  print(f"prompt-embedding cache {args.output}: {summary['captions']} captions "
        f"({summary['truncated']} truncated), {summary['shards_done']}/{summary['num_shards']} "
        f"shards done ({summary['shards_encoded_now']} encoded now in {summary['seconds']} s)")


if __name__ == "__main__":
  main()
