"""Prints a command of the README's first ```bash block, so CI runs exactly what a user reads.

    python3 .ci/readme_command.py main   # the line under '# run the main job ...'
    python3 .ci/readme_command.py test   # the line under '# run the tests ...'
"""

import pathlib
import sys

LABELS = {"main": "# run the main job", "test": "# run the tests"}


def readme_command(which: str, readme: str | None = None) -> str:
    text = readme if readme is not None else (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    for i, line in enumerate(block[:-1]):
        if line.startswith(LABELS[which]):
            return block[i + 1].strip()
    raise SystemExit(f"README.md: no {LABELS[which]!r} line in the first bash block")


if __name__ == "__main__":
    print(readme_command(sys.argv[1]))
