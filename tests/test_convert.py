"""params_from_official and the convert CLI against the official state-dict layout of DIT-FACTS.md.

The fake official state dicts are built from the key names and (out, in) / (D, C, p, p) shapes
listed in DIT-FACTS.md, not from our model. Checks: the converted tree has exactly the model's
structure; individual entries land where the official layouts say (qkv (3, heads, head_dim),
attention output, patch conv); scanned models get the same blocks stacked; bad state dicts
(missing, extra, wrong-shape keys, a non-sin-cos pos_embed, a non-adaLN-Zero model) raise
errors naming the problem; the CLI writes a checkpoint that dit_jax.checkpoint restores, takes
the EMA of a DiT training checkpoint (with its argparse arguments), and refuses with one usage
error each a file that is no checkpoint, a pickle that is no state dict, and an output that
already holds checkpoints (an earlier conversion, a training workdir) before writing anything.
``--official XL/2-256`` / ``XL/2-512`` fetch a tiny DiT saved under the released file name from a
server on 127.0.0.1 ($DIT_JAX_OFFICIAL_URL) into $DIT_JAX_CACHE once: a published hash that does
not match refuses the file and caches nothing; without one the first download's hash is recorded
and a changed cached file is refused; failed downloads, contradicting flags and unknown names
are usage errors that say so.
"""
import argparse
import hashlib
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from dit_jax import checkpoint, config_files, convert, downloads, sharding
from dit_jax import train_state as ts
from dit_jax.models import layers
from dit_jax.models.dit import DiT, init_inputs
from local_server import LocalServer

D, HEADS, DEPTH, C, P, SIZE, CLASSES = 32, 2, 2, 4, 2, 8, 10
HD = D // HEADS
ROOT = pathlib.Path(__file__).resolve().parents[1]


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


@pytest.fixture
def tiny_config(tmp_path):
  """A config file with the imagenet config's interface whose "smoke" model is tiny."""
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
  return config_file


def save_official(path, sd):
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  return path


def test_cli_writes_a_restorable_checkpoint(tmp_path, tiny_config):
  sd = official_state_dict(seed=3)
  official = save_official(tmp_path / "official.pt", sd)
  workdir = tmp_path / "converted"
  convert.main(["--official", str(official), "--output", str(workdir), "--config", str(tiny_config)])
  config, ema = checkpoint.restore_ema_params(str(workdir))
  assert config.model.hidden_size == D
  want = convert.params_from_official(sd, _model())
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), ema, want)


def _refused(capsys, *argv):
  """convert.main's usage error (exit status 2) for argv: the message it printed."""
  with pytest.raises(SystemExit) as exit_info:
    convert.main(list(map(str, argv)))
  assert exit_info.value.code == 2
  return capsys.readouterr().err


def test_cli_names_a_file_that_is_no_checkpoint(tmp_path):
  bad = tmp_path / "weights.pt"
  bad.write_bytes(np.random.default_rng(0).bytes(2000))
  proc = subprocess.run([sys.executable, "-m", "dit_jax.convert", "--official", str(bad),
                         "--output", str(tmp_path / "out")], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f"--official {bad} is not a PyTorch checkpoint of tensors (UnpicklingError" in proc.stderr
  assert "file an issue" not in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


def test_cli_names_pickles_that_are_no_state_dict(tmp_path, tiny_config, capsys):
  out = tmp_path / "out"
  torch.save([torch.zeros(2)], tmp_path / "list.pt")
  assert f"--official {tmp_path / 'list.pt'} holds a list, not a state dict" in _refused(
      capsys, "--official", tmp_path / "list.pt", "--output", out, "--config", tiny_config)
  torch.save({"x_embedder.proj.bias": torch.zeros(2), "note": "hi"}, tmp_path / "str.pt")
  assert "the entries ['note'] are not tensors" in _refused(
      capsys, "--official", tmp_path / "str.pt", "--output", out, "--config", tiny_config)
  assert not out.exists()


def test_cli_training_checkpoint_with_args_uses_the_ema(tmp_path, tiny_config):
  ema = official_state_dict(seed=4)
  raw = {k: torch.from_numpy(v + 1) for k, v in ema.items()}
  torch.save({"model": raw, "ema": {k: torch.from_numpy(v) for k, v in ema.items()}, "opt": {},
              "args": argparse.Namespace(model="DiT-XL/2")}, tmp_path / "train.pt")
  convert.main(["--official", str(tmp_path / "train.pt"), "--output", str(tmp_path / "out"),
                "--config", str(tiny_config)])
  _, params = checkpoint.restore_ema_params(str(tmp_path / "out"))
  want = convert.params_from_official(ema, _model())
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, want)


def test_cli_refuses_outputs_that_hold_checkpoints(tmp_path, tiny_config, capsys):
  official = save_official(tmp_path / "official.pt", official_state_dict())
  args = ["--official", official, "--config", tiny_config, "--output"]
  convert.main(list(map(str, args + [tmp_path / "converted"])))
  assert f"--output {tmp_path / 'converted'} already holds a checkpoint 0" in _refused(
      capsys, *args, tmp_path / "converted")
  # A digits training workdir (checkpoint 7) must not get an ImageNet-shaped checkpoint 0.
  workdir = tmp_path / "digits"
  config = _digits_smoke()
  state = ts.init_train_state(config, sharding.create_mesh({"data": -1}), jax.random.key(0))
  with checkpoint.manager_for_config(str(workdir), config) as manager:
    checkpoint.save(manager, state.replace(step=jnp.int32(7)), config, force=True)
  assert f"--output {workdir} is a training workdir (checkpoints ['7'])" in _refused(
      capsys, *args, workdir)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["7"]


def _digits_smoke():
  return config_files.load(ROOT / "configs/digits.py", "smoke")


@pytest.fixture
def released(tmp_path, monkeypatch):
  """Tiny DiTs saved under the released file names, served from 127.0.0.1 as DiT's download
  URL; a fresh cache. Yields (server, {name: state dict})."""
  served = tmp_path / "served"
  served.mkdir()
  state_dicts = {}
  for seed, (name, (file_name, _)) in enumerate(convert.OFFICIAL_CHECKPOINTS.items()):
    state_dicts[name] = official_state_dict(seed=10 + seed)
    save_official(served / file_name, state_dicts[name])
  monkeypatch.setenv(downloads.CACHE_ENV, str(tmp_path / "cache"))
  with LocalServer(served) as server:
    monkeypatch.setenv(convert.OFFICIAL_URL_ENV, server.url + "/")
    yield server, state_dicts


def _publish_hash(monkeypatch, name, sha256):
  file_name, _ = convert.OFFICIAL_CHECKPOINTS[name]
  monkeypatch.setitem(convert.OFFICIAL_CHECKPOINTS, name, (file_name, sha256))


def test_official_xl2_256_downloads_checks_and_converts(released, tmp_path, tiny_config,
                                                         monkeypatch, capsys):
  server, state_dicts = released
  file_name, published = convert.OFFICIAL_CHECKPOINTS["XL/2-256"]
  assert published == "9ec1876e4c03471bca126663a30e2d1b20610b6d2f87850a39a36f25cc685521"
  served = tmp_path / "served" / file_name
  _publish_hash(monkeypatch, "XL/2-256", hashlib.sha256(served.read_bytes()).hexdigest())
  for out in ("a", "b"):
    convert.main(["--official", "XL/2-256", "--output", str(tmp_path / out),
                  "--config", str(tiny_config)])
    _, ema = checkpoint.restore_ema_params(str(tmp_path / out))
    want = convert.params_from_official(state_dicts["XL/2-256"], _model())
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), ema, want)
  assert server.requests == 1  # the second conversion reads the cache
  assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [file_name]
  assert f"of DiT-XL/2 (256 px) to {tmp_path / 'b'}" in capsys.readouterr().out


def test_official_with_a_wrong_published_hash_is_refused(released, tmp_path, tiny_config,
                                                         monkeypatch, capsys):
  wrong = "f" * 64
  _publish_hash(monkeypatch, "XL/2-256", wrong)
  err = _refused(capsys, "--official", "XL/2-256", "--output", tmp_path / "out",
                 "--config", tiny_config)
  file_name, _ = convert.OFFICIAL_CHECKPOINTS["XL/2-256"]
  assert f"{released[0].url}/{file_name}: downloaded file has sha256" in err
  assert f"but the published sha256 is {wrong}" in err and "Nothing was cached" in err
  assert list((tmp_path / "cache").iterdir()) == [] and not (tmp_path / "out").exists()


def test_official_xl2_512_records_the_first_hash(released, tmp_path, tiny_config, capsys):
  file_name, published = convert.OFFICIAL_CHECKPOINTS["XL/2-512"]
  assert published is None  # no source states one
  convert.main(["--official", "XL/2-512", "--output", str(tmp_path / "a"),
                "--config", str(tiny_config)])
  assert "of DiT-XL/2 (512 px)" in capsys.readouterr().out
  cached = tmp_path / "cache" / file_name
  record = (tmp_path / "cache" / f"{file_name}.sha256").read_text()
  sha = hashlib.sha256((tmp_path / "served" / file_name).read_bytes()).hexdigest()
  assert record == f"{sha}  {file_name}\n"
  cached.write_bytes(cached.read_bytes()[:-10])
  err = _refused(capsys, "--official", "XL/2-512", "--output", tmp_path / "b",
                 "--config", tiny_config)
  assert f"The cached {cached} has sha256" in err and "recorded at its first download" in err
  assert not (tmp_path / "b").exists()


def test_official_names_usage_errors(released, tmp_path, tiny_config, capsys):
  out = tmp_path / "out"
  assert ("--official XL/2-256 is DiT-XL/2 at 256 px; --image_size 512 contradicts it" in
          _refused(capsys, "--official", "XL/2-256", "--image_size", 512, "--output", out))
  assert ("--official XL/2-384 is neither a file nor a released checkpoint (XL/2-256, XL/2-512)"
          in _refused(capsys, "--official", "XL/2-384", "--output", out))
  server, _ = released
  server.close()
  err = _refused(capsys, "--official", "XL/2-512", "--output", out, "--config", tiny_config)
  assert f"Could not download {server.url}/DiT-XL-2-512x512.pt" in err
  assert "Download DiT-XL-2-512x512.pt by other means and pass its path as --official" in err
  assert released[0].requests == 0 and not out.exists()


def test_cached_official_converts_once(released, tmp_path, tiny_config, monkeypatch):
  server, state_dicts = released
  _publish_hash(monkeypatch, "XL/2-256", None)
  workdir = convert.cached_official("XL/2-256", tiny_config)
  assert workdir == str(tmp_path / "cache" / "converted" / "DiT-XL-2-256x256")
  _, ema = checkpoint.restore_ema_params(workdir)
  want = convert.params_from_official(state_dicts["XL/2-256"], _model())
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), ema, want)
  calls = []
  monkeypatch.setattr(convert, "convert_official", lambda *a, **k: calls.append(a))
  assert convert.cached_official("XL/2-256", tiny_config) == workdir and calls == []
  assert server.requests == 1
