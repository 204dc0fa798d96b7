"""Superseded by ``sophia-jax aot`` (sophia_jax/aot.py); kept as a thin alias for old notes.

    python tools/aot_compile.py --config train --topology v5p:4x4x4 --model internvl3_38b
"""

import sys

from sophia_jax.aot import aot_main

if __name__ == "__main__":
    sys.exit(aot_main())
