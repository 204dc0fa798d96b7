"""train x internvl3_38b x v6e-64 (rows of 8,192 tokens: a 32,768-token 38B row needs more than a v6e chip)."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_slices", os.path.join(os.path.dirname(__file__), "_slices.py"))
_slices = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_slices)


def get_config(arg: str = ""):
    return _slices.experiment("train", "internvl3_38b", "v6e-64")
