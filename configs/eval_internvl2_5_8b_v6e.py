"""eval x internvl2_5_8b x v6e-32 (give --config.model and --config.benchmarks)."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_slices", os.path.join(os.path.dirname(__file__), "_slices.py"))
_slices = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_slices)


def get_config(arg: str = ""):
    return _slices.experiment("eval", "internvl2_5_8b", "v6e-32")
