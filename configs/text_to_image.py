"""Text-to-image DiT at scale: the ImageNet recipe over SD-VAE latents, conditioned on captions
encoded once ahead of training into a prompt-embedding cache (the PixArt-alpha / SD3 path).

Caption i of the cache belongs to example i of the data source (`config.data.text_cache`;
docs/text.md). The cache's meta.json sets what must agree with it: the model's `context_dim` and
`context_length`, and `config.text` (encoder, tokenizer, max_length), so that `dit_jax.sample
--prompts` encodes prompts with the encoder training saw. The DiT reads the caption through
PixArt-alpha's cross-attention blocks (`block=cross_attention`) or SD3's MM-DiT blocks
(`block=mmdit`); 10% of the captions are dropped for classifier-free guidance. Flips are off:
captions may say left and right. Everything else is configs/imagenet.py.

`arg` is a comma-separated list of `key=value` (and the bare word `smoke`):
  text_cache=DIR          the prompt-embedding cache (required; local or gs://)
  block=cross_attention   or mmdit
  variant=XL/2, res=256, source=latents   as configs/imagenet.py (imagefolder, tfds)
  smoke                   a tiny model, a few steps, for tests

Launch (captions beside the images as <image>.txt; every host of a pod runs the train command):
  python -m dit_jax.data.precompute_text --image_folder /data/images/train \\
      --encoder google/flan-t5-xl --output gs://BUCKET/captions-t5xl --max_length 120
  python -m dit_jax.train --config configs/text_to_image.py:text_cache=gs://BUCKET/captions-t5xl,source=imagefolder \\
      --workdir gs://BUCKET/t2i-xl2 --config.data.data_dir=/data/images --config.data.vae=VAE_DIR
"""
import ml_collections

from dit_jax import config_files

BLOCKS = ("cross_attention", "mmdit")
_DEFAULTS = dict(text_cache="", block="cross_attention", variant="XL/2", res="256",
                 source="latents")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the text-to-image config for `arg` (see the module docstring)."""
  args = config_files.parse_arg(arg, _DEFAULTS, "text_to_image")
  if not args["text_cache"]:
    raise ValueError("configs/text_to_image.py: pass text_cache=DIR, a prompt-embedding cache "
                     "(python -m dit_jax.data.precompute_text).")
  if args["block"] not in BLOCKS:
    raise ValueError(f"configs/text_to_image.py: block={args['block']!r} is not one of {BLOCKS}.")
  from dit_jax.data import text_cache  # local: the config module stays importable without grain
  meta = text_cache.read_meta(args["text_cache"])
  config = config_files.sibling(
      __file__, "imagenet", ",".join(f"{k}={args[k]}" for k in ("variant", "res", "source"))
      + (",smoke" if args["smoke"] else ""))
  config.model.update(num_classes=1, block_type=args["block"], context_dim=meta["d_model"],
                      context_length=meta["max_length"])
  config.data.update(name="text_to_image", text_cache=args["text_cache"], flip=False)
  config.text = text_cache.text_settings(meta)
  return config
