"""Parity of DiT (Flax) with diffusers' DiTTransformer2DModel (PyTorch), an independent port.

A tiny diffusers model gets random weights; they are renamed into the official DiT state-dict
key names (the inverse of diffusers' scripts/convert_dit_to_diffusers.py) and converted with
``params_from_official``. Outputs must agree to ~1e-5 in float32 on CPU, for the unrolled and
the scanned block layouts, and ``forward_with_cfg`` must equal the official guidance formula
applied to diffusers' outputs.

Two diffusers conventions differ from the official code and are aligned in the reference:
- its timestep features use frequencies exp(-ln(1e4) i / (half - 1)) (downscale_freq_shift=1);
  the official code divides by half, so the reference sets downscale_freq_shift = 0;
- its per-block LayerNorm eps defaults to 1e-5; the official (and DiT pipeline) value is 1e-6.
diffusers holds a copy of the timestep/label embedders in every block (all copies equal) and
returns NCHW with the learned-sigma channels [eps, v] last, like the official layout.
"""
import jax
import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from dit_jax.convert import params_from_official
from dit_jax.models.dit import DiT

HEADS, HEAD_DIM, DEPTH, CLASSES, SIZE, PATCH, CHANNELS = 2, 16, 2, 10, 8, 2, 4
# Outputs are O(1..8); the float32 timestep arguments t*f near t=1000 have an ulp of 6e-5, so the
# two libraries' sin/cos/exp roundings give differences up to ~6e-5 there (5.7e-5 measured on one
# CPU, 3e-5 on another), ~1e-5 at small t: samples at t >= 500 get LATE_ATOL.
ATOL = 5e-5
LATE_ATOL = 1e-4


def _diffusers_model() -> DiTTransformer2DModel:
  torch.manual_seed(0)
  model = DiTTransformer2DModel(
      num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=CHANNELS,
      out_channels=2 * CHANNELS, num_layers=DEPTH, sample_size=SIZE, patch_size=PATCH,
      num_embeds_ada_norm=CLASSES, norm_eps=1e-6).eval()
  with torch.no_grad():
    for p in model.parameters():  # random everywhere (diffusers zero-inits nothing we rely on)
      p.copy_(torch.randn_like(p) * 0.2)
    first = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks:
      block.norm1.emb.load_state_dict(first.state_dict())  # one shared embedder, as official
      block.norm1.emb.time_proj.downscale_freq_shift = 0  # official frequencies (see docstring)
  return model


def _official_state_dict(model: DiTTransformer2DModel) -> dict:
  """diffusers names -> official DiT names (inverse of diffusers' conversion script)."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  emb = "transformer_blocks.0.norm1.emb."
  out = {
      "pos_embed": model.pos_embed.pos_embed.detach().float().numpy(),
      "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
      "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
      "t_embedder.mlp.0.weight": sd[emb + "timestep_embedder.linear_1.weight"],
      "t_embedder.mlp.0.bias": sd[emb + "timestep_embedder.linear_1.bias"],
      "t_embedder.mlp.2.weight": sd[emb + "timestep_embedder.linear_2.weight"],
      "t_embedder.mlp.2.bias": sd[emb + "timestep_embedder.linear_2.bias"],
      "y_embedder.embedding_table.weight": sd[emb + "class_embedder.embedding_table.weight"],
  }
  for ours, theirs in (("final_layer.linear", "proj_out_2"),
                       ("final_layer.adaLN_modulation.1", "proj_out_1")):
    for leaf in ("weight", "bias"):
      out[f"{ours}.{leaf}"] = sd[f"{theirs}.{leaf}"]
  for i in range(DEPTH):
    src = f"transformer_blocks.{i}."
    for leaf in ("weight", "bias"):
      out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate(
          [sd[f"{src}attn1.to_{n}.{leaf}"] for n in "qkv"], axis=0)
      for ours, theirs in (("attn.proj", "attn1.to_out.0"), ("mlp.fc1", "ff.net.0.proj"),
                           ("mlp.fc2", "ff.net.2"), ("adaLN_modulation.1", "norm1.linear")):
        out[f"blocks.{i}.{ours}.{leaf}"] = sd[f"{src}{theirs}.{leaf}"]
  return out


@pytest.fixture(scope="module")
def reference():
  model = _diffusers_model()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, CHANNELS, SIZE, SIZE)).astype(np.float32)
  t = np.array([0, 999, 500, 17])
  y = np.array([3, 9, CLASSES, 0])  # includes the null class

  def run(x, t, y):
    with torch.no_grad():
      out = model(torch.from_numpy(x), timestep=torch.from_numpy(t),
                  class_labels=torch.from_numpy(y)).sample
    return out.numpy().transpose(0, 2, 3, 1)  # NCHW -> NHWC

  return dict(state=_official_state_dict(model), x=x, t=t, y=y, run=run)


def _flax(scan: bool) -> DiT:
  return DiT(input_size=SIZE, patch_size=PATCH, in_channels=CHANNELS, hidden_size=HEADS * HEAD_DIM,
             depth=DEPTH, num_heads=HEADS, num_classes=CLASSES, scan_blocks=scan)


@pytest.mark.parametrize("scan", [False, True])
def test_matches_diffusers(reference, scan):
  model = _flax(scan)
  params = params_from_official(reference["state"], model)
  x_nhwc = reference["x"].transpose(0, 2, 3, 1)
  ours = jax.jit(model.apply)({"params": params}, x_nhwc, reference["t"], reference["y"])
  want = reference["run"](reference["x"], reference["t"], reference["y"])
  assert ours.shape == want.shape == (4, SIZE, SIZE, 2 * CHANNELS)
  for i, t in enumerate(reference["t"]):
    np.testing.assert_allclose(np.asarray(ours[i]), want[i], atol=LATE_ATOL if t >= 500 else ATOL,
                               rtol=0, err_msg=f"sample {i} at t={t}")


@pytest.mark.parametrize("guidance_channels", [3, None])
def test_forward_with_cfg_matches_official_formula(reference, guidance_channels):
  model = _flax(False)
  params = params_from_official(reference["state"], model)
  x, t = reference["x"], reference["t"]
  y = np.array([3, 9, CLASSES, CLASSES])  # [conditional half; null half]
  scale = 4.0
  cfg = jax.jit(lambda p, *a: model.apply(p, *a, guidance_channels=guidance_channels,
                                           method=DiT.forward_with_cfg))
  ours = cfg({"params": params}, x.transpose(0, 2, 3, 1), t, y, scale)
  # Official forward_with_cfg: first half of x duplicated, guidance on channels [:g].
  out = reference["run"](np.concatenate([x[:2], x[:2]]), t, y)
  g = out.shape[-1] if guidance_channels is None else guidance_channels
  cond, uncond = out[:2, ..., :g], out[2:, ..., :g]
  guided = uncond + scale * (cond - uncond)
  want = np.concatenate([np.concatenate([guided, guided]), out[..., g:]], axis=-1)
  # uncond + s (cond - uncond) amplifies the per-output tolerance by up to 1 + 2 s.
  np.testing.assert_allclose(np.asarray(ours), want, atol=(1 + 2 * scale) * ATOL, rtol=0)
