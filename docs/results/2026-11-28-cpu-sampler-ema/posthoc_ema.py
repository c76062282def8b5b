"""python posthoc_ema.py WORKDIR DECAY NAME [compare=1]: the EMA with DECAY at the last saved step,
averaged after the fact from the raw weights of every checkpoint (taken as constant between
saves), then sampled and scored like sample_with_settings.py (100 videos, 10 per class, guidance
4; writes WORKDIR/ph_NAME.npz). compare=1 instead prints its relative L2 distance to the
checkpoint's own EMA (meaningful when DECAY is the run's ema_decay)."""
import json
import sys
import time

import jax
import numpy as np

from dit_jax import checkpoint, sample, sharding
from dit_jax import train_state as ts

workdir, decay, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
kv = dict(a.split("=") for a in sys.argv[4:])
with checkpoint.create_manager(workdir, for_reading=True) as manager:
  steps = sorted(manager.all_steps())
last = steps[-1]
config = checkpoint.restore_config(workdir, last)
abstract = ts.abstract_params(config, sharding.create_mesh({"data": -1}))


def read(step, item):
  return checkpoint.restore_params(workdir, abstract, step=step, items=(item,))[item]


# The weights saved at step s stand for the interval (previous save, s]; the first save also
# stands for everything before it.
weights = [decay ** (last - s) * (1 - decay ** (s - prev)) if prev else decay ** (last - s)
           for prev, s in zip([0] + steps[:-1], steps)]


def average(*leaves):
  return np.float32(sum(w * np.float64(a) for w, a in zip(weights, leaves)) / sum(weights))


ema = jax.tree.map(average, *[read(s, "params") for s in steps])
print("snapshots", len(steps), "total weight", sum(weights), flush=True)
if "compare" in kv:
  ref = jax.tree.leaves(read(last, "ema_params"))
  num = sum(float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))
            for a, b in zip(jax.tree.leaves(ema), ref))
  den = sum(float(np.sum(np.asarray(b) ** 2)) for b in ref)
  print("relative distance to built-in ema", (num / den) ** 0.5)
  sys.exit()
ema = jax.tree.map(jax.numpy.asarray, ema)
checkpoint.restore_ema_params = lambda *args, **kwargs: (config, ema)
start = time.time()
scores = sample.sample_to_files(workdir, num_samples=100, output=f"{workdir}/ph_{name}.npz",
                                labels=list(range(10)), cfg_scale=float(kv.get("cfg_scale", 4)))
print("RESULT", name, decay, f"wall {time.time() - start:.0f}s",
      json.dumps({k: round(v, 3) for k, v in scores.items()}), flush=True)
