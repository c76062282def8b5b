"""Timestep respacing with the grammar of the reference code ("", "250", "20,10,5", "ddimN").

The error messages are the reference's, word for word, so logs and tests can be compared.
"""
import numpy as np

DDIM_PREFIX = "ddim"


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
  """Sorted list of the original timesteps kept by ``section_counts``.

  Args:
    num_timesteps: steps of the base process (e.g. 1000).
    section_counts: "ddimN" (the smallest integer stride giving exactly N steps), a comma-separated
      string or a list of counts: the process is cut into len(counts) equal sections (the first
      ``num_timesteps % len(counts)`` get one extra step) and each section keeps that many steps at
      a fractional stride rounded with Python's round; a count of 1 keeps the section start.
      "" or None keeps every step.
  """
  if section_counts is None or section_counts == "":
    section_counts = [num_timesteps]
  if isinstance(section_counts, str):
    if section_counts.startswith(DDIM_PREFIX):
      desired_count = int(section_counts[len(DDIM_PREFIX):])
      for i in range(1, num_timesteps):
        if len(range(0, num_timesteps, i)) == desired_count:
          return list(range(0, num_timesteps, i))
      raise ValueError(f"cannot create exactly {num_timesteps} steps with an integer stride")
    section_counts = [int(x) for x in section_counts.split(",")]
  size_per = num_timesteps // len(section_counts)
  extra = num_timesteps % len(section_counts)
  start_idx = 0
  all_steps = set()
  for i, section_count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < section_count:
      raise ValueError(f"cannot divide section of {size} steps into {section_count}")
    frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
    cur_idx = 0.0
    for _ in range(section_count):
      all_steps.add(start_idx + round(cur_idx))
      cur_idx += frac_stride
    start_idx += size
  return sorted(all_steps)


def respace_betas(alphas_cumprod: np.ndarray, use_timesteps) -> np.ndarray:
  """Betas of the respaced process: beta_i = 1 - abar_{k_i} / abar_{k_(i-1)} (abar_{k_(-1)} = 1).

  The kept alpha-bars are thereby exactly those of the base process.
  """
  kept = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(sorted(use_timesteps))]
  previous = np.concatenate([[1.0], kept[:-1]])
  return 1.0 - kept / previous
