"""Scaling sweep on the digits default: patch size x width x depth at an equal step budget.

The paper's Figure 2/Table 4 question at toy scale: does sample quality improve with forward
Gflops, whether they come from width/depth or from smaller patches? On 8x8 inputs patch 4 and 2
give 4 and 16 tokens. The grid crosses patch size with four sizes (width 64 or 128, depth 2 or
4; 4 heads) and keeps 6 of the 8 models: the whole patch-2 row (width and depth alone; its
largest model is the default) plus the smallest and the largest size at patch 4. They span
0.45 to 13.3 forward Mflops per image (30x).

Every model trains with the default's recipe (batch 256, AdamW 2e-3, cosine decay) for STEPS
steps, 3/4 of the default's, so the whole sweep (training, 500 DDIM-50 samples per model,
scoring) takes about 20 minutes on a shared 2-core CPU; EMA decay 0.99 to suit the shorter run.

  python -m dit_jax.sweep --grid configs/sweeps/digits.py --report --report_dir docs/sweeps/digits
"""
STEPS = 1200


def keep(values: dict) -> bool:
  """All of patch 2; at patch 4 only the smallest (w64 d2) and the largest (w128 d4) size."""
  patch, width, depth = (values[f"model.{k}"] for k in ("patch_size", "hidden_size", "depth"))
  return patch == 2 or (width, depth) in ((64, 2), (128, 4))


def get_sweep() -> dict:
  return dict(
      config="configs/digits.py",
      fixed={"num_train_steps": STEPS, "warmup_steps": 100, "ema_decay": 0.99,
             "log_every_steps": 20, "checkpoint_every_steps": STEPS, "sample_every_steps": 0},
      axes=[{"model.patch_size": [4, 2]},
            {"model.hidden_size": [64, 64, 128, 128], "model.num_heads": [4, 4, 4, 4],
             "model.depth": [2, 4, 2, 4]}],
      keep=keep,
      evaluation=dict(quality="digits", num_samples=500, sampler="ddim", num_sampling_steps=50),
  )
