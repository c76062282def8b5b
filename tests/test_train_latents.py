"""Training in SD-VAE latent space, both ways the paper's recipe allows: from the precomputed
latent cache, and from images encoded on the fly (`config.data.vae`), as DiT's train.py does.

A tiny random VAE (downsampling 2) and a folder of random images from `dit_jax.data.testing`
stand in for the SD-VAE and ImageNet; the model is the ImageNet config's smoke variant.
- Cache round trip: folder -> latents -> a few training steps that move the weights.
- On the fly: with a near-deterministic posterior (logvar -> -30, std 3e-7) the encoded batch
  must equal latent_scale x the VAE's posterior mean of the same images, computed here directly.
- Resume: the posterior noise of step s is keyed by s, so a run stopped at a checkpoint and
  resumed ends bit-identical to an uninterrupted one (with a VAE whose posterior is not
  deterministic, so wrong keys would show).
"""
import jax
import numpy as np
import pytest

from configs import imagenet
from dit_jax import data, sharding, train
from dit_jax import train_state as ts
from dit_jax.data import testing
from dit_jax.models import vae, vae_weights

IMAGE_SIZE = 16  # 8x8x4 latents with the tiny VAE: the smoke model's input
LATENT_SCALE = 0.18215


def smoke_config(data_cfg: dict):
  config = imagenet.get_config("smoke")
  config.data.update(data_cfg)
  return config


def _params(state):
  return jax.tree.leaves(jax.device_get(state.params))


@pytest.mark.slow
def test_few_steps_from_the_latent_cache(tmp_path):
  cache_cfg = testing.make_latent_cache(str(tmp_path / "build"), image_size=IMAGE_SIZE, num_images=8)
  config = smoke_config(cache_cfg)
  one = jax.devices()[:1]
  state = train.train(config, str(tmp_path / "run"), devices=one)
  init = ts.init_train_state(config, sharding.create_mesh({"data": -1}, one),
                             jax.random.split(jax.random.key(config.seed), 3)[0])
  assert int(state.step) == config.num_train_steps
  moved = max(np.abs(a - b).max() for a, b in zip(_params(state), _params(init)))
  assert np.isfinite(moved) and moved > 1e-4


def _folder_config(tmp_path, logvar_bias):
  folder = testing.make_image_folder(str(tmp_path / "images"), per_class=4)
  vae_dir = testing.make_vae_dir(str(tmp_path / f"vae{logvar_bias}"), logvar_bias=logvar_bias)
  return smoke_config(dict(source="imagefolder", data_dir=folder, split="", image_size=IMAGE_SIZE,
                           vae=vae_dir, flip=False, latent_scale=LATENT_SCALE))


def test_on_the_fly_encoding_is_the_scaled_vae_posterior(tmp_path):
  config = _folder_config(tmp_path, logvar_bias=-100.0)
  mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
  pixels = next(iter(data.create_dataset(config.data, global_batch_size=8, seed=0,
                                         process_index=0, process_count=1)))
  encoded = train.make_latent_encoder(config, mesh)(train.global_batch(pixels, mesh), step=3)
  model, params = vae_weights.load_vae(config.data.vae)
  mean, _ = model.apply({"params": params}, pixels["x"], method=vae.AutoencoderKL.encode)
  assert encoded["x"].shape == (8, 8, 8, 4)
  np.testing.assert_allclose(np.asarray(encoded["x"]), LATENT_SCALE * np.asarray(mean), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(encoded["y"]), pixels["y"])


@pytest.mark.slow
def test_on_the_fly_training_resumes_bit_identically(tmp_path):
  config = _folder_config(tmp_path, logvar_bias=0.0)
  one = jax.devices()[:1]
  straight = train.train(config, str(tmp_path / "straight"), devices=one)
  config.num_train_steps = config.checkpoint_every_steps
  train.train(config, str(tmp_path / "resumed"), devices=one)
  config.num_train_steps = int(straight.step)
  resumed = train.train(config, str(tmp_path / "resumed"), devices=one)
  for a, b in zip(_params(straight), _params(resumed)):
    np.testing.assert_array_equal(a, b)
