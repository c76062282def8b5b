"""Input pipelines (grain): digits, TFDS, image folders and the SD-VAE latent cache.

Public API: `create_dataset(data_cfg, *, global_batch_size, seed, process_index, process_count,
start_step=0)` and `input_shape(data_cfg)`; see pipeline.py.
"""
from dit_jax.data.pipeline import create_dataset, input_shape

__all__ = ["create_dataset", "input_shape"]
