"""Process pool that scores trajectories with a hard per-item timeout.

sympy can hang or exhaust memory on hostile answers (``9^{9^{9^9}}``,
deep nesting), and a Python thread cannot be interrupted inside C code,
so every judge call runs in a separate worker process.  The parent only
does bookkeeping: it hands one item at a time to each idle worker and
waits on the workers' pipes with ``selectors``.  When an item exceeds
its wall-clock budget the worker is killed (SIGKILL) and replaced; when a
worker dies on its own the item is reported as a crash.  Either way the
item gets reward 0 with a reason and the batch carries on.

Workers are fresh interpreters running :mod:`._worker` (not
``multiprocessing`` children): see that module for why this is the only
way to be sure they never import jax.  They start once and are reused,
so sympy's import cost is paid per worker, not per item.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .reward import Reward

__all__ = ["VerifierPool", "WorkerStartupError"]

_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")


class WorkerStartupError(RuntimeError):
    """Workers repeatedly failed to start (broken install, not a bad item)."""


@dataclass(eq=False)  # identity semantics: workers are looked up by object
class _Worker:
    proc: subprocess.Popen
    started: float
    state: str = "starting"  # starting | idle | busy
    buf: bytearray = field(default_factory=bytearray)
    item: int | None = None  # index into the current batch
    rid: int | None = None  # request id of the item in flight
    deadline: float = 0.0
    extracted: str | None = None


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "worker died"
    if rc < 0:
        try:
            return f"worker killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"worker killed by signal {-rc}"
    return f"worker exited with code {rc}"


class VerifierPool:
    """Score ``(gold, trajectory, choices)`` items in worker processes.

    Args:
        num_workers: worker processes (default: half the CPUs, 1..8).
        timeout: wall-clock seconds allowed per item, counted from the
            moment the item is handed to a ready worker.
        startup_timeout: seconds a new worker may take to import sympy.
        memory_limit_mb: address-space limit per worker (``RLIMIT_AS``)
            so a runaway expression raises MemoryError instead of
            swapping the host; None disables it.
        judge_kwargs: forwarded to :func:`~sophia_jax.verify.judge.judge`
            (``rel_tol``, ``abs_tol``, ``lenient_percent``).
        scorer: ``"module:function"`` inside this package run per item;
            the default is :func:`~sophia_jax.verify.reward.score_trajectory`
            (tests select the misbehaving scorers in ``_testing``).

    Use as a context manager, or call :meth:`close`.  :meth:`score` is
    serialised by a lock, so a pool can be shared between threads.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout: float = 5.0,
        *,
        startup_timeout: float = 120.0,
        memory_limit_mb: int | None = 4096,
        judge_kwargs: Mapping | None = None,
        scorer: str = "reward:score_trajectory",
        python: str | None = None,
    ):
        if num_workers is None:
            num_workers = max(1, min(8, (os.cpu_count() or 2) // 2))
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        mod, sep, fn = scorer.partition(":")
        if not sep or not mod.isidentifier() or not fn.isidentifier():
            raise ValueError(f"scorer must look like 'module:function', got {scorer!r}")
        self.scorer = scorer
        self.num_workers = int(num_workers)
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self._config = json.dumps(
            {"scorer": scorer, "judge_kwargs": dict(judge_kwargs or {}), "memory_limit_mb": memory_limit_mb}
        )
        self._python = python or sys.executable
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._workers: list[_Worker] = []
        self._next_rid = 0
        self._startup_failures = 0
        self._closed = False
        #: Counters for monitoring: items scored, timeouts, crashes, restarts.
        self.stats = {"items": 0, "timeouts": 0, "crashes": 0, "restarts": 0}
        for _ in range(self.num_workers):
            self._workers.append(self._spawn())

    # -- public API -------------------------------------------------------------

    def score(self, items: Iterable[Sequence | Mapping]) -> list[Reward]:
        """Rewards for ``items``, in input order.

        Each item is ``(gold, text)``, ``(gold, text, choices)`` or a
        mapping with keys ``gold``, ``text`` and optional ``choices`` and
        ``options`` (keyword arguments for the scorer of this item only,
        over the pool's ``judge_kwargs``; JSON-serialisable).
        Never raises because of an item: timeouts and crashes come back
        as reward 0 with reason ``"timeout after ..."`` / ``"crash: ..."``.
        """
        reqs = [self._as_request(it) for it in items]
        with self._lock:
            if self._closed:
                raise RuntimeError("VerifierPool is closed")
            return self._run(reqs)

    def score_trajectory(self, gold: str, text: str | None, choices=None) -> Reward:
        """Score a single trajectory (see :meth:`score`)."""
        return self.score([(gold, text, choices)])[0]

    def close(self) -> None:
        """Stop all workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            self._stop(w, graceful=True)
        self._workers.clear()
        self._sel.close()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; explicit close() is preferred
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _as_request(item) -> dict:
        options = {}
        if isinstance(item, Mapping):
            gold, text, choices = item["gold"], item.get("text"), item.get("choices")
            options = dict(item.get("options") or {})
        else:
            if len(item) not in (2, 3):
                raise ValueError("items must be (gold, text) or (gold, text, choices)")
            gold, text = item[0], item[1]
            choices = item[2] if len(item) == 3 else None
        if isinstance(choices, Mapping):
            choices = {str(k): str(v) for k, v in choices.items()}
        elif choices is not None:
            choices = [str(c) for c in choices]
        return {
            "gold": None if gold is None else str(gold),
            "text": None if text is None else str(text),
            "choices": choices,
            "options": options,
        }

    def _spawn(self) -> _Worker:
        proc = subprocess.Popen(
            [self._python, _WORKER_SCRIPT, self._config],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        os.set_blocking(proc.stdout.fileno(), False)
        w = _Worker(proc=proc, started=time.monotonic())
        self._sel.register(proc.stdout, selectors.EVENT_READ, w)
        return w

    def _stop(self, w: _Worker, *, graceful: bool) -> None:
        try:
            self._sel.unregister(w.proc.stdout)
        except (KeyError, ValueError):
            pass
        if graceful and w.proc.poll() is None:
            try:
                w.proc.stdin.close()  # EOF: the worker loop ends
                w.proc.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if w.proc.poll() is None:
            w.proc.kill()
        try:
            w.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        for f in (w.proc.stdin, w.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def _replace(self, w: _Worker) -> None:
        self._stop(w, graceful=False)
        self._workers[self._workers.index(w)] = self._spawn()
        self.stats["restarts"] += 1

    def _run(self, reqs: list[dict]) -> list[Reward]:
        results: list[Reward | None] = [None] * len(reqs)
        pending = deque(range(len(reqs)))
        remaining = len(reqs)

        def finish(w: _Worker, reward: Reward) -> None:
            nonlocal remaining
            if w.item is not None and results[w.item] is None:
                results[w.item] = reward
                remaining -= 1
            w.item = w.rid = None
            w.extracted = None
            w.state = "idle"

        def fail(w: _Worker, reason: str, counter: str) -> None:
            """Worker ``w`` is gone or hung: settle its item, start another."""
            if w.state == "busy":
                self.stats[counter] += 1
                finish(w, Reward(0.0, w.extracted, reason))
            elif w.state == "starting":
                self._startup_failures += 1
                if self._startup_failures > 3 * self.num_workers + 3:
                    raise WorkerStartupError(f"verifier workers keep failing to start ({reason})")
            self._replace(w)

        try:
            while remaining:
                for w in list(self._workers):
                    if w.state == "idle" and pending:
                        self._dispatch(w, pending.popleft(), reqs, fail)
                now = time.monotonic()
                deadlines = [w.deadline for w in self._workers if w.state == "busy"]
                deadlines += [w.started + self.startup_timeout for w in self._workers if w.state == "starting"]
                wait = max(0.0, min(deadlines) - now) if deadlines else 0.05
                for key, _ in self._sel.select(timeout=wait):
                    w: _Worker = key.data
                    if w not in self._workers:
                        continue
                    self._read(w, finish, fail)
                now = time.monotonic()
                for w in list(self._workers):
                    if w.state == "busy" and now >= w.deadline:
                        fail(w, f"timeout after {self.timeout:g}s", "timeouts")
                    elif w.state == "starting" and now >= w.started + self.startup_timeout:
                        fail(w, f"startup timeout after {self.startup_timeout:g}s", "crashes")
        except BaseException:
            # Interrupted mid-batch (e.g. KeyboardInterrupt): busy workers
            # hold items of a batch nobody waits for any more; restart them
            # so the next call does not receive stale answers.
            for w in list(self._workers):
                if w.state == "busy" and not self._closed:
                    w.state = "idle"
                    self._replace(w)
            raise
        self.stats["items"] += len(reqs)
        return results  # type: ignore[return-value]

    def _dispatch(self, w: _Worker, idx: int, reqs: list[dict], fail) -> None:
        self._next_rid += 1
        w.rid, w.item, w.state = self._next_rid, idx, "busy"
        w.extracted = None
        w.deadline = time.monotonic() + self.timeout
        line = (json.dumps({"id": w.rid, **reqs[idx]}) + "\n").encode("utf-8")
        try:
            w.proc.stdin.write(line)
            w.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            fail(w, f"crash: {_describe_exit(w.proc.poll())} (while sending item)", "crashes")

    def _read(self, w: _Worker, finish, fail) -> None:
        try:
            chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # EOF: the worker died
            try:
                rc = w.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                rc = None
            fail(w, f"crash: {_describe_exit(rc)}", "crashes")
            return
        w.buf.extend(chunk)
        while True:
            nl = w.buf.find(b"\n")
            if nl < 0:
                return
            line = bytes(w.buf[:nl])
            del w.buf[: nl + 1]
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not ours; the protocol fd only carries JSON
            if msg.get("ready"):
                if w.state == "starting":
                    w.state = "idle"
                    self._startup_failures = 0
                continue
            if w.state != "busy" or msg.get("id") != w.rid:
                continue  # stale message from an abandoned request
            if "reward" in msg:
                extracted = msg.get("extracted")
                if extracted is None:
                    extracted = w.extracted
                finish(w, Reward(float(msg["reward"]), extracted, str(msg.get("reason", ""))))
            elif "extracted" in msg:
                w.extracted = msg["extracted"]
