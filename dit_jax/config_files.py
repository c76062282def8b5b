"""Helpers for the config files under configs/: building on a sibling config and parsing the
`key=value,...` argument of `--config FILE.py:ARG`.

Configs load each other by path (not `from configs import ...`), so a config file works from
any directory, as ml_collections' config_flags loads it.
"""
import importlib.util
import pathlib

import ml_collections


def sibling(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of configs/<name>.py, the file next to `config_file` (pass __file__)."""
  path = pathlib.Path(config_file).with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"dit_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


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
