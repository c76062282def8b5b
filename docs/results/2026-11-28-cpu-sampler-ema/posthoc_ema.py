"""python posthoc_ema.py WORKDIR DECAY NAME [key=value]: post-hoc EMA of the raw params saved every
50 steps (piecewise constant between snapshots), sampled and scored like sample_with_settings.py (100 videos, 10 per class)."""
import sys, json, time
import jax, numpy as np
from dit_jax import sample as S, checkpoint, sharding
from dit_jax import train_state as ts
w, decay, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
kv = dict(a.split("=") for a in sys.argv[4:])
mesh = sharding.create_mesh({"data": -1})
with checkpoint.create_manager(w, for_reading=True) as m:
  steps = sorted(m.all_steps())
last = steps[-1]
config = checkpoint.restore_config(w, last)
abstract = ts.abstract_params(config, mesh)
ema, total = None, 0.0
prev = 0
for s in steps:
  p = checkpoint.restore_params(w, abstract, step=s, items=("params",))["params"]
  # weight of the interval (prev, s] in an EMA at step `last`
  wt = decay ** (last - s) * (1 - decay ** (s - prev)) if prev else decay ** (last - s)
  ema = jax.tree.map(lambda a: wt * np.asarray(a, np.float64), p) if ema is None else \
        jax.tree.map(lambda e, a: e + wt * np.asarray(a, np.float64), ema, p)
  total += wt; prev = s
ema = jax.tree.map(lambda e: jax.numpy.asarray((e / total).astype(np.float32)), ema)
print("snapshots", len(steps), "total weight", total, flush=True)
if "compare" in kv:
  ref = checkpoint.restore_params(w, abstract, step=last, items=("ema_params",))["ema_params"]
  num = sum(float(np.sum((np.asarray(a) - np.asarray(b)) ** 2)) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(ref)))
  den = sum(float(np.sum(np.asarray(b) ** 2)) for b in jax.tree.leaves(ref))
  print("relative distance to built-in ema", (num / den) ** 0.5); sys.exit()
checkpoint.restore_ema_params = lambda *a, **k: (config, ema)
S.checkpoint.restore_ema_params = checkpoint.restore_ema_params
t = time.time()
q = S.sample_to_files(w, num_samples=100, output=f"{w}/ph_{name}.npz", labels=list(range(10)),
                      cfg_scale=float(kv.get("cfg_scale", 4)))
print("RESULT", name, decay, f"wall {time.time()-t:.0f}s", json.dumps({k: round(v, 3) for k, v in q.items()}), flush=True)
