"""The ``bpo_integrations`` logger: a warning once per cause of fallback, a debug line per prompt.

The package logger has no handler of its own. In a program that configures no logging, Python's
last-resort handler prints WARNING records to stderr, so a chain that silently answers with the
original prompt (server down, model unknown, extra missing) says so once; DEBUG and INFO lines
stay off. Everything else is the standard logging configuration:
``logging.getLogger("bpo_integrations").setLevel(logging.ERROR)`` silences the warnings,
``logging.basicConfig(level=logging.DEBUG)`` shows a line per optimization.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable

from bpo_integrations.result import FallbackReason

logger = logging.getLogger("bpo_integrations")

REPEAT_AFTER_S = 600.0
"""A cause that keeps failing is warned about again after this many seconds, with a count."""

_FIXES: dict[FallbackReason, str] = {
    FallbackReason.BACKEND_UNAVAILABLE: "check that the optimizer's server runs at that address",
    FallbackReason.BACKEND_OVERLOADED: (
        "the server stayed overloaded through the retries: raise max_retries or timeout, or add "
        "capacity"
    ),
    FallbackReason.BACKEND_ERROR: (
        "the request itself failed: fix what the error names (model, extra, key)"
    ),
    FallbackReason.TIMEOUT: (
        "raise BPOOptimizer(timeout=...) or use a faster backend (a GPU server, mode='greedy')"
    ),
    FallbackReason.CIRCUIT_OPEN: "the earlier warning says why the backend failed",
    FallbackReason.INPUT_TOO_LONG: (
        "optimize only the question and pass documents as context (optimize(prompt, "
        "context=...), BPORunnable(context_key=...)), or raise max_input_chars"
    ),
    FallbackReason.UNEXPECTED_ERROR: (
        "this is a bug in the backend; the traceback is logged at DEBUG"
    ),
}
"""Causes worth a WARNING, with the fix to suggest. Guard rejections are INFO, empty input DEBUG."""

_lock = threading.Lock()
_seen: dict[Hashable, tuple[float, int]] = {}


def fallback(backend: Hashable, backend_name: str, kind: FallbackReason, detail: str) -> None:
    """Log that a prompt fell back: WARNING once per ``(backend, kind)`` and then rate-limited."""
    if kind is FallbackReason.EMPTY_INPUT:
        logger.debug("prompt not optimized: empty input")
        return
    level = logging.WARNING if kind in _FIXES else logging.INFO
    if not logger.isEnabledFor(level):
        return
    key = (backend, kind)
    now = time.monotonic()
    with _lock:
        last, suppressed = _seen.get(key, (None, 0))
        due = last is None or now - last >= REPEAT_AFTER_S
        _seen[key] = (now, 0) if due else (last, suppressed + 1)  # type: ignore[assignment]
    reason = kind.message(detail)
    if not due:
        logger.debug("the %s optimizer fell back again (%s)", backend_name, reason)
        return
    fix = _FIXES.get(kind, "the rewrite was rejected; the prompt went on unchanged")
    again = f" ({suppressed} more since the last warning)" if suppressed else ""
    logger.log(
        level,
        "the %s optimizer fell back to the original prompt%s: %s. Fix: %s. Further fallbacks "
        "of this kind are logged at DEBUG for %d minutes.",
        backend_name,
        again,
        reason,
        fix,
        REPEAT_AFTER_S // 60,
    )


def reset() -> None:
    """Forget which causes were warned about (for tests, and after fixing a deployment)."""
    with _lock:
        _seen.clear()
