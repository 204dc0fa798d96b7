"""Where training metrics go: TensorBoard event files, a JSONL twin, and a console bar.

TensorBoard files are written with tensorboardX (no TensorFlow dependency). Only process 0
writes. On resume, JSONL lines past the restored step are dropped first, so the files describe
exactly the steps of the final parameters, once each.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
from tqdm import tqdm


def truncate_jsonl(path: str, last_step: int) -> None:
    """Keeps the lines of ``path`` whose "step" is at most ``last_step`` (atomic rewrite)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line)
            except (ValueError, KeyError):
                break  # a line cut by a kill: it and anything after it are dropped
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class MetricsWriter:
    """``write(step, {name: float})`` to TensorBoard and ``metrics.jsonl`` in ``directory``."""

    def __init__(self, directory: str, *, start_step: int, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.jsonl = os.path.join(directory, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(directory, exist_ok=True)
        truncate_jsonl(self.jsonl, start_step)
        self._file = open(self.jsonl, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(directory, "tensorboard"), purge_step=start_step + 1)

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in clean.items():
                if math.isfinite(value):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class ProgressBar:
    """step / total, tokens/s, loss and ETA on one console line (process 0 only)."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True,
                        disable=not enabled or jax.process_index() != 0)
        self.last = time.perf_counter()

    def update(self, loss: float, tokens: int) -> float:
        """Advances one step; returns this step's tokens/s."""
        now = time.perf_counter()
        rate = tokens / max(now - self.last, 1e-9)
        self.last = now
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
        self.bar.update(1)
        return rate

    def close(self) -> None:
        self.bar.close()
