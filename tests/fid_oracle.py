"""pytorch-fid 0.3.0's FID Inception with random weights: the torch oracle for the Inception tests.

pytorch-fid imports torchvision; the registry's torchvision is a CUDA build whose operator
registrations fail beside the CPU torch, and only its pure-Python inception module is needed, so
tests/conftest.py registers an empty ``torchvision._meta_registrations`` first (STACK-NOTES.md).
The network is the one ``pytorch_fid.inception.fid_inception_v3`` builds, without its weight download. Batch
norms get running statistics averaged over a few train-mode passes on uniform noise (every layer
sees normalized inputs in eval mode), random scales and mostly negative offsets: with zero
offsets the random network is chaotic enough that float32 rounding alone (torch's as much as
JAX's) moves its outputs by ~1e-4 of their range; with these it stays near 1e-6 while different
images still give clearly different features.
"""
from unittest import mock

import numpy as np
import torch

from pytorch_fid import inception as fid_inception  # (conftest.py registered the shim)

SPATIAL_CHANNELS = 7


BN_SCALE_RANGE = (0.5, 1.5)
BN_OFFSET_MEAN, BN_OFFSET_STD = -0.5, 0.2


def build_model(seed: int = 0, calibration_batches: int = 2,
                batch_size: int = 3) -> torch.nn.Module:
  """pytorch-fid's FID Inception (eval mode) with random weights and calibrated batch norms."""
  torch.manual_seed(seed)
  model = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  model.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
  model.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
  model.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
  model.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
  model.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
  model.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
  model.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
  model.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
  model.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
  with torch.no_grad():
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
      bn.weight.uniform_(*BN_SCALE_RANGE)
      bn.bias.normal_(BN_OFFSET_MEAN, BN_OFFSET_STD)
      bn.reset_running_stats()
      bn.momentum = None  # cumulative average over the calibration passes
    model.train()
    for _ in range(calibration_batches):
      model(torch.rand(batch_size, 3, 299, 299) * 2 - 1)
  return model.eval()


def reference_features(model: torch.nn.Module, images: np.ndarray) -> dict[str, np.ndarray]:
  """uint8 NHWC images -> {"pool", "logits", "spatial"} computed by pytorch-fid's own
  ``InceptionV3`` wrapper (its resize and normalization) around ``model``: pool3, pool3 times
  fc.weight without the bias, and Mixed_6d.branch1x1's first 7 channels flattened as NHWC."""
  with mock.patch.object(fid_inception, "fid_inception_v3", lambda: model):
    wrapper = fid_inception.InceptionV3([fid_inception.InceptionV3.DEFAULT_BLOCK_INDEX]).eval()
  captured = {}
  hook = model.Mixed_6d.branch1x1.register_forward_hook(
      lambda _module, _inputs, output: captured.update(spatial=output.clone()))
  try:
    with torch.no_grad():
      x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
      pool = wrapper(x)[0].flatten(1)
      logits = pool @ model.fc.weight.T
  finally:
    hook.remove()
  spatial = captured["spatial"][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
  return {"pool": pool.numpy(), "logits": logits.numpy(), "spatial": spatial.numpy()}
