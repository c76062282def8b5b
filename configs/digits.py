"""The built-in default: class-conditional DiT on scikit-learn's 8x8 handwritten digits.

Pixel space (8x8x1, values in [-1, 1]), 10 classes, Gaussian diffusion with a learned variance,
float32 everywhere (exact on CPU). Sized so the whole run finishes in minutes on a 2-core CPU.

Launch:
  python -m dit_jax.train --config configs/digits.py --workdir workdirs/digits
  python -m dit_jax.train --config configs/digits.py:smoke --workdir /tmp/smoke   # seconds, tests
  python -m dit_jax.train --config configs/digits.py --workdir workdirs/digits \
      --config.num_train_steps=500 --config.mesh.data=-1
"""
import ml_collections

from dit_jax import sharding


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the digits config; `arg="smoke"` gives a tiny, few-step variant for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---- Model and training hyperparameters, tuned for sample quality within the README's
  # ---- 10-minute budget on 2 CPU cores (docs/sampling.md has the measurements). Batch 256 runs
  # ---- 1.6x more images/s than 64 on that CPU; EMA 0.995 because 0.999 still carries the early
  # ---- weights after 1600 steps (0.999^1600 = 0.2).
  config.model = dict(
      input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4, num_heads=4,
      mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True,
      dtype="float32", param_dtype="float32", attention_impl="auto",
      pos_embed="sincos")  # "rope" / "sincos+rope": rotary positions (docs/model.md)
  config.num_train_steps = 1600
  config.global_batch_size = 256
  config.learning_rate = 2e-3
  config.lr_schedule = "cosine"  # "constant" | "cosine" | "linear" (decay after warmup)
  config.end_learning_rate_factor = 0.1
  config.warmup_steps = 100
  config.weight_decay = 0.0
  config.weight_decay_mask = "matrices"  # with decay > 0: kernels only ("all", "none")
  config.grad_clip_norm = 1.0
  config.ema_decay = 0.995
  # ---- End of the tuned block.

  config.optimizer = "adamw"  # or "muon": Muon on the hidden kernels (dit_jax/muon.py)
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999

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
  config.data = dict(source="digits", name="digits", data_dir="", split="train", image_size=8,
                     flip=False, num_workers=0, latent_scale=1.0, vae="",
                     text_cache="")  # a prompt-embedding cache: caption i for example i
  # No guidance by default (the samples reach the quality target without it); with cfg_scale > 1,
  # "all" guides the eps channel only (the official 3-channel rule would also guide the variance).
  config.sample = dict(sampler="ddpm", num_sampling_steps=250, cfg_scale=1.0, guidance="all")

  # FID/sFID/IS/precision/recall during training (dit_jax.evaluation): off for the digits, which
  # keep their own classifier metrics (eval/accuracy, eval/fd); see configs/imagenet.py.
  config.eval = dict(every_steps=0, num_samples=1000, reference="", inception_weights="",
                     sampler="ddpm", num_sampling_steps=250, cfg_scale=1.0, guidance="all",
                     batch_size=0, seed=0)

  config.mesh = dict(data=-1, fsdp=1, sequence=1, tensor=1,
                     dcn_data=1, dcn_fsdp=1, dcn_sequence=1, dcn_tensor=1)
  config.logical_axis_rules = sharding.DEFAULT_LOGICAL_AXIS_RULES

  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.keep_period = 0  # also keep every checkpoint whose step is a multiple of this (0: off)
  config.init_from = ""  # workdir or checkpoints/ dir of another run: start from its weights
  config.init_from_step = -1  # -1: its latest step
  config.log_every_steps = 100
  config.sample_every_steps = 800  # EMA sample grid + digits quality to TensorBoard, PNG (0: off)
  config.sample_grid_steps = 50  # sampling steps used for that grid (respaced)
  # Persistent compilation cache (dit_jax.compile_cache): "" = off; on a pod, one gs:// path
  # shared by all hosts, so a restart loads the compiled step instead of compiling it again.
  config.compilation_cache_dir = ""
  config.profile_steps = 0  # >0: trace this many steps with the JAX profiler after warm-up

  if arg == "smoke":
    config.model.update(hidden_size=32, depth=2, num_heads=2)
    config.num_train_steps = 20
    config.global_batch_size = 16
    config.warmup_steps = 5
    config.lr_schedule = "constant"
    config.checkpoint_every_steps = 10
    config.log_every_steps = 5
    config.sample_every_steps = 0
    config.sample_grid_steps = 5
  elif arg:
    raise ValueError(f"configs/digits.py: unknown argument {arg!r}; use no argument or 'smoke'.")
  return config
