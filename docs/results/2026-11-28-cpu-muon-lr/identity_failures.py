"""Where identity is lost: how many frames of each failing video disagree, and as what.

Usage: python identity_failures.py SAMPLES.npz [...]  (the npz written by `python -m dit_jax.sample`)

A video fails identity when its 8 frames are not all classified as one digit
(dit_jax.video_quality); this counts, over the failing videos, the frames classified as something
other than the asked label, the (label, prediction) pairs of those frames and their frame index.
"""
import collections
import sys

import numpy as np

from dit_jax import video_quality


def main(paths):
  for path in paths:
    with np.load(path) as npz:
      videos, labels = video_quality.to_unit_videos(npz["arr_0"]), npz["labels"]
    num, num_frames = videos.shape[:2]
    preds = video_quality.frame_classes(videos)
    wrong = preds != labels[:, None]
    failing = ~np.all(preds == preds[:, :1], 1)
    misread = zip(*np.where(wrong & failing[:, None]))
    pairs = collections.Counter((int(labels[i]), int(preds[i, j])) for i, j in misread)
    print(f"{path}: {failing.sum()} of {num} videos lose identity")
    per_video = collections.Counter(wrong[failing].sum(1).tolist())
    print("  wrong frames per failing video:", dict(sorted(per_video.items())))
    print("  failing videos per label:", {l: int(failing[labels == l].sum()) for l in range(10)})
    print("  commonest (label, read as):", pairs.most_common(6))
    print("  wrong frames by frame index:", np.bincount(np.where(wrong)[1], minlength=num_frames).tolist())


if __name__ == "__main__":
  main(sys.argv[1:])
