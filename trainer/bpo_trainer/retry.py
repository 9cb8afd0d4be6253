"""What the trainer's remote calls retry (construct, eval, drpo, drpo-eval).

They run under :class:`bpo_integrations.retry.RetryPolicy`, the middleware's one retry policy,
with :func:`is_transient` as ``retry_on``: a bulk job has no latency budget and a request tried
again is cheap, so an HTTP 500 is retried too, beside
:data:`~bpo_integrations.retry.TRANSIENT_STATUS`.

Example:
    >>> from bpo_integrations.errors import BackendError, TransientBackendError
    >>> is_transient(TransientBackendError("busy")), is_transient(BackendError("bad model"))
    (True, False)
"""

from __future__ import annotations

from bpo_integrations import retry

BULK_STATUS = retry.TRANSIENT_STATUS | {500}
"""HTTP statuses a bulk job tries again."""


def is_transient(error: BaseException) -> bool:
    """:func:`bpo_integrations.retry.is_transient`, with an HTTP 500 retried too."""
    return retry.is_transient(error, BULK_STATUS)
