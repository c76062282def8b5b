"""DiT on ImageNet in SD-VAE latent space: the paper's recipe (Peebles & Xie 2023, Sec. 4).

AdamW lr 1e-4 constant, weight decay 0, no warmup, no clipping, global batch 256, EMA 0.9999,
horizontal flips, learned sigma, T = 1000 linear betas, latents = VAE posterior sample x 0.18215.
bf16 compute with float32 parameters; parameters and optimizer state sharded over `fsdp`.

`arg` is a comma-separated list of `key=value` (and the bare word `smoke`):
  variant=XL/2   one of S|B|L|XL / 2|4|8 (default XL/2)
  res=256        image resolution, 256 or 512 (latents are res/8 on a side, 4 channels)
  source=latents data source: latents (precomputed, fastest), tfds or imagefolder (VAE on the fly)
  smoke          a tiny model, a few steps, for tests (combine with the others)

Launch (every host of a TPU pod runs the same command; jax.distributed starts itself):
  python -m dit_jax.train --config configs/imagenet.py:variant=XL/2,res=256 \
      --workdir gs://BUCKET/dit-xl2-256 --config.data.data_dir=gs://BUCKET/latents256
  (the latent cache is read from the bucket, or from a local copy on each host; docs/data.md)
  # 512 px fine-tune from the 256 px run (the position table is rebuilt for the new grid):
  python -m dit_jax.train --config configs/imagenet.py:variant=XL/2,res=512 \
      --workdir gs://BUCKET/dit-xl2-512 --config.init_from=gs://BUCKET/dit-xl2-256
"""
import ml_collections

from dit_jax import config_files, sharding

VAE_LATENT_SCALE = 0.18215
VAE_DOWNSAMPLE = 8
LATENT_CHANNELS = 4
RESOLUTIONS = (256, 512)
SOURCES = ("latents", "tfds", "imagefolder")
_DEFAULTS = dict(variant="XL/2", res="256", source="latents")


def parse_arg(arg: str | None) -> dict:
  """Parses `key=value,...,smoke` into a dict (values are strings; `smoke` -> "1")."""
  return config_files.parse_arg(arg, _DEFAULTS, "imagenet")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the ImageNet config for `arg` (see the module docstring)."""
  args = parse_arg(arg)
  res = int(args["res"])
  if res not in RESOLUTIONS and not args["smoke"]:
    raise ValueError(f"configs/imagenet.py: res={res} is not one of {RESOLUTIONS}.")
  if args["source"] not in SOURCES:
    raise ValueError(f"configs/imagenet.py: source={args['source']!r} is not one of {SOURCES}.")

  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---- Model and training hyperparameters: the paper's recipe.
  config.model = dict(
      variant=args["variant"], input_size=res // VAE_DOWNSAMPLE, in_channels=LATENT_CHANNELS,
      mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True,
      block_type="adaln_zero", dtype="bfloat16", param_dtype="float32",
      remat_policy="none", scan_blocks=False, attention_impl="auto",
      pos_embed="sincos")  # "rope" / "sincos+rope": rotary positions (docs/model.md)
  config.num_train_steps = 400_000
  config.global_batch_size = 256
  config.learning_rate = 1e-4
  config.lr_schedule = "constant"
  config.end_learning_rate_factor = 1.0
  config.warmup_steps = 0
  config.weight_decay = 0.0
  config.weight_decay_mask = "matrices"  # with decay > 0: kernels only ("all", "none")
  config.grad_clip_norm = 0.0  # 0: no clipping
  config.ema_decay = 0.9999
  # ---- End of the recipe block.

  config.optimizer = "adamw"  # or "muon": Muon on the hidden kernels (dit_jax/muon.py)
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_mu_dtype = "float32"  # "bfloat16": half the first moment's memory and traffic

  config.diffusion = dict(
      objective="gaussian", noise_schedule="linear", diffusion_steps=1000, learn_sigma=True,
      predict_xstart=False, sigma_small=False, rescale_learned_sigmas=False, use_kl=False,
      timestep_respacing="",
      # Gaussian only: predict the velocity v instead of the noise (not in the paper's code).
      predict_v=False,
      # Gaussian only: Min-SNR-gamma loss weighting (0 = off, the paper's loss; 5 = Hang et al.).
      min_snr_gamma=0.0,
      # Flow matching only (objective="flow"): t ~ uniform or logit-normal, SD3's time shift.
      t_sampling="uniform", logit_mean=0.0, logit_std=1.0, time_shift=1.0)
  config.data = dict(
      source=args["source"], name="imagenet2012", data_dir="", split="train", image_size=res,
      flip=True, num_workers=8, latent_scale=VAE_LATENT_SCALE, vae="",
      text_cache="")  # a prompt-embedding cache: configs/text_to_image.py
  # guidance "official": CFG on output channels 0..2, as the released code (and its FIDs) do.
  config.sample = dict(sampler="ddpm", num_sampling_steps=250, cfg_scale=1.5, guidance="official")

  # FID during training (off: every_steps=0). The usual choice is FID-10K every 50K steps against
  # ADM's reference batch, without guidance as in the paper's scaling plots:
  #   --config.eval.every_steps=50000 --config.eval.reference=VIRTUAL_imagenet256_labeled.npz
  # (latent samples are decoded with config.data.vae; eval/fid, eval/sfid, eval/is,
  # eval/precision and eval/recall go to TensorBoard).
  config.eval = dict(every_steps=0, num_samples=10_000, reference="", inception_weights="",
                     sampler="ddpm", num_sampling_steps=250, cfg_scale=1.0, guidance="official",
                     batch_size=0, seed=0)

  # Parameters, EMA and Adam state sharded over all chips (fsdp=-1). For XL/2 the compiler's
  # estimates favour it over pure data parallel (data=-1, fsdp=1) on v5p-128 and v5e-16, and
  # over FSDP in 4-chip groups (data=-1, fsdp=4) on v5p-128 (a tie on v5e-16): see
  # docs/benchmarks.md, "TPU mesh defaults (issue 14 item 5)".
  config.mesh = dict(data=1, fsdp=-1, sequence=1, tensor=1,
                     dcn_data=1, dcn_fsdp=1, dcn_sequence=1, dcn_tensor=1)
  config.logical_axis_rules = sharding.DEFAULT_LOGICAL_AXIS_RULES

  config.checkpoint_every_steps = 10_000
  config.keep_checkpoints = 3
  config.keep_period = 100_000
  config.init_from = ""
  config.init_from_step = -1
  config.log_every_steps = 100
  config.sample_every_steps = 50_000
  config.sample_grid_steps = 50
  # Persistent compilation cache (dit_jax.compile_cache): "" = off; on a pod, one gs:// path
  # shared by all hosts, so a restart loads the compiled step instead of compiling it again.
  config.compilation_cache_dir = ""
  config.profile_steps = 5

  if args["smoke"]:
    del config.model["variant"]
    config.model.update(input_size=8, patch_size=2, hidden_size=32, depth=2,
                        num_heads=2, num_classes=10, dtype="float32")
    config.data.update(image_size=8 * VAE_DOWNSAMPLE, num_workers=0)
    config.global_batch_size = 16
    config.num_train_steps = 4
    config.mesh.update(data=-1, fsdp=1)
    config.checkpoint_every_steps = 2
    config.keep_period = 0
    config.log_every_steps = 1
    config.sample_every_steps = 0
    config.profile_steps = 0
  return config
