"""Scaling sweep on the digits default: patch size x model size at an equal step budget.

The paper's Figure 2/Table 4 question at toy scale: does sample quality improve with forward
Gflops, whether they come from width/depth or from smaller patches? On 8x8 inputs patch 4, 2
and 1 give 4, 16 and 64 tokens. The grid crosses patch size with three sizes (width 32 depth 2,
width 64 depth 2, width 64 depth 4; 16 features per head) and keeps 6 of the 9 models: the
whole patch-2 row (width and depth alone) plus the small and the large size at patch 4 and the
small one at patch 1 (patch 1 at width 64 costs more CPU time than the sweep's budget). They
span 0.12 to 3.4 forward Mflops per image (28x).

Every model trains for the same short schedule (STEPS steps, batch 128), sized so the whole
sweep (training, 500 DDIM samples per model, scoring) fits in about 25 minutes on a shared
2-core CPU; EMA decay 0.99 because 0.999 would still be mostly the initialization after so
few steps.

  python -m dit_jax.sweep --grid configs/sweeps/digits.py --report --report_dir docs/sweeps/digits
"""
STEPS = 300


def keep(values: dict) -> bool:
  """Drops patch 4 / width 64 / depth 2, and patch 1 beyond the smallest size."""
  patch, width, depth = (values[f"model.{k}"] for k in ("patch_size", "hidden_size", "depth"))
  return patch == 2 or width == 32 or (patch == 4 and depth == 4)


def get_sweep() -> dict:
  return dict(
      config="configs/digits.py",
      fixed={"num_train_steps": STEPS, "warmup_steps": 30, "ema_decay": 0.99,
             "log_every_steps": 10, "checkpoint_every_steps": STEPS, "sample_every_steps": 0},
      axes=[{"model.patch_size": [4, 2, 1]},
            {"model.hidden_size": [32, 64, 64], "model.num_heads": [2, 4, 4],
             "model.depth": [2, 2, 4]}],
      keep=keep,
      evaluation=dict(quality="digits", num_samples=500, sampler="ddim", num_sampling_steps=50),
  )
