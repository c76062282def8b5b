"""Latent video DiT at scale: the ImageNet recipe over spacetime patches of SD-VAE video latents.

Frames are encoded one by one by the SD-VAE (as Latte does): 256 px frames give 32x32x4 latents,
so 16 frames at patch 2 and temporal patch 1 are 16 x 256 = 4,096 tokens per video. Everything
not set here is configs/imagenet.py (AdamW 1e-4, EMA 0.9999, bf16 compute, learned sigma,
parameters sharded over fsdp); per-block rematerialization and scanned blocks are on because a
video is 16x an image's tokens.

`arg` is a comma-separated list of `key=value` (and the bare word `smoke`):
  variant=XL/2     one of S|B|L|XL / 2|4|8 (default XL/2)
  frames=16        frames per clip
  res=256          frame resolution (latents are res/8 on a side)
  pt=1             temporal patch size (frames per tubelet; must divide frames)
  layout=joint     "joint" (full spacetime attention) or "factorized" (Latte's spatial/temporal)
  source=latents   latents (a per-frame latent cache of a video folder: precompute_latents
                   --source videofolder) or videofolder (frames encoded on the fly: set data.vae)
  smoke            a tiny model, a few steps, for tests

Launch (a pod: every host runs the same command), and the ahead-of-time check of a slice:
  python -m dit_jax.train --config configs/video.py:variant=XL/2,frames=16 \\
      --workdir gs://BUCKET/video-xl2 --config.data.data_dir=gs://BUCKET/video-latents
  python -m dit_jax.aot --config configs/video.py:variant=XL/2,frames=16 --topology v5p:4x4x4
"""
import ml_collections

from dit_jax import config_files

LAYOUTS = ("joint", "factorized")
SOURCES = ("latents", "videofolder")
_DEFAULTS = dict(variant="XL/2", frames="16", res="256", pt="1", layout="joint", source="latents")


def parse_arg(arg: str | None) -> dict:
  """Parses `key=value,...,smoke` into a dict of strings (`smoke` -> "1")."""
  out = config_files.parse_arg(arg, _DEFAULTS, "video")
  if out["layout"] not in LAYOUTS:
    raise ValueError(f"configs/video.py: layout={out['layout']!r} is not one of {LAYOUTS}.")
  if out["source"] not in SOURCES:
    raise ValueError(f"configs/video.py: source={out['source']!r} is not one of {SOURCES}.")
  return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the latent video config for `arg` (see the module docstring)."""
  args = parse_arg(arg)
  config = config_files.sibling(__file__, "imagenet", f"variant={args['variant']},res={args['res']}"
                                + (",smoke" if args["smoke"] else ""))
  frames, pt = int(args["frames"]), int(args["pt"])
  config.model.update(num_frames=frames, temporal_patch_size=pt, attention_layout=args["layout"],
                      remat_policy="nothing_saveable", scan_blocks=True)
  config.data.update(source=args["source"], name="video", num_frames=frames, frame_stride=1)
  config.global_batch_size = 64
  config.sample_every_steps = 0  # latent videos need the VAE decoder: use dit_jax.sample
  if args["smoke"]:
    config.model.update(num_frames=4 if frames == 16 else frames, remat_policy="none",
                        scan_blocks=False)
    config.data.num_frames = config.model.num_frames
    config.global_batch_size = 8
  return config
