"""Prompts -> what a text-conditioned DiT takes as ``context`` / ``context_mask``.

``config.text`` says how captions become model inputs, in training and in sampling alike:

- ``tokenizer``: "digit_pairs" (the built-in word tokenizer of the digit-pairs default,
  dit_jax.text_vocab) or a Hugging Face tokenizer (hub repo or directory, e.g. "google/flan-t5-xl");
- ``max_length``: tokens per caption (longer prompts are truncated with a warning);
- ``tokenizer_subfolder`` / ``encoder_subfolder``: where a pipeline repo keeps them (e.g.
  "tokenizer" / "text_encoder"; default: the repo root);
- ``encoder``: "" when the model embeds token ids itself (``config.model.text_encoder``: a Flax
  T5 trained jointly with the DiT, as the digit-pairs default does), else a pretrained T5
  encoder (hub repo or directory) whose outputs are the context: training reads them from a
  prompt-embedding cache (python -m dit_jax.data.precompute_text), sampling encodes the
  prompts with the same encoder here.
"""
import functools
import logging
from typing import Sequence

import numpy as np

DIGIT_PAIRS_TOKENIZER = "digit_pairs"


def read_prompts(path: str) -> list[str]:
  """One prompt per line of a UTF-8 text file; an empty file or an empty line is an error
  naming the file (and the line), since an empty prompt would silently sample the null text."""
  from etils import epath  # local: as the data sources read paths
  try:
    text = epath.Path(path).read_text(encoding="utf-8")
  except FileNotFoundError as e:
    raise ValueError(f"--prompts {path}: no such file (one prompt per line).") from e
  lines = text.splitlines()
  if not lines:
    raise ValueError(f"--prompts {path} is empty: write one prompt per line.")
  empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
  if empty:
    raise ValueError(f"--prompts {path}: line(s) {empty[:10]} are empty; remove them (every line "
                     "is one prompt).")
  return [line.strip() for line in lines]


def tokenize(text_cfg, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 (N, max_length), mask bool (N, max_length)) of ``prompts`` with the config's
  tokenizer; a prompt longer than max_length is truncated with a warning naming it."""
  name, max_length = text_cfg.get("tokenizer", ""), int(text_cfg.get("max_length", 0))
  if max_length < 1:
    raise ValueError(f"config.text.max_length={max_length} must be a positive token count.")
  if name == DIGIT_PAIRS_TOKENIZER:
    from dit_jax.data import digit_pairs  # local: only the digit-pairs default needs it
    return digit_pairs.tokenizer().encode(list(prompts), max_length)
  if not name:
    raise ValueError("config.text.tokenizer is empty: name 'digit_pairs' or a Hugging Face "
                     "tokenizer (hub repo or directory).")
  from transformers import AutoTokenizer  # local: the "text" extra
  from dit_jax.models import t5
  loaded = AutoTokenizer.from_pretrained(name, subfolder=text_cfg.get("tokenizer_subfolder", ""))
  return t5.tokenize(loaded, list(prompts), max_length)


@functools.lru_cache(maxsize=2)
def _pretrained_encoder(name: str, subfolder: str):
  from dit_jax.models import t5  # local: needs transformers (the "text" extra)
  return t5.load_t5_encoder(name, subfolder=subfolder)


def encode_prompts(config, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(context, context_mask) of ``prompts`` for the model of ``config``: token ids for a model
  with its own text encoder, else the pretrained encoder's outputs (float32 (N, L, D)), whose
  width must be the model's ``context_dim``."""
  text_cfg = config.get("text") or {}
  ids, mask = tokenize(text_cfg, prompts)
  encoder = text_cfg.get("encoder", "")
  if not encoder:
    return ids, mask
  module, params = _pretrained_encoder(encoder, text_cfg.get("encoder_subfolder", ""))
  context = np.asarray(module.apply({"params": params}, ids, mask), np.float32)
  width = (config.get("model") or {}).get("context_dim", 0)
  if context.shape[-1] != width:
    raise ValueError(f"config.text.encoder={encoder} gives {context.shape[-1]}-wide embeddings but "
                     f"config.model.context_dim={width}; use the encoder the model was trained with.")
  logging.info("encoded %d prompts with %s", len(prompts), encoder)
  return context, mask


def grid_prompts(config, n: int) -> list[str] | None:
  """Prompts of the training sample grid: the digit-pairs evaluation prompts (half of them held
  out of training) for that source, else ``config.sample.prompts`` (cycled to n), else None."""
  if (config.get("data") or {}).get("source") == DIGIT_PAIRS_TOKENIZER:
    from dit_jax.data import digit_pairs  # local: only the digit-pairs default needs it
    return digit_pairs.evaluation_prompts(n)
  given = list((config.get("sample") or {}).get("prompts") or [])
  return [given[i % len(given)] for i in range(n)] if given else None
