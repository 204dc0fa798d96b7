"""The ``sophia-jax`` command: one entry point, one library function per subcommand.

Subcommands are imported lazily so ``sophia-jax demo`` does not pay for the converter's imports.
Every command parses its settings with ``configs.loading.command_config``; this module holds the
one error contract: a ``UserError`` (bad config, missing file, unreadable data) prints one line
``sophia-jax <command>: error: <message>`` and exits 2, with its traceback only under
``--debug`` or ``SOPHIA_JAX_DEBUG=1``; anything else is a bug, keeps its traceback and exits 1.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

from sophia_jax.errors import UserError

# name -> ("module:function", help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "demo": ("sophia_jax.demo:main", "SOPHIA learning on a generated visual-math world, with Table 5 ablations"),
    "forward": ("sophia_jax.forward:main", "one jitted forward pass of a model preset: shapes and timing"),
    "generate": ("sophia_jax.sophia.commands:generate_main", "SOPHIA behaviour model: captions, reasoning, rewards, store"),
    "select": ("sophia_jax.sophia.commands:select_main", "re-select stored trajectories with another alpha / Keep-N"),
    "train": ("sophia_jax.training.commands:train_main", "SOPHIA policy update on a trajectory store (resumable)"),
    "warmup": ("sophia_jax.training.commands:warmup_main", "warm-up fine-tuning of the policy on general VQA data"),
    "eval": ("sophia_jax.evaluation.commands:eval_main", "benchmark pass@1 / pass@k from the published files (resumable)"),
    "convert": ("sophia_jax.checkpoint.convert:main", "Hugging Face checkpoint -> Orbax"),
    "aot": ("sophia_jax.aot:aot_main", "compile a stage's train step or sampler programs for a TPU slice from this host: memory, FLOPs, time"),
    "export": ("sophia_jax.checkpoint.export:main", "Orbax checkpoint -> Hugging Face (transformers-native)"),
}


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sophia_jax")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from sophia_jax import __version__

        return __version__


def usage() -> str:
    lines = ["usage: sophia-jax <command> [--config NAME_OR_PATH[:variant]] [--config.FIELD=VALUE ...]",
             "                  [--show-config] [--debug]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "'sophia-jax <command> --help' for a command's options, "
              "'sophia-jax <command> --show-config' for its config fields and defaults",
              "'sophia-jax --version' for the version"]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split("\n")) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SOPHIA_JAX_DEBUG", "") not in ("", "0")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"sophia-jax {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sophia-jax: error: unknown command {name!r}; commands: {', '.join(COMMANDS)} (see --help)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every read and write at INFO
    module, function = COMMANDS[name][0].split(":")
    try:
        return int(getattr(importlib.import_module(module), function)(rest) or 0)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"sophia-jax {name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help and --show-config finish early
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1


if __name__ == "__main__":
    sys.exit(main())
