"""Flax modules: the DiT family (dit.py), shared layers (layers.py) and the SD-VAE (vae.py)."""
