"""Prints the training loss (mean over each 100-step log window) of workdirs side by side.

Usage: python docs/results/2026-11-28-cpu-muon/losses.py NAME=WORKDIR ... [--every 200]
"""
import sys

from dit_jax import sweep


def main(argv):
  every = 200
  if "--every" in argv:
    i = argv.index("--every")
    every = int(argv[i + 1])
    argv = argv[:i] + argv[i + 2:]
  runs = dict(arg.split("=", 1) for arg in argv)
  losses = {name: dict(sweep.read_scalars(workdir)["train/loss"]) for name, workdir in runs.items()}
  steps = sorted({s for run in losses.values() for s in run if s % every == 0})
  print("step " + " ".join(f"{name:>12}" for name in runs))
  for step in steps:
    cells = (f"{losses[name][step]:12.4f}" if step in losses[name] else f"{'-':>12}" for name in runs)
    print(f"{step:4d} " + " ".join(cells))


if __name__ == "__main__":
  main(sys.argv[1:])
