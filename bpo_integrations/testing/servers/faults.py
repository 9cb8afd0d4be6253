"""The failures a :class:`~bpo_integrations.testing.servers.ScriptedServer` can be scripted with."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal[
    "status", "hang", "malformed_json", "drop_connection", "empty", "runaway", "stall", "break"
]
KINDS = typing.get_args(FaultKind)
MAX_HANG_S = 120.0


@dataclass(frozen=True)
class Fault:
    """One scripted failure, consumed by the next request the server receives.

    - ``status``: answer HTTP ``status`` with a TGI ``ErrorResponse`` body, and a ``Retry-After``
      header when ``retry_after`` is set.
    - ``hang``: wait ``seconds`` (at most 120, and never past :meth:`ScriptedServer.stop`), then
      answer normally.
    - ``malformed_json``: answer 200 with a truncated JSON body (or SSE event).
    - ``drop_connection``: close the socket without answering.
    - ``stall``: a stream sends its first event, then waits ``seconds`` (or until
      :meth:`ScriptedServer.release`) before the rest; a plain answer waits before it is sent.
    - ``break``: a stream sends its first event (chunked) and closes the socket; a plain answer
      sends half its body (``Content-Length`` says the whole) and closes the socket.
    - ``empty``: answer an empty completion.
    - ``runaway``: answer a very long completion with ``finish_reason`` ``"length"``.
    """

    kind: FaultKind
    status: int = 503
    retry_after: float | None = None
    seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: choose one of {KINDS}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"a fault status must be an HTTP error (400-599), got {self.status}")
        if not 0 <= self.seconds <= MAX_HANG_S:
            raise ValueError(f"hang seconds must be in [0, {MAX_HANG_S}], got {self.seconds}")


def is_kind(fault: Fault | None, kind: FaultKind) -> bool:
    """Whether ``fault`` is there and of ``kind``."""
    return fault is not None and fault.kind == kind
