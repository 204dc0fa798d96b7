"""Starts the JAX distributed runtime when a stage runs on several hosts.

Without it every host believes it is process 0 of 1, and ``generate`` would sample the same
shards on every host. Each stage calls ``initialize(cfg.distributed)`` before it touches a device.

Where the settings come from (``cfg.distributed.mode``):

- ``"auto"`` (default): the config's ``coordinator_address`` if set; else the environment
  (``SOPHIA_COORDINATOR_ADDRESS``, ``SOPHIA_NUM_PROCESSES``, ``SOPHIA_PROCESS_ID``, as the
  launch/ scripts export them); else, on a multi-host Cloud TPU VM, ``jax.distributed.initialize()``
  with no arguments (JAX reads the slice from the TPU metadata); else nothing (one process).
- ``"tpu"``: always ``jax.distributed.initialize()`` from the TPU environment.
- ``"off"``: never; a single-process run.

On TPU the launch scripts pin the coordinator address (worker 0, port 8476) because JAX 0.8.1
moved its default TPU coordinator port to 8482, which default firewalls do not open
(jax-ml/jax#35905); process count and id are then still read from the TPU environment.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

from sophia_jax.errors import UserError

logger = logging.getLogger(__name__)

MODES = ("auto", "tpu", "off")
ENV_ADDRESS, ENV_COUNT, ENV_ID = "SOPHIA_COORDINATOR_ADDRESS", "SOPHIA_NUM_PROCESSES", "SOPHIA_PROCESS_ID"


class DistributedConfigError(UserError):
    """A distributed section or environment that cannot start the runtime."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``initialize`` will do: ``kind`` is 'none', 'tpu' or 'explicit'. None = JAX detects it."""

    kind: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    source: str = ""


def _int_or_none(value, name: str, source: str) -> int | None:
    if value in (None, "", -1):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedConfigError(f"{source}: {name} must be an integer, got {value!r}") from None


def _on_multihost_tpu_vm(environ) -> bool:
    # Cloud TPU VMs of a multi-host slice list every worker here (comma-separated).
    return "," in environ.get("TPU_WORKER_HOSTNAMES", "")


def plan(section, environ=None) -> Plan:
    """Decides how to start the runtime from a ``distributed`` config section and the environment."""
    environ = os.environ if environ is None else environ
    mode = section.mode
    if mode not in MODES:
        raise DistributedConfigError(f"config field 'distributed.mode' is {mode!r}; known: {', '.join(MODES)}")
    if mode == "off":
        return Plan("none", source="distributed.mode='off'")
    if mode == "tpu":
        return Plan("tpu", coordinator_address=section.coordinator_address or None, source="distributed.mode='tpu'")
    if section.coordinator_address:
        address, count, pid, source = (section.coordinator_address, section.num_processes, section.process_id,
                                       "config section 'distributed'")
    elif environ.get(ENV_ADDRESS):
        address, count, pid, source = (environ[ENV_ADDRESS], environ.get(ENV_COUNT), environ.get(ENV_ID),
                                       f"environment {ENV_ADDRESS}")
    elif _on_multihost_tpu_vm(environ):
        return Plan("tpu", source="TPU_WORKER_HOSTNAMES")
    else:
        return Plan("none", source="no coordinator configured")
    count = _int_or_none(count, "num_processes", source)
    pid = _int_or_none(pid, "process_id", source)
    if ":" not in address:
        raise DistributedConfigError(f"{source}: coordinator_address {address!r} must be host:port")
    if count == 1:
        return Plan("none", source=f"{source} with one process")
    if count is not None and pid is not None and not 0 <= pid < count:
        raise DistributedConfigError(f"{source}: process_id {pid} is not in [0, {count})")
    return Plan("explicit", address, count, pid, source)


def initialize(section, environ=None) -> Plan:
    """Starts ``jax.distributed`` as ``plan`` decides; a no-op for one process or a second call."""
    p = plan(section, environ)
    if p.kind == "none" or jax.distributed.is_initialized():
        return p
    logger.info("jax.distributed.initialize (%s): coordinator=%s processes=%s id=%s",
                p.source, p.coordinator_address, p.num_processes, p.process_id)
    # Missing pieces (None) are filled in by JAX's cluster detection, e.g. on TPU VMs.
    jax.distributed.initialize(coordinator_address=p.coordinator_address, num_processes=p.num_processes,
                               process_id=p.process_id)
    return p
