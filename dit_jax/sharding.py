"""Device meshes, logical axis rules and shardings.

Models name their axes logically (``"embed"``, ``"mlp"``, ``"activation_batch"`` ...); this
module maps those names onto a physical mesh with four axes:

- ``data``: pure data parallelism (parameters replicated),
- ``fsdp``: data parallelism with parameters, gradients and optimizer state sharded (ZeRO-3),
- ``sequence``: the tokens of each example split over devices (long videos), parameters
  replicated; attention gathers keys and values over it (XLA inserts the collectives),
- ``tensor``: Megatron-style tensor parallelism inside attention heads and the MLP.

The batch is sharded over ``("data", "fsdp")``. Within a slice the sizes come from
``config.mesh.{data,fsdp,sequence,tensor}`` (ICI; absent means 1); across slices of a multislice
job from ``config.mesh.dcn_{data,fsdp,sequence,tensor}`` (DCN). One size per group may be -1: it
takes the devices that remain.
"""
import contextlib
import logging
import math
from typing import Iterable, Mapping, Sequence

import jax
import numpy as np
import optax
from flax import linen as nn
from flax.core import meta
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_MESH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or axes, or None = replicated). The first rule whose mesh axis
# is free wins, as in flax.linen.logical_to_mesh_axes. Configs may override the whole table.
DEFAULT_LOGICAL_AXIS_RULES = (
    # Parameters.
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("modulation", "tensor"),
    ("patch", None),
    ("classes", None),
    ("vocab", None),
    ("freq", None),
    ("conv_in", None),
    ("conv_out", None),
    # Activations.
    ("activation_batch", BATCH_MESH_AXES),
    ("activation_length", "sequence"),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
)


def resolve_axis_sizes(sizes: Sequence[int], total: int, what: str = "mesh") -> tuple[int, ...]:
  """Replaces a single -1 in ``sizes`` so that their product is ``total``.

  Raises ValueError naming the sizes when they cannot tile ``total`` devices.
  """
  sizes = [int(s) for s in sizes]
  named = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1:
    raise ValueError(f"{what}: at most one axis may be -1, got {named}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{what}: axis sizes must be positive or -1, got {named}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if total % known:
      raise ValueError(
          f"{what}: {total} devices cannot be split with {named}; the fixed sizes multiply to "
          f"{known}, which does not divide {total}. Choose sizes whose product divides {total}.")
    sizes[sizes.index(-1)] = total // known
  if math.prod(sizes) != total:
    raise ValueError(
        f"{what}: {named} uses {math.prod(sizes)} devices but {total} are available. Set the "
        f"sizes so their product is {total}, or set one of them to -1 to fill.")
  return tuple(sizes)


def mesh_shape(mesh_config: Mapping, num_devices: int, num_slices: int = 1):
  """Returns (ici_shape, dcn_shape): per-slice and across-slice sizes of MESH_AXES."""
  dcn = [mesh_config.get(f"dcn_{a}", 1) for a in MESH_AXES]
  dcn = resolve_axis_sizes(dcn, num_slices, "mesh.dcn_*")
  ici = [mesh_config.get(a, 1) for a in MESH_AXES]
  ici = resolve_axis_sizes(ici, num_devices // num_slices, "mesh (per slice)")
  return ici, dcn


def _num_slices(devices: Sequence[jax.Device]) -> int:
  slice_ids = {getattr(d, "slice_index", 0) for d in devices}
  return len(slice_ids)


def _single_slice_device_array(ici: Sequence[int], devices: Sequence[jax.Device]) -> np.ndarray:
  """Devices laid out as ``ici`` by the physical-topology optimizer, else in plain order.

  Plain order is right for CPU devices (no topology) but can put mesh neighbours on distant
  chips of an accelerator, slowing every collective: there it is a warning that names the
  topology, so a layout the optimizer does not know is seen rather than run slowly unnoticed.
  """
  try:
    return mesh_utils.create_device_mesh(ici, devices)
  except (AssertionError, NotImplementedError, ValueError) as e:
    first = devices[0]
    if first.platform != "cpu":
      shape = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, ici))
      logging.warning(
          "mesh_utils.create_device_mesh cannot lay out %d %s devices (platform %s) as mesh "
          "(%s): %s: %s. Using plain device order, which may place mesh neighbours on distant "
          "chips and slow collectives; a mesh shape matching the slice topology avoids this.",
          len(devices), first.device_kind, first.platform, shape, type(e).__name__, e)
    return np.asarray(devices).reshape(ici)


def create_mesh(mesh_config: Mapping, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds the (data, fsdp, sequence, tensor) mesh described by ``mesh_config``.

  ``mesh_config`` holds ``data``, ``fsdp``, ``tensor`` and optionally ``sequence`` (per slice,
  -1 fills, absent is 1) and ``dcn_data``, ``dcn_fsdp``, ``dcn_sequence``, ``dcn_tensor``
  (across slices). With more than one slice (TPU
  multislice) the mesh is a hybrid one: DCN axes outermost, so only the collectives of axes with a
  dcn size above 1 cross the slower network. Without slice information (CPU, GPU clusters), each
  process is treated as a slice when a dcn size above 1 is requested.

  The mesh uses Auto axis types, which Flax Linen's logical partitioning requires.
  """
  devices = list(devices if devices is not None else jax.devices())
  num_slices = _num_slices(devices)
  dcn_requested = math.prod(abs(mesh_config.get(f"dcn_{a}", 1)) for a in MESH_AXES) > 1
  process_is_granule = False
  if num_slices == 1 and dcn_requested:
    num_slices = len({d.process_index for d in devices})
    process_is_granule = True
  ici, dcn = mesh_shape(mesh_config, len(devices), num_slices)
  if num_slices > 1:
    device_array = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=process_is_granule)
  else:
    device_array = _single_slice_device_array(ici, devices)
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.sharding.Mesh(device_array, MESH_AXES, axis_types=axis_types)


def rules_from_config(rules: Iterable | None) -> tuple:
  """Normalizes a config's rule list (lists from JSON/ml_collections) into Flax's tuple form."""
  if rules is None:
    return DEFAULT_LOGICAL_AXIS_RULES
  out = []
  for name, axes in rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh, rules=DEFAULT_LOGICAL_AXIS_RULES):
  """Enters ``mesh`` and the logical axis ``rules`` so that Linen's logical constraints apply.

  (``with mesh:`` alone would make ``nn.with_logical_constraint`` a silent no-op.)
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of a batch: leading axis over (data, fsdp), everything else replicated."""
  return NamedSharding(mesh, P(BATCH_MESH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_shard_count(mesh: jax.sharding.Mesh) -> int:
  """How many ways the global batch is split."""
  return math.prod(mesh.shape[a] for a in BATCH_MESH_AXES)


def logical_to_shardings(abstract_tree, mesh: jax.sharding.Mesh, rules=DEFAULT_LOGICAL_AXIS_RULES):
  """NamedShardings for a tree of (possibly boxed) abstract values from ``jax.eval_shape``.

  Leaves boxed with ``nn.LogicallyPartitioned`` get the sharding their names map to; all other
  leaves (step counters, optimizer scalars) are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  # optax.masked (Muon's split of the parameters between Muon and Adam) stores an array-less
  # optax.MaskedNode inside a boxed leaf; keep it there so both trees have one structure. (The
  # box's value is read directly: nn.unbox would add sharding constraints under a mesh.)
  boxed = lambda x: isinstance(x, meta.AxisMetadata)
  masked = lambda x: boxed(x) and isinstance(getattr(x, "value", None), optax.MaskedNode)
  return jax.tree.map(lambda a, s: a.value if masked(a) else s, abstract_tree, shardings,
                      is_leaf=boxed)
