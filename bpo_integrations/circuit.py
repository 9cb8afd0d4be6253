"""A circuit breaker: after repeated backend failures, skip the optimizer instead of waiting."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive backend failures.

    While open, prompts pass through unchanged at no added latency (reason ``circuit_open``). After
    ``cooldown_s`` one call probes the backend (``half_open``): success closes the circuit, failure
    opens it for another cool-down. ``failure_threshold=0`` disables the breaker.

    Example:
        >>> breaker = CircuitBreaker(failure_threshold=2, cooldown_s=60)
        >>> breaker.record_failure(); breaker.record_failure()
        >>> breaker.state, breaker.allow()
        ('open', False)
    """

    failure_threshold: int = 5
    cooldown_s: float = 30.0
    consecutive_failures: int = 0
    opened_at: float | None = None
    _probing: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.failure_threshold < 0:
            raise ValueError(f"failure_threshold must be >= 0, got {self.failure_threshold}")
        if self.cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {self.cooldown_s}")

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may go to the backend now (claims the single probe when half-open)."""
        with self._lock:
            state = self.state
            if state == "closed":
                return True
            if state == "half_open" and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self.consecutive_failures = 0
            self.opened_at = None
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self.consecutive_failures += 1
            was_probe = self._probing
            self._probing = False
            if self.failure_threshold and (
                was_probe or self.consecutive_failures >= self.failure_threshold
            ):
                self.opened_at = time.monotonic()

    def reset(self) -> None:
        self.record_success()

    def __getstate__(self) -> dict[str, float]:
        # Its clock readings belong to this process: a copy starts closed, with the same limits.
        return {"failure_threshold": self.failure_threshold, "cooldown_s": self.cooldown_s}

    def __setstate__(self, state: dict[str, float]) -> None:
        self.__init__(**state)  # type: ignore[misc]
