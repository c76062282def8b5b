"""params_from_official and the convert CLI against the official state-dict layout of DIT-FACTS.md.

The fake official state dicts are built from the key names and (out, in) / (D, C, p, p) shapes
listed in DIT-FACTS.md, not from our model. Checks: the converted tree has exactly the model's
structure; individual entries land where the official layouts say (qkv (3, heads, head_dim),
attention output, patch conv); scanned models get the same blocks stacked; bad state dicts
(missing, extra, wrong-shape keys, a non-sin-cos pos_embed, a non-adaLN-Zero model) raise
errors naming the problem; the CLI writes a checkpoint that dit_jax.checkpoint restores.
"""
import textwrap

import jax
import numpy as np
import pytest
import torch
from flax import linen as nn

from dit_jax import checkpoint, convert
from dit_jax.models import layers
from dit_jax.models.dit import DiT, init_inputs

D, HEADS, DEPTH, C, P, SIZE, CLASSES = 32, 2, 2, 4, 2, 8, 10
HD = D // HEADS


def _model(**kw) -> DiT:
  return DiT(**dict(input_size=SIZE, patch_size=P, in_channels=C, hidden_size=D, depth=DEPTH,
                    num_heads=HEADS, num_classes=CLASSES, **kw))


def official_state_dict(seed=0, depth=DEPTH, classes=CLASSES, size=SIZE) -> dict:
  """Random weights under the official key names and shapes (DIT-FACTS.md)."""
  grid = size // P
  shapes = {
      "x_embedder.proj.weight": (D, C, P, P), "x_embedder.proj.bias": (D,),
      "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
      "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
      "y_embedder.embedding_table.weight": (classes + 1, D),
      "final_layer.linear.weight": (P * P * 2 * C, D), "final_layer.linear.bias": (P * P * 2 * C,),
      "final_layer.adaLN_modulation.1.weight": (2 * D, D),
      "final_layer.adaLN_modulation.1.bias": (2 * D,),
  }
  for i in range(depth):
    for name, (out, inp) in {"attn.qkv": (3 * D, D), "attn.proj": (D, D), "mlp.fc1": (4 * D, D),
                             "mlp.fc2": (D, 4 * D), "adaLN_modulation.1": (6 * D, D)}.items():
      shapes[f"blocks.{i}.{name}.weight"] = (out, inp)
      shapes[f"blocks.{i}.{name}.bias"] = (out,)
  rng = np.random.default_rng(seed)
  sd = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
  sd["pos_embed"] = layers.sincos_pos_embed_2d(D, grid)[None].astype(np.float32)
  return sd


def test_structure_and_layouts():
  model = _model()
  sd = official_state_dict()
  params = convert.params_from_official(sd, model)
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(model))))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), abstract["params"])
  qkv = params["blocks_1"]["attn"]["qkv"]
  w = sd["blocks.1.attn.qkv.weight"]
  for s, h, j, i in [(0, 0, 0, 0), (1, 1, 3, 5), (2, 1, HD - 1, D - 1), (2, 0, 7, 2)]:
    assert qkv["kernel"][i, s, h, j] == w[s * D + h * HD + j, i]
    assert qkv["bias"][s, h, j] == sd["blocks.1.attn.qkv.bias"][s * D + h * HD + j]
  proj = params["blocks_0"]["attn"]["proj"]["kernel"]
  assert proj[1, 4, 9] == sd["blocks.0.attn.proj.weight"][9, HD + 4]
  conv = params["x_embedder"]["kernel"]
  assert conv[1, 0, 3, 17] == sd["x_embedder.proj.weight"][17, 3, 1, 0]
  np.testing.assert_array_equal(params["t_embedder"]["mlp_0"]["kernel"], sd["t_embedder.mlp.0.weight"].T)
  np.testing.assert_array_equal(params["y_embedder"]["embedding_table"],
                                sd["y_embedder.embedding_table.weight"])


def test_scan_layout_stacks_blocks():
  sd = official_state_dict()
  unrolled = convert.params_from_official(sd, _model())
  scanned = convert.params_from_official(sd, _model(scan_blocks=True))
  stacked = jax.tree.map(lambda *a: np.stack(a), *(unrolled[f"blocks_{i}"] for i in range(DEPTH)))
  jax.tree.map(np.testing.assert_array_equal, scanned["blocks"], stacked)
  assert set(scanned) == {k for k in unrolled if not k.startswith("blocks_")} | {"blocks"}


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("blocks.1.mlp.fc2.bias"), "missing keys ['blocks.1.mlp.fc2.bias']"),
    (lambda sd: sd.update({"blocks.2.attn.qkv.weight": np.zeros((3 * D, D))}),
     "unexpected keys ['blocks.2.attn.qkv.weight']"),
    (lambda sd: sd.update({"final_layer.linear.weight": np.zeros((16, D))}),
     f"final_layer.linear.weight has shape (16, {D}), expected ({P * P * 2 * C}, {D})"),
    (lambda sd: sd.update({"pos_embed": sd["pos_embed"] + 0.5}), "pos_embed differs"),
])
def test_bad_state_dicts_name_the_key(edit, message):
  sd = official_state_dict()
  edit(sd)
  with pytest.raises(ValueError) as err:
    convert.params_from_official(sd, _model())
  assert message in str(err.value)


def test_wrong_class_count_and_block_type():
  with pytest.raises(ValueError, match=r"y_embedder.embedding_table.weight has shape \(8, 32\)"):
    convert.params_from_official(official_state_dict(classes=7), _model())
  with pytest.raises(ValueError, match="adaLN-Zero"):
    convert.params_from_official(official_state_dict(), _model(block_type="in_context"))


def test_cli_writes_a_restorable_checkpoint(tmp_path):
  # A config file with the imagenet config's interface whose "smoke" model is tiny.
  config_file = tmp_path / "tiny.py"
  config_file.write_text(textwrap.dedent(f"""
      import importlib.util
      spec = importlib.util.spec_from_file_location("imagenet", {str(convert.IMAGENET_CONFIG)!r})
      imagenet = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(imagenet)

      def get_config(arg):
        config = imagenet.get_config(arg + ",smoke")
        config.model.update(hidden_size={D}, num_heads={HEADS}, depth={DEPTH}, input_size={SIZE},
                            patch_size={P}, num_classes={CLASSES})
        return config
      """))
  sd = official_state_dict(seed=3)
  official = tmp_path / "official.pt"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, official)
  workdir = tmp_path / "converted"
  convert.main(["--official", str(official), "--output", str(workdir), "--config", str(config_file)])
  config, ema = checkpoint.restore_ema_params(str(workdir))
  assert config.model.hidden_size == D
  want = convert.params_from_official(sd, _model())
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), ema, want)
