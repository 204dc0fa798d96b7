"""Test-only scorers for exercising :class:`VerifierPool` failure handling.

Select one with ``VerifierPool(scorer="_testing:<name>")``.  They behave
like :func:`~sophia_jax.verify.reward.score_trajectory` except on a
marker string in the trajectory, where they misbehave on purpose.  They
live in the package (not in ``tests/``) because workers load only this
package, never test modules.
"""

from __future__ import annotations

import os
import sys
import time

from .reward import Reward, score_trajectory

CRASH_MARKER = "__VERIFY_TEST_CRASH__"
HANG_MARKER = "__VERIFY_TEST_HANG__"


def crash_on_marker(gold, text, choices=None, **kwargs) -> Reward:
    """Kill the worker process abruptly (no exception, no cleanup)."""
    if text and CRASH_MARKER in text:
        os._exit(17)
    return score_trajectory(gold, text, choices, **kwargs)


def hang_on_marker(gold, text, choices=None, **kwargs) -> Reward:
    """Sleep far past any sane timeout, ignoring nothing but SIGKILL."""
    if text and HANG_MARKER in text:
        while True:
            time.sleep(3600)
    return score_trajectory(gold, text, choices, **kwargs)


def report_modules(gold, text, choices=None, **kwargs) -> Reward:
    """Report whether heavy modules (jax) were imported in the worker."""
    heavy = sorted(m for m in ("jax", "jaxlib", "flax", "torch", "sophia_jax") if m in sys.modules)
    return Reward(0.0, None, "modules: " + ",".join(heavy))


def engines_unscreened(gold, text, choices=None, **kwargs) -> Reward:
    """Both equivalence engines on the raw text: no extraction, no code screen.

    The judge refuses code-shaped predictions before any engine sees them; this
    scorer skips that screen so a test can show the engines themselves never run
    such text (our translator only evaluates code it wrote; math-verify's LaTeX
    parser builds sympy objects).
    """
    from .sympy_bridge import Refused, Unsupported, math_verify_equal, to_sympy

    hits = []
    try:
        hits.append(bool(to_sympy(gold) == to_sympy(text)))
    except (Refused, Unsupported):
        hits.append(False)
    try:
        hits.append(math_verify_equal(gold, text))
    except Refused:
        hits.append(False)
    return Reward(1.0 if any(hits) else 0.0, text, f"ours={hits[0]} math-verify={hits[1]}")
