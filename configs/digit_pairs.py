"""The built-in text default: a DiT that draws two digits in the order a caption says (issue 16).

Each example is an 8 x 16 canvas with two scikit-learn digits side by side, captioned from a
small grammar ("a 3 to the left of a 7", "a 7 to the right of a 3", "3 then 7", ...; some
phrasing/pair combinations are held out of training: dit_jax/data/digit_pairs.py). No download.
The text encoder is a small T5 (2 layers, width 64, with learned absolute positions) trained
jointly with the DiT from the built-in word tokenizer (`config.model.text_vocab_size`); the DiT
reads it through PixArt-alpha's cross-attention blocks with adaLN-Zero on the timestep, predicts
the velocity v, and drops 10% of the captions for classifier-free guidance; 2,000 steps of 128
(7 min 46 s on the 2-core development CPU). Everything not set here is the digits default
(configs/digits.py).
Quality is measured on every run by dit_jax.pair_quality: a digit classifier on each half
must agree with the prompt, including prompts held out of training.

Launch:
  python -m dit_jax.train --config configs/digit_pairs.py --workdir workdirs/digit_pairs
  python -m dit_jax.sample --workdir workdirs/digit_pairs --prompt "a 3 to the left of a 7" \
      --num_samples 8 --grid workdirs/digit_pairs/grid.png
"""
import ml_collections

from dit_jax import config_files

MAX_LENGTH = 12  # tokens per caption (the longest has 9 words and the end token)
VOCAB_SIZE = 23  # the digit-pairs word tokenizer: 3 special tokens and 20 words


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the digit-pairs config; `arg="smoke"` gives a tiny, few-step variant for tests."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"configs/digit_pairs.py: unknown argument {arg!r}; use no argument or 'smoke'.")
  config = config_files.sibling(__file__, "digits", arg)
  # text_positions: learned absolute positions in the encoder. Without them the jointly trained
  # T5 stays a bag of words (its relative bias never learns), so the DiT cannot tell "a 3 to
  # the left of a 7" from "a 7 to the left of a 3": half the samples had the digits swapped.
  config.model.update(input_size=8, input_width=16, num_classes=1, block_type="cross_attention",
                      context_dim=64, context_length=MAX_LENGTH, text_vocab_size=VOCAB_SIZE,
                      text_encoder_layers=2, text_positions=True)
  # 4 x 4 patches (8 tokens) and steps of 128: on the 2-core CPU 4 x 4 trains 1.6x the images
  # of 2 x 2 patches in less time and doubled pair accuracy (docs/text.md). Batch 128 runs 1.3x
  # more images/s than 256 here (docs/benchmarks.md, "Batch size and the CPU compiler").
  # 2,000 steps: with text positions the grid scored 0.975 at step 1,000 of a 5,000-step run.
  config.model.patch_size = 4
  config.data.update(source="digit_pairs", name="digit_pairs", max_length=MAX_LENGTH, pair_seed=0)
  config.text = dict(tokenizer="digit_pairs", max_length=MAX_LENGTH, encoder="")
  # Velocity prediction: pair accuracy 0.48 against 0.35 with the paper's noise target, unguided
  # (docs/text.md). Guidance 4: every evaluation prompt right, held-out ones included (README).
  config.diffusion.predict_v = True
  config.sample.update(cfg_scale=4.0)
  if arg == "smoke":
    config.model.update(hidden_size=32, depth=2, num_heads=2, context_dim=32,
                        text_encoder_layers=1)
  else:  # the smoke variant keeps the digits smoke schedule
    config.update(global_batch_size=128, num_train_steps=2000, sample_every_steps=500,
                  checkpoint_every_steps=500)
  return config
