"""Helpers for the config files under configs/: loading one by path, building on a sibling
config, setting dotted fields, and parsing the `key=value,...` argument of `--config FILE.py:ARG`.

Configs load each other by path (not `from configs import ...`), so a config file works from
any directory, as ml_collections' config_flags loads it.
"""
import importlib.util
import pathlib
import types

import ml_collections


def import_file(path: str | pathlib.Path, example: str) -> types.ModuleType:
  """The Python file at `path` run as a module (config and sweep-grid files are loaded by path);
  a missing file raises FileNotFoundError that suggests `example`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"file {str(path)!r} not found; pass e.g. {example}")
  spec = importlib.util.spec_from_file_location(f"dit_jax_configs_{path.stem}", path)
  if spec is None:
    raise ValueError(f"{str(path)!r} is not a Python file; pass e.g. {example}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`."""
  return import_file(path, "configs/digits.py").get_config(arg)


def load_spec(spec: str) -> ml_collections.ConfigDict:
  """The config that `--config PATH[:ARG]` names, e.g. "configs/imagenet.py:variant=B/2"."""
  path, _, arg = spec.partition(":")
  return load(path, arg or None)


def sibling(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of configs/<name>.py, the file next to `config_file` (pass __file__)."""
  return load(pathlib.Path(config_file).with_name(f"{name}.py"), arg)


def override(config: ml_collections.ConfigDict, values: dict, source: str) -> ml_collections.ConfigDict:
  """Sets the dotted fields of `values` ({"model.depth": 2, ...}) in `config` and returns it.

  A field the config does not define raises KeyError naming it and `source` (the config file),
  as `dit_jax.train` rejects an unknown `--config.` flag: a typo must not pass unnoticed.
  """
  for field, value in values.items():
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node.get(part, {})
    if leaf not in node:
      raise KeyError(f"{field!r} is not a field of {source}; only fields the config defines "
                     "can be set.")
  config.update_from_flattened_dict(values)
  return config


def parse_arg(arg: str | None, defaults: dict, config_name: str) -> dict:
  """`key=value,...,smoke` -> {key: value string} over `defaults` (unknown keys are an error
  naming the file); the bare word `smoke` sets "smoke" to "1" (else "")."""
  out = dict(defaults, smoke="")
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep and key == "smoke":
      out["smoke"] = "1"
    elif sep and key in defaults:
      out[key] = value.strip()
    else:
      raise ValueError(
          f"configs/{config_name}.py: cannot parse {item!r} in {arg!r}; use comma-separated "
          f"key=value with keys {sorted(defaults)} and optionally the word 'smoke'.")
  return out
