"""Analytic DiT Gflops in the paper's convention, device peak FLOP/s, and MFU.

The paper counts "flops" as multiply-accumulates (MACs) of one forward pass for one image
(Table 4: DiT-XL/2 at 256 px = 118.64). The terms below reproduce every printed value of
the paper (12 variants of Table 4 to two decimals, XL/2 at 512 px = 524.6, and the block
designs at XL/2: in-context 119.4, cross-attention 137.6, adaLN 118.6, adaLN-Zero 118.6).
With T tokens (plus 2 for in-context; T = H/p * W/p, so non-square inputs count their own
grid), width D, depth N, mlp_ratio r:

- per block: linear layers T * (4 + 2r) * D^2 (qkv 3, out 1, MLP 2r), attention
  2 * T^2 * D (q k^T and attn v), and ELEMENTWISE_MACS * T * D (an elementwise term of the
  paper's counter: 3 MACs per token feature per block; it is the only term, among the natural
  candidates, that makes all 16 printed values round correctly, so we keep it);
- adaLN blocks: the modulation Linear, 6 D^2 (adaLN-Zero) or 4 D^2 (adaLN), once per image;
- cross-attention blocks: q and output projections 2 T D^2, k/v projections of the 2 context
  tokens 4 D^2, attention over them 4 T D;
- patch embedding T * p^2 * C * D and the final Linear T * D * p^2 * C_out.

Videos count per video, with tubelets of pt x p x p (p^2 becomes pt * p^2 above). With the
"factorized" attention layout a block attends within groups of K tokens instead of all T:
2 * T * K * D, K = the tokens of one frame (spatial blocks) or the temporal tokens at one
patch position (temporal blocks); depth counts both kinds, half each.

Text models (context_dim = E > 0) count L = context_length caption tokens (the padded length:
padded tokens are computed, then masked), with adaLN-Zero's 6 D^2 modulation per block:

- the caption MLP L * (E * D + D^2), once per image;
- "cross_attention" (PixArt-alpha) blocks add cross-attention to the L text tokens: q and output
  projections 2 T D^2, k/v projections 2 L D^2, attention 2 T L D;
- "mmdit" (SD3) blocks add the text stream's own weights: linear layers L (4 + 2r) D^2, its
  modulation 6 D^2 and the elementwise ELEMENTWISE_MACS * L * D; their attention is one joint
  attention over T + L tokens, 2 (T + L)^2 D in place of 2 T^2 D. The text stream is
  discarded after the last block, so that block's text output projection and MLP,
  (1 + 2r) L D^2, are not counted: XLA removes them from an unrolled model as dead code (under
  nn.scan every block runs them, wasted work that MFU does not credit).

Not counted (as in the paper): the timestep MLP, the final layer's adaLN Linear, embedding
lookups, norms, softmax and activations. Training FLOPs per image = 3 (fwd + bwd) x 2
(FLOPs per MAC) x dit_gflops.
"""
ELEMENTWISE_MACS = 3
ATTENTION_CONTEXT = 2  # [t_emb, y_emb] tokens of the in-context / cross-attention designs

# Dense bf16 peak FLOP/s per JAX device (datasheet values, without structured sparsity).
# Matched against jax.Device.device_kind by lowercase substring, first match wins.
# TPU v2/v3 expose each TensorCore as a device (half a chip); v4 and later one chip per device.
PEAK_BF16_FLOPS = (
    # cloud.google.com/tpu/docs/v6e: 918 TFLOP/s per chip.
    ("v6", 918e12),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s per chip ("TPU v5 lite" / "TPU v5e").
    ("v5 lite", 197e12),
    ("v5e", 197e12),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s per chip ("TPU v5" / "TPU v5p").
    ("v5", 459e12),
    # cloud.google.com/tpu/docs/v4: 275 TFLOP/s per chip.
    ("v4", 275e12),
    # cloud.google.com/tpu/docs/v3: 123 TFLOP/s per chip, 2 TensorCores (devices) per chip.
    ("v3", 61.5e12),
    # cloud.google.com/tpu/docs/v2: 45 TFLOP/s per chip, 2 TensorCores per chip.
    ("v2", 22.5e12),
    # NVIDIA H200 datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity (SXM) -> half dense;
    # H200 NVL 1,671 with sparsity.
    ("h200 nvl", 835.5e12),
    ("h200", 989.5e12),
    # NVIDIA H100 datasheet: BF16 1,979 (SXM) / 1,671 (NVL) / 1,513 (PCIe) TFLOPS with sparsity.
    ("h100 nvl", 835.5e12),
    ("h100 pcie", 756.5e12),
    ("h100", 989.5e12),
    # NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS dense (SXM and PCIe).
    ("a100", 312e12),
)


def _block_macs(tokens: int, width: int, mlp_ratio: float, block_type: str,
                attended: int | None = None, text: int | None = None) -> float:
  """MACs of one block over ``tokens`` tokens, each attending to ``attended`` (default all);
  ``text``: the caption length of a text model's block (None for class models)."""
  attended = tokens if attended is None else attended
  macs = (4 + 2 * mlp_ratio) * tokens * width ** 2 + 2 * tokens * attended * width
  macs += ELEMENTWISE_MACS * tokens * width
  if text is not None:  # both text designs are adaLN-Zero blocks
    macs += 6 * width ** 2
    if block_type == "cross_attention":
      macs += 2 * tokens * width ** 2 + 2 * text * width ** 2 + 2 * tokens * text * width
    else:  # mmdit (joint layout only): the text stream; attention over T + L, not T, tokens
      macs += (4 + 2 * mlp_ratio) * text * width ** 2 + 6 * width ** 2
      macs += ELEMENTWISE_MACS * text * width
      macs += 2 * ((tokens + text) ** 2 - tokens ** 2) * width
  elif block_type == "adaln_zero":
    macs += 6 * width ** 2
  elif block_type == "adaln":
    macs += 4 * width ** 2
  elif block_type == "cross_attention":
    macs += (2 * tokens * width ** 2 + 2 * ATTENTION_CONTEXT * width ** 2
             + 2 * ATTENTION_CONTEXT * tokens * width)
  return macs


def dit_gflops(model) -> float:
  """Forward Gflops (multiply-accumulates, 1e9) per image (per video) of a ``DiT``, paper
  convention."""
  tokens = model.num_tokens
  patch_features = model.temporal_patch_size * model.patch_size ** 2
  seq = tokens + (ATTENTION_CONTEXT if model.block_type == "in_context" else 0)
  text = model.context_length if model.context_dim else None
  block = lambda attended=None: _block_macs(seq, model.hidden_size, model.mlp_ratio,
                                            model.block_type, attended, text)
  if model.attention_layout == "factorized":
    frames = model.temporal_tokens
    macs = model.depth // 2 * (block(tokens // frames) + block(frames))
  else:
    macs = model.depth * block()
  macs += tokens * patch_features * model.in_channels * model.hidden_size
  macs += tokens * model.hidden_size * patch_features * model.out_channels
  if model.context_dim:  # the caption MLP
    macs += text * (model.context_dim + model.hidden_size) * model.hidden_size
  if model.context_dim and model.block_type == "mmdit":  # the last text stream ends at q, k, v
    macs -= (1 + 2 * model.mlp_ratio) * text * model.hidden_size ** 2
  return macs / 1e9


def peak_flops_per_device(device_kind: str) -> float | None:
  """Datasheet dense bf16 peak FLOP/s of one JAX device of this kind; None if unknown (CPU)."""
  kind = device_kind.lower()
  for key, peak in PEAK_BF16_FLOPS:
    if key in kind:
      return peak
  return None


def mfu(images_per_s: float, gflops: float, num_devices: int, device_kind: str) -> float | None:
  """Model FLOPs utilization of training: 3 x 2 x gflops x 1e9 x images/s over the peak.

  ``gflops`` is ``dit_gflops(model)``; returns None when the device kind has no known peak.
  """
  peak = peak_flops_per_device(device_kind)
  if peak is None:
    return None
  return 6 * gflops * 1e9 * images_per_s / (num_devices * peak)
