"""``--config path.py[:arg]`` (or a built-in config name) plus ``--config.a.b=value`` overrides, without absl flags.

The config file defines ``get_config(arg)`` returning an ml_collections ConfigDict. Overrides
are parsed as Python literals (falling back to a plain string) and type-checked by the
ConfigDict itself, and the result is locked so a misspelt field fails instead of being added.

``command_config`` is the one argument parser of every ``sophia-jax`` command:

    def main(argv=None) -> int:
        cfg = command_config("forward", __doc__, "forward", argv)
        run(cfg)
        return 0
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import os
import tokenize

import ml_collections

from sophia_jax.errors import UserError


class ConfigFileError(UserError, ValueError):
    """A config file, variant, override or required field that cannot be applied."""


BUILTIN_DIR = os.path.dirname(__file__)


def config_path(spec: str) -> tuple[str, str]:
    """``path.py[:arg]`` or a built-in name such as ``generate:runlocal`` -> (file path, arg)."""
    path, _, arg = spec.partition(":")
    builtin = os.path.join(BUILTIN_DIR, f"{path}.py")
    if not os.path.isfile(path) and os.sep not in path and os.path.isfile(builtin):
        path = builtin
    if not os.path.isfile(path):
        known = sorted(f[:-3] for f in os.listdir(BUILTIN_DIR) if f.endswith(".py") and not f.startswith("_")
                       and f not in ("loading.py", "models.py"))
        raise ConfigFileError(f"config file {path!r} not found (built-in configs: {', '.join(known)})")
    return path, arg


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``path.py`` or ``path.py:arg`` -> get_config(arg)."""
    path, arg = config_path(spec)
    module_spec = importlib.util.spec_from_file_location(f"_sophia_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report it with its name
        raise ConfigFileError(f"config file {path!r} failed to import: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"config file {path!r} defines no get_config(arg)")
    return module.get_config(arg) if arg else module.get_config()


def unknown_variant(name: str, arg: str, known: tuple[str, ...]) -> ConfigFileError:
    """The error a built-in ``get_config`` raises for a variant it does not have."""
    return ConfigFileError(f"unknown {name} config variant {arg!r}; known: {', '.join(repr(k) for k in known)}")


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
            if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
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


def require(cfg: ml_collections.ConfigDict, *fields: str) -> None:
    """Raises ``ConfigFileError`` naming the first of ``fields`` (dotted) that is empty."""
    for field in fields:
        node = cfg
        for part in field.split("."):
            node = node[part]
        if node in ("", None):
            raise ConfigFileError(f"config field {field!r} is required (--config.{field}=...)")


def field_comments(path: str) -> dict[str, str]:
    """The ``# ...`` comments of a config file, keyed by the field they describe.

    A trailing comment on ``cfg.a.b = ...`` is keyed ``a.b``; one on a ``"key": value`` line of
    a dict literal (wherever it is built) is keyed ``key``. Comment lines just above a
    ``cfg.a = ...`` statement describe ``a`` when it has no trailing comment.
    """
    with open(path, encoding="utf-8") as f:
        source = f.read()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}

    def dotted(node) -> str | None:  # cfg.a.b -> "a.b"
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        return ".".join(reversed(parts)) if isinstance(node, ast.Name) and parts else None

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sophia_jax.configs."):
            imported = os.path.join(BUILTIN_DIR, node.module.rsplit(".", 1)[1] + ".py")
            if os.path.isfile(imported) and os.path.abspath(imported) != os.path.abspath(path):
                for key, text in field_comments(imported).items():  # fields built by a shared helper
                    found.setdefault(key, text)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and (key := dotted(node.targets[0])):
            text = comments.get(node.end_lineno) or comments.get(node.lineno)
            above, line = [], node.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            text = text or " ".join(above)
            if text:
                found[key] = text
            literal = node.value.args[0] if isinstance(node.value, ast.Call) and node.value.args else node.value
            if isinstance(literal, ast.Dict):  # cfg.a = ConfigDict({"b": ...  # comment}) describes a.b
                for k, v in zip(literal.keys, literal.values):
                    if isinstance(k, ast.Constant) and v.end_lineno in comments:
                        found[f"{key}.{k.value}"] = comments[v.end_lineno]
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str) and v.end_lineno in comments:
                    found.setdefault(k.value, comments[v.end_lineno])
    return found


def describe(cfg: ml_collections.ConfigDict, comments: dict[str, str] | None = None) -> str:
    """One ``a.b = value  # comment`` line per field, the form ``--config.a.b=value`` overrides."""
    comments = comments or {}
    out = []

    def note(name: str) -> str:  # the longest dotted suffix of the field's name that has a comment
        parts = name.split(".")
        return next((comments[".".join(parts[i:])] for i in range(len(parts)) if ".".join(parts[i:]) in comments), "")

    def walk(node, prefix: str):
        for key in node.keys():
            value, name = node[key], f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                if note(name):
                    out.append(f"# {name}: {note(name)}")
                walk(value, f"{name}.")
                continue
            out.append(f"{name} = {value!r}" + (f"  # {note(name)}" if note(name) else ""))

    walk(cfg, "")
    return "\n".join(out)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are user errors: one line from the CLI, exit code 2."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def command_config(
    prog: str,
    description: str,
    default_config: str,
    argv: list[str] | None,
) -> ml_collections.ConfigDict:
    """Parses ``[--config NAME_OR_PATH[:variant]] [--config.a.b=value ...] [--show-config]``.

    Returns the resolved, locked config of ``sophia-jax <prog>``. ``--show-config`` prints every
    field with its value and the config file's comment, then exits 0. ``--debug`` is accepted
    here and acted on by ``sophia_jax.cli.main`` (tracebacks for user errors).
    """
    parser = _Parser(
        prog=f"sophia-jax {prog}",
        description=description.strip().splitlines()[0],
        epilog=(f"Every setting is a config field: 'sophia-jax {prog} --show-config' lists them all with their "
                f"defaults and meaning; set one with --config.FIELD=VALUE (e.g. --config.a.b=1)."),
    )
    parser.add_argument("--config", default=default_config,
                        help=f"config file[:variant] or a built-in name (default: {default_config!r})")
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved config (after overrides) with each field's comment and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    args, rest = parser.parse_known_args([] if argv is None else list(argv))
    overrides = [a for a in rest if a.startswith("--config.")]
    if len(overrides) != len(rest):
        parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
    cfg = load(args.config, overrides)
    if args.show_config:
        print(f"# sophia-jax {prog} --config {args.config}: every field, overridable as --config.FIELD=VALUE")
        print(describe(cfg, field_comments(config_path(args.config)[0])))
        raise SystemExit(0)
    return cfg
