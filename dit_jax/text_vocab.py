"""A word-level tokenizer over a fixed, built-in vocabulary (no download).

Small text defaults (the digit-pairs captions of issue 16) have a closed grammar of a few
words, so a subword tokenizer brings nothing but a download. `WordTokenizer` splits a prompt on
whitespace (lower-cased) and maps each word to its id, with T5's special ids so that the trainer
can use it or `dit_jax.models.t5.tokenize` alike:

- pad = 0 (right padding, mask False), end-of-sequence = 1 (appended to every prompt and kept
  last when a prompt is truncated, so even the empty prompt has one real token), unknown = 2;
- the vocabulary's words get ids 3, 4, ... in the order given.

`encode(prompts, max_length)` returns `(ids int32 (N, max_length), mask bool (N, max_length))`,
the return convention of `t5.tokenize`.
"""
import logging
from typing import Sequence

import numpy as np

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIALS = (PAD, EOS, UNK)
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class WordTokenizer:
  """Whitespace-split, lower-cased words -> ids over `vocab` (after the special tokens).

  Picklable, with a stable repr (it travels inside data sources to grain's workers).
  """

  def __init__(self, vocab: Sequence[str]):
    vocab = tuple(vocab)
    problems = [w for w in vocab if not w or w != w.lower() or len(w.split()) != 1 or w in SPECIALS]
    duplicates = sorted({w for w in vocab if vocab.count(w) > 1})
    if problems or duplicates or not vocab:
      raise ValueError(
          f"WordTokenizer vocab must be distinct, non-empty, lower-case single words other than "
          f"{SPECIALS}; got bad words {problems}, duplicates {duplicates} "
          f"(vocab size {len(vocab)}).")
    self.vocab = vocab
    self._ids = {word: i for i, word in enumerate(SPECIALS + vocab)}

  @property
  def vocab_size(self) -> int:
    """Number of ids, special tokens included (the text encoder's embedding rows)."""
    return len(self._ids)

  def encode(self, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, max_length) int32, mask (N, max_length) bool) of `prompts`.

    Each prompt becomes its word ids followed by the end-of-sequence id, right-padded with 0.
    Unknown words map to the <unk> id with a warning naming them; a prompt longer than
    `max_length` tokens keeps its first `max_length - 1` words and the end-of-sequence id, with
    a warning naming its number (0-based) and the limit.
    """
    if isinstance(prompts, str):
      raise TypeError(f"encode takes a list of prompts, got the string {prompts[:80]!r}; "
                       "wrap it in a list.")
    if not prompts:
      raise ValueError("encode got no prompts; pass at least one (an empty string is the null "
                       "prompt).")
    if max_length < 1:
      raise ValueError(f"max_length={max_length} must be at least 1 (the end-of-sequence token).")
    ids = np.full((len(prompts), max_length), PAD_ID, np.int32)
    for i, prompt in enumerate(prompts):
      words = prompt.lower().split()
      unknown = [w for w in words if w not in self._ids or w in SPECIALS]
      if unknown:
        logging.warning("Prompt %d (%r): words %s are not in the vocabulary; encoded as %s.",
                        i, prompt[:80], unknown, UNK)
      row = [UNK_ID if w in unknown else self._ids[w] for w in words] + [EOS_ID]
      if len(row) > max_length:
        logging.warning("Prompt %d (%r) has %d tokens, more than max_length=%d: truncated to "
                        "%d tokens.", i, prompt[:80], len(row), max_length, max_length)
        row = row[:max_length - 1] + [EOS_ID]
      ids[i, :len(row)] = row
    return ids, ids != PAD_ID

  def decode(self, ids: Sequence[int]) -> str:
    """The words of one id row, up to its end-of-sequence or padding (unknowns as <unk>)."""
    words = []
    for i in np.asarray(ids).tolist():
      if i in (PAD_ID, EOS_ID):
        break
      words.append((SPECIALS + self.vocab)[i])
    return " ".join(words)

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab={self.vocab!r})"
