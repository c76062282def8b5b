"""dit_jax: Diffusion Transformers (Peebles & Xie, 2023) in JAX/Flax, sharded for TPU pods and GPUs."""

__version__ = "0.1.0"
