"""python sample_with_settings.py WORKDIR NAME key=value...: sample 100 videos (10/class) as the CLI does,
with extra diffusion.sample kwargs (diffusion_scale, guidance_interval lo:hi, cfg_scale, sampler, num_steps, n)."""
import sys, json, time, functools
from dit_jax import sample as S, diffusion
w, name = sys.argv[1], sys.argv[2]
kv = dict(a.split("=") for a in sys.argv[3:])
extra = {}
if "diffusion_scale" in kv: extra["diffusion_scale"] = float(kv["diffusion_scale"])
if "guidance_interval" in kv: extra["guidance_interval"] = tuple(float(v) for v in kv["guidance_interval"].split(":"))
orig = diffusion.sample
S.diffusion.sample = functools.partial(orig, **extra)
n = int(kv.get("n", 100))
t = time.time()
q = S.sample_to_files(w, num_samples=n, output=f"{w}/x_{name}.npz", labels=list(range(10)),
                      cfg_scale=float(kv.get("cfg_scale", 4)), sampler=kv.get("sampler"),
                      num_steps=int(kv["num_steps"]) if "num_steps" in kv else None,
                      step=int(kv["step"]) if "step" in kv else None)
print("RESULT", name, kv, f"wall {time.time()-t:.0f}s", json.dumps({k: round(v, 3) for k, v in q.items()}), flush=True)
