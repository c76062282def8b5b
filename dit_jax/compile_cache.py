"""JAX's persistent compilation cache, from `config.compilation_cache_dir`.

A restarted or resumed run then loads its compiled programs instead of compiling them again
(the XL/2 train step takes 100+ s to compile). "" (the default) leaves the cache off. On a pod,
give every host the same bucket path (e.g. gs://BUCKET/jax-cache): process 0 writes the entries
and every host reads them, keyed by the program, the devices and the jax/XLA versions, so a
changed model or library compiles afresh by itself.
"""
import jax
from jax.experimental.compilation_cache import compilation_cache


def enable(cache_dir: str) -> None:
  """Caches every program this process compiles from now on under `cache_dir` ("" = no-op).

  The size and compile-time thresholds are dropped, so the small programs of a CPU run are
  cached too; a process that already compiled without a cache starts using it (jax decides that
  once per process, so the decision is reset).
  """
  if not cache_dir or jax.config.jax_compilation_cache_dir == cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  compilation_cache.reset_cache()
