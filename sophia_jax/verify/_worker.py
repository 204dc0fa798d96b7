"""Entry point of a verifier worker process (run as a script, not imported).

The parent starts ``python _worker.py CONFIG_JSON`` and talks JSON lines:

* worker -> parent ``{"ready": true, "pid": ...}`` once imports are done
  (so sympy's import time is not charged to the first item's timeout);
* parent -> worker ``{"id": n, "gold": ..., "text": ..., "choices": ..., "options": {...}}``
  (``options``: this item's keyword arguments for the scorer);
* worker -> parent ``{"id": n, "extracted": ...}`` (progress: the answer
  about to be judged) then ``{"id": n, "reward": ..., "reason": ...}``.

Why a script instead of ``multiprocessing``: a spawned/forkserver child
re-imports the parent's ``__main__`` module, and a training script's
``__main__`` imports jax.  Starting a clean interpreter on this file
guarantees workers never import jax (nor ``sophia_jax/__init__``): the
verify package is loaded from its directory under a private name.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import sys

_PKG_NAME = "_sophia_verify_worker_pkg"


def _load_package(pkg_dir: str):
    spec = importlib.util.spec_from_file_location(
        _PKG_NAME, os.path.join(pkg_dir, "__init__.py"), submodule_search_locations=[pkg_dir]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PKG_NAME] = module
    spec.loader.exec_module(module)
    return module


def _write(fd: int, obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode("utf-8")
    while data:
        n = os.write(fd, data)
        data = data[n:]


def main() -> None:
    pkg_dir = os.path.dirname(os.path.abspath(__file__))
    # Python put this script's directory first on sys.path; drop it so
    # sibling modules (pool.py, extract.py...) cannot shadow other names.
    if sys.path and os.path.abspath(sys.path[0] or ".") == pkg_dir:
        sys.path.pop(0)
    config = json.loads(sys.argv[1])
    # Ctrl-C in the terminal reaches the whole process group; the parent
    # decides when workers stop (it closes stdin or kills them).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Keep the protocol on a private copy of stdout; anything a library
    # prints goes to stderr instead of corrupting the JSON stream.
    proto = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    _load_package(pkg_dir)
    mod_name, _, fn_name = config["scorer"].partition(":")
    scorer = getattr(importlib.import_module(f"{_PKG_NAME}.{mod_name}"), fn_name)
    # Warm up sympy and math-verify's parser now, so no item's timeout pays for it.
    importlib.import_module(f"{_PKG_NAME}.sympy_bridge").math_verify_equal("x", "x")
    judge_kwargs = config.get("judge_kwargs") or {}

    mem = config.get("memory_limit_mb")
    if mem:
        try:
            import resource

            limit = int(mem) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass  # best effort; the timeout still bounds the damage

    _write(proto, {"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        rid = req["id"]

        def on_extracted(ans, _rid=rid):
            _write(proto, {"id": _rid, "extracted": ans})

        extracted = None
        try:
            kwargs = {**judge_kwargs, **(req.get("options") or {})}
            r = scorer(req["gold"], req["text"], req.get("choices"), on_extracted=on_extracted, **kwargs)
            out = {"id": rid, "reward": float(r.reward), "extracted": r.extracted, "reason": r.reason}
        except BaseException as e:  # noqa: BLE001 - includes RecursionError, MemoryError
            out = {
                "id": rid,
                "reward": 0.0,
                "extracted": extracted,
                "reason": f"error: {type(e).__name__}: {str(e)[:200]}",
            }
        _write(proto, out)


if __name__ == "__main__":
    main()
