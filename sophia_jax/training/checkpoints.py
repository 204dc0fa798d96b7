"""Training checkpoints: train state and data-iterator positions, saved together, restored exactly.

Layout under ``<output_dir>/checkpoints/<step>/`` (Orbax ``CheckpointManager``):

    state/   trainable parameters, optimizer state and step (each host writes its own shards)
    data/    JSON {"process_<i>": iterator state} for every process, so each host resumes its own
             slice of the data with exactly the next example (the MaxText way; re-reading and
             skipping, as Tunix does, loses or repeats data)

Saves are asynchronous (training continues while the previous step's arrays are written) and a
step directory becomes visible only once complete, so a kill at any moment leaves the previous
checkpoints intact. Restoring takes abstract targets carrying the *current* run's shardings, so
a run can resume on another mesh shape.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


def _gather_json(obj) -> dict:
    """{"process_<i>": obj of process i} on every process (a small all-gather of JSON bytes)."""
    if jax.process_count() == 1:
        return {"process_0": obj}
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    size = int(np.max(multihost_utils.process_allgather(np.array([data.size]))))
    padded = np.zeros(size, np.uint8)
    padded[: data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return {f"process_{i}": json.loads(bytes(row).rstrip(b"\0").decode()) for i, row in enumerate(rows)}


class TrainCheckpoints:
    """Every ``every`` steps (and on demand, e.g. at preemption), keeping the last ``keep``."""

    def __init__(self, directory: str, *, every: int, keep: int, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=max(keep, 1),
            enable_async_checkpointing=asynchronous, create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state, *, force: bool = False) -> bool:
        """Starts saving (returns at once when asynchronous); False when not due at this step."""
        data = _gather_json(data_state)
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)), force=force)

    def restore(self, abstract_state, step: int | None = None):
        """(state placed on the abstract target's shardings, this process's data state), or None."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        data = restored["data"]
        key = f"process_{jax.process_index()}"
        if key not in data:
            raise RuntimeError(f"checkpoint {self.directory}/{step} has data state for {sorted(data)}, "
                               f"not for {key}: resume with the same number of processes")
        return restored["state"], data[key]

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
