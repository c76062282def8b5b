"""Sample quality as ADM's evaluator (the one the DiT paper used) measures it, in JAX.

- ``inception``: the FID Inception-v3 (2015-12-05 graph) as a Flax module, pytorch-fid weight
  import, ``extract_features`` (pool3, logits, sFID spatial features).
- ``metrics``: Fréchet distance, Inception score, precision/recall, streaming statistics.
- ``features``: sharded, streamed feature extraction over an image source.
- ``reference``: reference statistics (ADM's batches, or computed from a dataset).
"""
