"""``--config path.py[:arg]`` (or a built-in config name) plus ``--config.a.b=value`` overrides, without absl flags.

The config file defines ``get_config(arg)`` returning an ml_collections ConfigDict. Overrides
are parsed as Python literals (falling back to a plain string) and type-checked by the
ConfigDict itself, and the result is locked so a misspelt field fails instead of being added.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections


class ConfigFileError(ValueError):
    """A config file or override that cannot be applied."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``path.py`` or ``path.py:arg`` -> get_config(arg)."""
    path, _, arg = spec.partition(":")
    builtin = os.path.join(os.path.dirname(__file__), f"{path}.py")
    if not os.path.isfile(path) and os.sep not in path and os.path.isfile(builtin):
        path = builtin  # a built-in config by name, e.g. "generate:runlocal"
    if not os.path.isfile(path):
        raise ConfigFileError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"_sophia_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report it with its name
        raise ConfigFileError(f"config file {path!r} failed to import: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"config file {path!r} defines no get_config(arg)")
    return module.get_config(arg) if arg else module.get_config()


def _parse(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Each override is ``a.b.c=value`` (a leading ``--config.`` is accepted)."""
    for item in overrides:
        key, sep, raw = item.removeprefix("--").removeprefix("config.").partition("=")
        if not sep:
            raise ConfigFileError(f"override {item!r} must look like --config.field=value")
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            if name not in node:
                raise ConfigFileError(f"override {item!r}: no config section {name!r}")
            node = node[name]
        if leaf not in node:
            raise ConfigFileError(f"override {item!r}: unknown field {key!r}; known here: {sorted(node.keys())}")
        value = _parse(raw)
        current = node[leaf]
        if isinstance(current, str) and not isinstance(value, str):
            value = raw  # a path such as 123 or True stays a string where a string is expected
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ConfigFileError(f"override {item!r}: {e}") from None
    return cfg


def load(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    cfg = apply_overrides(load_config_file(spec), list(overrides))
    cfg.lock()
    return cfg
