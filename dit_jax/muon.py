"""Which axes of each DiT parameter Muon orthogonalizes (`config.optimizer="muon"`).

Muon (optax.contrib.muon; Jordan 2024, Liu et al. 2025) replaces the update of a linear map's
kernel by the nearest semi-orthogonal matrix of its momentum, so every direction of the map
moves at the same rate. It needs to know which kernel axes are contracted (inputs) and which are
produced (outputs); our kernels carry logical axis names (models/layers.Dense: `in_names +
out_names`), which say it:
- the layer axis of scanned blocks and the q/k/v axis of a fused qkv kernel are batch axes: each
  layer's, and each of q, k and v's matrix is orthogonalized on its own;
- a kernel ending in (heads, kv) that does not start with heads produces heads (qkv, q, kv):
  those two axes are its outputs; any other kernel produces its last axis (the attention output
  (heads, kv, embed) contracts heads and kv);
- the rest is contracted.
The input and output maps (patch embedding, label and caption embedders, the final linear layer),
biases, norms and embedding tables stay on Adam, as in Muon's reference recipe.
"""
import jax
import optax
from flax import linen as nn

from dit_jax.models import dit
from dit_jax.models import layers

BATCH_AXES = (dit.LAYERS, layers.QKV)
ADAM_MODULES = ("x_embedder/", "y_embedder/", "context_embedder/", "pooled_embedder/",
                "final_layer/linear/")


def _leaf_dimension_numbers(path, leaf) -> optax.contrib.MuonDimensionNumbers | None:
  """The dimension numbers of one boxed parameter, or None to leave it to Adam."""
  name = "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
  names = tuple(getattr(leaf, "names", ()))
  if not name.endswith("kernel") or name.startswith(ADAM_MODULES) or not names:
    return None
  axes = [i for i, n in enumerate(names) if n not in BATCH_AXES]
  produces_heads = names[-2:] == (layers.HEADS, layers.KV) and names[axes[0]] != layers.HEADS
  n_out = 2 if produces_heads else 1
  if len(axes) <= n_out:
    return None
  return optax.contrib.MuonDimensionNumbers(tuple(axes[:-n_out]), tuple(axes[-n_out:]))


def dimension_numbers(boxed_params):
  """A tree like the unboxed params: MuonDimensionNumbers for Muon's kernels, None for Adam's.

  Args:
    boxed_params: the model's parameters (or their `jax.eval_shape`) as `model.init` returns
      them, boxed in `nn.LogicallyPartitioned` so that the axis names can be read.
  """
  return jax.tree_util.tree_map_with_path(
      _leaf_dimension_numbers, boxed_params,
      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
