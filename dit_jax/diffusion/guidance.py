"""Classifier-free guidance for any model_fn(x, t, y=..., **kwargs).

The wrapper runs the model once on a doubled batch: the first half with the labels, the second
with the null label (``num_classes``, the extra row of DiT's label table), and returns
uncond + s * (cond - uncond) on the guided channels and the conditional output elsewhere.

- Official convention (``guidance_channels=3``): the released DiT code guides only output
  channels 0..2 (of the 4 eps channels of a latent model; the paper's numbers use this).
- ``guidance_channels=None`` guides all C prediction channels (eps or velocity), the standard
  recipe; a learned variance (channels C..2C-1) is never guided.
- ``guidance_interval=(lo, hi)`` applies guidance only where lo <= t <= hi, with t the timestep
  the model sees (0..999 for Gaussian diffusion, t * time_scale for flow matching; both put
  noise near 1000); elsewhere the conditional output is used (Kynkäänniemi et al. 2024).
"""
import jax.numpy as jnp

LABEL_KWARG = "y"
# Per-example keyword arguments besides the labels (a text model's caption): doubled with the
# batch; the model itself replaces the caption by its null text where y is the null label.
PER_EXAMPLE_KWARGS = ("context", "context_mask")
OFFICIAL_GUIDANCE_CHANNELS = 3
# Guidance conventions by name (config.sample.guidance, `dit_jax.sample --guidance`) -> the
# ``guidance_channels`` argument: the released code's 3 channels, or every prediction channel.
GUIDANCE_MODES = {"official": OFFICIAL_GUIDANCE_CHANNELS, "all": None}


def apply_guidance(cond, uncond, scale, channels):
  """uncond + scale * (cond - uncond) on the first ``channels`` channels, ``cond`` on the rest.

  ``scale`` is a scalar or broadcasts against the batch (e.g. shape (B, 1, 1, 1)).
  """
  guided = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
  return jnp.concatenate([guided, cond[..., channels:]], axis=-1)


def guided_model_fn(model_fn, cfg_scale, null_label, guidance_channels=OFFICIAL_GUIDANCE_CHANNELS,
                    guidance_interval=None):
  """Wraps ``model_fn`` with classifier-free guidance (scale, null label and interval may be traced).

  The wrapped function takes the same arguments; ``model_kwargs`` must hold the labels as ``y``.
  PER_EXAMPLE_KWARGS (a caption) are doubled with the batch; other keyword arguments (e.g.
  parameters) are passed unchanged to the doubled-batch call.
  """
  def fn(x, t, **kwargs):
    if LABEL_KWARG not in kwargs:
      raise ValueError(f"classifier-free guidance needs the labels in model_kwargs[{LABEL_KWARG!r}].")
    y = kwargs.pop(LABEL_KWARG)
    batch = x.shape[0]
    t = jnp.broadcast_to(t, (batch,))
    y_null = jnp.full_like(y, null_label)
    for key in PER_EXAMPLE_KWARGS:
      if key in kwargs:
        kwargs[key] = jnp.concatenate([kwargs[key], kwargs[key]])
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                   **{LABEL_KWARG: jnp.concatenate([y, y_null])}, **kwargs)
    cond, uncond = out[:batch], out[batch:]
    scale = jnp.asarray(cfg_scale, jnp.float32)
    if guidance_interval is not None:
      lo, hi = guidance_interval
      inside = (t >= lo) & (t <= hi)
      scale = jnp.where(inside, scale, 1.0).reshape((batch,) + (1,) * (x.ndim - 1))
    channels = x.shape[-1] if guidance_channels is None else guidance_channels
    return apply_guidance(cond, uncond, scale, channels)
  return fn
