"""The PyTorch side of the side-by-side benchmark: diffusers' DiTTransformer2DModel, same work.

Times what `python -m dit_jax.bench` times, for the same config, batch and resolution, on one
GPU: a training step (bf16 autocast, SDPA attention, torch.compile, fused AdamW, EMA update, the
DiT loss = eps MSE + learned-variance VB term) or 250-step DDPM sampling with classifier-free
guidance (official batch convention; guidance on the first 3 output channels). Results are JSON
with the same field names as dit_jax.bench, and `--compare` prints our images/s over theirs:

  python -m dit_jax.bench --config configs/imagenet.py:variant=XL/2,res=256 \
      --batch_per_device 64 --steps 20 --json jax_train.json
  python -m dit_jax.bench_torch --config configs/imagenet.py:variant=XL/2,res=256 \
      --batch_per_device 64 --steps 20 --json torch_train.json --compare jax_train.json

Needs torch and diffusers (the `test` extra). JAX is used only on the CPU, for the Gflops
formula and the datasheet peak table of dit_jax.flops, so it never competes for the GPU.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before anything imports jax

import contextlib  # noqa: E402  (after the environment is set)
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dit_jax import bench, config_checks, flops  # noqa: E402

GUIDANCE_CHANNELS = 3  # the official forward_with_cfg guides only the first 3 output channels


class Tables:
  """The IDDPM/DiT linear-schedule tables (built in float64, used in float32), optionally respaced."""

  def __init__(self, device, num_steps: int = 1000, use_timesteps=None):
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    self.timestep_map = np.arange(1000)
    if use_timesteps is not None:  # respacing: beta_i = 1 - abar_{k_i} / abar_{k_(i-1)}
      keep = sorted(use_timesteps)
      prev = np.concatenate([[1.0], abar[keep][:-1]])
      betas, abar, self.timestep_map = 1.0 - abar[keep] / prev, abar[keep], np.array(keep)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    tables = dict(
        sqrt_abar=np.sqrt(abar), sqrt_1m_abar=np.sqrt(1.0 - abar),
        sqrt_recip_abar=np.sqrt(1.0 / abar), sqrt_recipm1_abar=np.sqrt(1.0 / abar - 1.0),
        post_logvar=np.log(np.append(post_var[1], post_var[1:])), log_betas=np.log(betas),
        coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        coef2=(1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar))
    for name, value in tables.items():
      setattr(self, name, torch.tensor(value, dtype=torch.float32, device=device))
    self.timestep_map = torch.tensor(self.timestep_map, device=device)
    self.num_timesteps = len(betas)

  def at(self, name, t):
    return getattr(self, name)[t].view(-1, 1, 1, 1)

  def p_mean_logvar(self, out, x_t, t):
    """Learned-range variance and the posterior mean through predicted x0 (no clipping)."""
    eps, v = out.chunk(2, dim=1)
    frac = (v + 1) / 2
    logvar = frac * self.at("log_betas", t) + (1 - frac) * self.at("post_logvar", t)
    x0 = self.at("sqrt_recip_abar", t) * x_t - self.at("sqrt_recipm1_abar", t) * eps
    return self.at("coef1", t) * x0 + self.at("coef2", t) * x_t, logvar


def spaced_timesteps(num_steps: int) -> list[int]:
  """IDDPM's space_timesteps(1000, str(num_steps)) for one section."""
  stride = (1000 - 1) / (num_steps - 1) if num_steps > 1 else 1
  return sorted({round(i * stride) for i in range(num_steps)})


def dit_loss(model, tables: Tables, x0, y, t=None, noise=None):
  """DiT's default training loss: MSE(eps) + VB (bits; eps stop-gradiented; decoder NLL at t=0).

  ``model(x_t, t, y).sample`` is NCHW with 2C channels; t and noise are drawn when not given.
  """
  if t is None:
    t = torch.randint(0, tables.num_timesteps, (x0.shape[0],), device=x0.device)
  if noise is None:
    noise = torch.randn_like(x0)
  x_t = tables.at("sqrt_abar", t) * x0 + tables.at("sqrt_1m_abar", t) * noise
  out = model(x_t, t, y).sample.float()
  eps, v = out.chunk(2, dim=1)
  mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
  mean, logvar = tables.p_mean_logvar(torch.cat([eps.detach(), v], 1), x_t, t)
  true_logvar = tables.at("post_logvar", t)
  true_mean = tables.at("coef1", t) * x0 + tables.at("coef2", t) * x_t
  kl = 0.5 * (-1.0 + logvar - true_logvar + torch.exp(true_logvar - logvar)
              + (true_mean - mean) ** 2 * torch.exp(-logvar))
  kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
  nll = -_discretized_log_likelihood(x0, mean, logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
  return (mse + torch.where(t == 0, nll, kl)).mean()


def _discretized_log_likelihood(x, mean, logvar):
  cdf = lambda z: 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))
  inv_std = torch.exp(-0.5 * logvar)
  cdf_plus, cdf_min = cdf(inv_std * (x - mean + 1 / 255)), cdf(inv_std * (x - mean - 1 / 255))
  log_plus = torch.log(cdf_plus.clamp(min=1e-12))
  log_1m_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
  log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
  return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_1m_min, log_delta))


def build_model(config, device):
  """diffusers' DiT with the architecture of config.model (learned sigma: 2C outputs)."""
  from diffusers import DiTTransformer2DModel  # pylint: disable=g-import-not-at-top
  kw = config_checks.model_kwargs(config.model.to_dict())
  c = kw.get("in_channels", 4)
  return DiTTransformer2DModel(
      num_attention_heads=kw["num_heads"], attention_head_dim=kw["hidden_size"] // kw["num_heads"],
      in_channels=c, out_channels=2 * c if kw.get("learn_sigma", True) else c,
      num_layers=kw["depth"], sample_size=kw["input_size"], patch_size=kw["patch_size"],
      num_embeds_ada_norm=kw.get("num_classes", 1000), norm_eps=1e-6).to(device)


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


def _time(fn, device, warmup: int, steps: int):
  """(seconds of the first call, per-call seconds of `steps` calls after `warmup` more)."""
  _sync(device)
  start = time.perf_counter()
  fn()
  _sync(device)
  first = time.perf_counter() - start
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    times.append(time.perf_counter() - start)
  return first, times


def run(config, mode, batch, steps, warmup, compile_mode, num_sampling_steps, cfg_scale, device):
  """Times one mode and returns a dict with dit_jax.bench's field names."""
  torch.manual_seed(config.seed)
  model = build_model(config, device)
  kw = config_checks.model_kwargs(config.model.to_dict())
  c, size, classes = kw.get("in_channels", 4), kw["input_size"], kw.get("num_classes", 1000)
  autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
              if kw.get("dtype", "float32") == "bfloat16" else contextlib.nullcontext())
  fwd = model if compile_mode == "none" else torch.compile(model, mode=compile_mode)
  x = torch.randn(batch, c, size, size, device=device)
  y = torch.randint(0, classes, (batch,), device=device)
  if mode == "train":
    tables = Tables(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                            weight_decay=config.weight_decay, fused=device.type == "cuda")
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())

    def step():
      with autocast:
        loss = dit_loss(fwd, tables, x, y)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1.0 - config.ema_decay)

    flop_per_image = 3 * 2
  else:
    tables = Tables(device, use_timesteps=spaced_timesteps(num_sampling_steps))
    model.eval()
    y2 = torch.cat([y, torch.full_like(y, classes)])

    @torch.no_grad()
    def step():
      z = torch.cat([x, x])
      for i in reversed(range(tables.num_timesteps)):
        t = torch.full((2 * batch,), i, device=device)
        with autocast:
          out = fwd(z, tables.timestep_map[t], y2).sample.float()
        g, rest = out[:, :GUIDANCE_CHANNELS], out[:, GUIDANCE_CHANNELS:]
        cond, uncond = g.chunk(2)
        half = uncond + cfg_scale * (cond - uncond)
        mean, logvar = tables.p_mean_logvar(torch.cat([torch.cat([half, half]), rest], 1), z, t)
        z = mean + (i > 0) * torch.exp(0.5 * logvar) * torch.randn_like(z)

    flop_per_image = num_sampling_steps * 2 * 2
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  first, times = _time(step, device, warmup, steps)
  gflops = bench.model_gflops(config)
  mean = sum(times) / len(times)
  kind = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
  peak = flops.peak_flops_per_device(kind)
  achieved = flop_per_image * gflops * 1e9 * batch / mean
  return dict(
      mode=mode, framework="pytorch", date=datetime.datetime.now(datetime.timezone.utc)
      .isoformat(timespec="seconds"), command=" ".join(["python -m dit_jax.bench_torch"] + sys.argv[1:]),
      model={k: str(v) for k, v in kw.items()}, batch_per_device=batch, global_batch_size=batch,
      timed_steps=steps, warmup_steps=warmup, compile_mode=compile_mode,
      compile_s=first - min(times), step_time_s=bench.summarize(times), images_per_s=batch / mean,
      images_per_s_per_device=batch / mean, model_gflops_per_image=gflops,
      tflops_per_s_per_device=achieved / 1e12, peak_tflops_per_device=peak and peak / 1e12,
      mfu=peak and achieved / peak,
      peak_memory_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
      versions=dict(python=platform.python_version(), torch=torch.__version__,
                    diffusers=_version("diffusers"), cuda=torch.version.cuda,
                    platform=device.type, device_kind=kind, device_count=1))


def _version(name):
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return metadata.version(name)


def define_flags() -> None:
  """Command-line flags (defined only when run as a program)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                  lock_config=False)
  flags.DEFINE_integer("batch_per_device", 8, "Images on the one device.")
  flags.DEFINE_integer("steps", 10, "Timed train steps (train) or sampling runs (sample).")
  flags.DEFINE_integer("warmup", 2, "Untimed calls after the first (compiling) one.")
  flags.DEFINE_enum("mode", "train", bench.MODES, "What to time.")
  flags.DEFINE_string("compile_mode", "default",
                      "torch.compile mode (default, max-autotune, ...) or 'none'.")
  flags.DEFINE_integer("num_sampling_steps", 250, "Sampler steps (sample mode).")
  flags.DEFINE_float("cfg_scale", 4.0, "Guidance scale (sample mode).")
  flags.DEFINE_string("json", None, "Also write the result as JSON to this file.")
  flags.DEFINE_string("compare", None, "A dit_jax.bench JSON of the same work: print its "
                      "images/s per device over ours.")
  flags.mark_flags_as_required(["config"])


def read_comparison(path: str | None) -> dict | None:
  """The dit_jax.bench result that ``--compare`` names, read before the run so that a missing or
  unreadable file stops the command at once rather than after minutes of compiling and timing."""
  if not path:
    return None
  try:
    with open(path) as fp:
      return json.load(fp)
  except (OSError, json.JSONDecodeError) as e:
    raise app.UsageError(f"--compare={path}: cannot read a dit_jax.bench JSON there ({e}). Run "
                         "`python -m dit_jax.bench ... --json FILE` first, or drop --compare.")


def main(argv: Any) -> None:
  del argv
  f = flags.FLAGS
  ours = read_comparison(f.compare)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  result = run(f.config, f.mode, f.batch_per_device, f.steps, f.warmup, f.compile_mode,
               f.num_sampling_steps, f.cfg_scale, device)
  print(bench.format_result(result))
  if ours:
    ratio = ours["images_per_s_per_device"] / result["images_per_s_per_device"]
    result["jax_over_torch"] = ratio
    print(f"dit_jax / PyTorch images/s per device: {ratio:.2f}x "
          f"({ours['images_per_s_per_device']:.1f} vs {result['images_per_s_per_device']:.1f})")
  bench.write_json(result, f.json)


if __name__ == "__main__":
  define_flags()
  app.run(main)
