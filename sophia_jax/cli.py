"""The ``sophia-jax`` command: one entry point, one library function per subcommand.

Subcommands are imported lazily so ``sophia-jax demo`` does not pay for the converter's imports.
"""

from __future__ import annotations

import importlib
import logging
import sys

# name -> ("module:function", help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "demo": ("sophia_jax.demo:main", "the SOPHIA behaviour model end to end on a toy world (CPU, ~1 min)"),
    "forward": ("sophia_jax.forward:main", "one jitted forward pass of a model preset: shapes and timing"),
    "generate": ("sophia_jax.sophia.commands:generate_main", "SOPHIA behaviour model: captions, reasoning, rewards, store"),
    "select": ("sophia_jax.sophia.commands:select_main", "re-select stored trajectories with another alpha / Keep-N"),
    "train": ("sophia_jax.training.commands:train_main", "SOPHIA policy update on a trajectory store (resumable)"),
    "warmup": ("sophia_jax.training.commands:warmup_main", "warm-up fine-tuning of the policy on general VQA data"),
    "convert": ("sophia_jax.checkpoint.convert:main", "Hugging Face checkpoint -> Orbax"),
    "export": ("sophia_jax.checkpoint.export:main", "Orbax checkpoint -> Hugging Face (transformers-native)"),
}


def usage() -> str:
    lines = ["usage: sophia-jax <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "run 'sophia-jax <command> --help' for a command's options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sophia-jax: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every read and write at INFO
    module, function = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
