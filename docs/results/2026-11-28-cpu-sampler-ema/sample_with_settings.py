"""python sample_with_settings.py WORKDIR NAME [key=value ...]: samples and scores videos as
`python -m dit_jax.sample` does (10 per class), passing extra keyword arguments to
`dit_jax.diffusion.sample`: diffusion_scale=C, guidance_interval=LO:HI; also cfg_scale (default
4), sampler, num_steps, step, n (videos, default 100). Writes WORKDIR/x_NAME.npz."""
import functools
import json
import sys
import time

from dit_jax import diffusion, sample

workdir, name = sys.argv[1], sys.argv[2]
kv = dict(a.split("=") for a in sys.argv[3:])
extra = {}
if "diffusion_scale" in kv:
  extra["diffusion_scale"] = float(kv["diffusion_scale"])
if "guidance_interval" in kv:
  extra["guidance_interval"] = tuple(float(v) for v in kv["guidance_interval"].split(":"))
sample.diffusion.sample = functools.partial(diffusion.sample, **extra)
start = time.time()
scores = sample.sample_to_files(
    workdir, num_samples=int(kv.get("n", 100)), output=f"{workdir}/x_{name}.npz",
    labels=list(range(10)), cfg_scale=float(kv.get("cfg_scale", 4)), sampler=kv.get("sampler"),
    num_steps=int(kv["num_steps"]) if "num_steps" in kv else None,
    step=int(kv["step"]) if "step" in kv else None)
print("RESULT", name, kv, f"wall {time.time() - start:.0f}s",
      json.dumps({k: round(v, 3) for k, v in scores.items()}), flush=True)
