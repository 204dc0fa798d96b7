"""Compile a model preset's forward pass for a named TPU slice from this CPU host.

    pip install -e ".[tpu]"   # libtpu provides the TPU compiler; no TPU needed
    python tools/aot_compile.py --preset internvl3_38b --topology v5p:2x2x2 --mesh 1,2,4 --batch 8 --length 4096
"""

import argparse
import os
import sys

os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # silence libtpu's multi-host probe

from sophia_jax import aot, sharding  # noqa: E402
from sophia_jax.configs import models  # noqa: E402
from sophia_jax.models import RuntimeConfig  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="internvl3_8b", help=f"one of {sorted(models.PRESETS)}")
    p.add_argument("--topology", default="v5p:2x2x1", help="TPU slice, e.g. v5p:2x2x2, v5e:4x4")
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--attention", default="fused", choices=["xla", "fused"])
    args = p.parse_args(argv)
    config = models.model_config(models.get_config(args.preset))
    runtime = RuntimeConfig(dtype=args.dtype, param_dtype=args.dtype, attention=args.attention)
    mesh = sharding.MeshConfig(*(int(x) for x in args.mesh.split(",")))
    report = aot.compile_forward(config, runtime, args.topology, mesh, args.batch, args.length)
    print(f"{args.preset}: {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
