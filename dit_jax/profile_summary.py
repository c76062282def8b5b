"""Where the device time of a profiled run went, from ``jax.profiler``'s Perfetto trace.

``jax.profiler.trace(dir, create_perfetto_trace=True)`` writes
``dir/plugins/profile/<run>/perfetto_trace.json.gz`` (Chrome trace-event JSON). Accelerators
appear as processes named "/device:GPU:0", "/device:TPU:0", ... whose threads are streams and
derived lines ("XLA Ops", "XLA Modules", ...); their complete events ("ph": "X") carry a kernel
or HLO op name and a duration in microseconds. ``summarize`` totals the durations per name on
each device thread and keeps the largest, so a benchmark can say "attention took 9% of the
step" on a machine whose trace files cannot be brought back (bench ``--profile``). Host-only
runs (CPU) have no device processes and give an empty summary.
"""
import collections
import glob
import gzip
import json
import os

DEVICE_PREFIX = "/device:"


def latest_trace(profile_dir: str) -> str:
  """Path of the newest perfetto_trace.json.gz under ``profile_dir``."""
  found = glob.glob(os.path.join(profile_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
  if not found:
    raise FileNotFoundError(
        f"No perfetto_trace.json.gz under {profile_dir}/plugins/profile: profile with "
        "jax.profiler.trace(dir, create_perfetto_trace=True).")
  return max(found, key=os.path.getmtime)


def summarize(events: list, top: int = 25) -> dict:
  """{"<process> / <thread>": {"total_us", "events", "top": [[name, us, count, share], ...]}}
  for every device thread of the trace events, its ``top`` names by total duration."""
  processes, threads = {}, {}
  for e in events:
    if e.get("ph") != "M":
      continue
    if e.get("name") == "process_name":
      processes[e["pid"]] = e["args"]["name"]
    elif e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  totals = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
  for e in events:
    pid = e.get("pid")
    if e.get("ph") != "X" or not processes.get(pid, "").startswith(DEVICE_PREFIX):
      continue
    line = f"{processes[pid]} / {threads.get((pid, e.get('tid')), e.get('tid'))}"
    entry = totals[line][e["name"]]
    entry[0] += float(e.get("dur", 0.0))
    entry[1] += 1
  summary = {}
  for line, names in totals.items():
    total = sum(us for us, _ in names.values())
    ranked = sorted(names.items(), key=lambda kv: -kv[1][0])[:top]
    summary[line] = dict(total_us=total, events=sum(n for _, n in names.values()),
                         top=[[name, us, n, us / total if total else 0.0]
                              for name, (us, n) in ranked])
  return summary


def summarize_dir(profile_dir: str, top: int = 25) -> dict:
  """``summarize`` of the newest trace under ``profile_dir``."""
  with gzip.open(latest_trace(profile_dir), "rt") as fp:
    trace = json.load(fp)
  return summarize(trace["traceEvents"] if isinstance(trace, dict) else trace, top)
