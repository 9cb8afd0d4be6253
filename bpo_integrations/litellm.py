"""BPO as a LiteLLM callback: the LiteLLM proxy (and SDK) rewrites prompts on their way out.

LiteLLM runs a ``CustomLogger``'s ``async_pre_call_hook`` on every proxy request before it is
routed, and ``async_pre_call_deployment_hook`` on every ``litellm.acompletion`` call of the SDK;
:class:`BPOCallback` rewrites the newest user message in both, exactly once per request (the
proxy's calls reach the deployment hook too, already marked as done). LiteLLM's synchronous
``litellm.completion`` runs no request-rewriting hook: use ``acompletion`` or the proxy.

Needs ``pip install 'bpo-integrations[litellm]'``. LiteLLM 1.107.0 was a compromised release
(PyPI and Docker images); the extra asks for ``litellm>=1.108``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from bpo_integrations.optimizer import BPOOptimizer
from bpo_integrations.proxy.outcome import Outcome
from bpo_integrations.proxy.rewrite import Skip, messages_target

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "BPOCallback needs LiteLLM: pip install 'bpo-integrations[litellm]' (litellm>=1.108)"
    ) from error

logger = logging.getLogger("bpo_integrations.litellm")

CONTROL_KEY = "bpo"
"""Metadata key (of a virtual key, a team, or a request) that turns BPO ``off`` or ``on``."""
RECORD_KEY = "bpo_optimization"
"""Request-metadata key where the callback records what it did (:meth:`Outcome.to_dict`)."""

_CHAT_CALLS = frozenset({"completion", "acompletion"})
_OFF = frozenset({"off", "false", "0", "no"})
_ON = frozenset({"on", "true", "1", "yes"})


class BPOCallback(CustomLogger):
    """Rewrites the newest user message of LiteLLM completion calls with BPO; never fails a call.

    Every outcome is recorded in the request's metadata under ``"bpo_optimization"`` (the rewrite,
    or why the original was kept), where LiteLLM's loggers see it. An optimizer failure keeps the
    original prompt (fail-open).

    Per model: ``skip_models`` (shell-style patterns on the model name the client asked for).
    Per key, team or request: metadata ``{"bpo": "off"}`` skips; with ``opt_in=True`` only
    requests whose key, team or own metadata say ``{"bpo": "on"}`` are optimized. A request's own
    setting wins over its key's, and the key's over its team's.

    Args:
        optimizer: the optimizer; ``None`` builds one on first use from the environment
            (``BPO_BACKEND``: ``local``, ``tgi`` or ``openai``; ``BPO_ENDPOINT``, ``BPO_MODEL``,
            ``BPO_TIMEOUT`` in seconds, default 10), so that a config file can name
            :data:`proxy_handler` directly.
        skip_models: model names left alone.
        opt_in: optimize only what metadata turned on.

    Examples:
        The SDK (``acompletion``)::

            import litellm
            from bpo_integrations import BPOOptimizer
            from bpo_integrations.backends import TGIBackend
            from bpo_integrations.litellm import BPOCallback

            litellm.callbacks = [BPOCallback(BPOOptimizer(TGIBackend("http://localhost:8080")))]
            response = await litellm.acompletion(  # the model answers the rewrite
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Why?"}]
            )

        The LiteLLM proxy's ``config.yaml`` (the optimizer from ``BPO_*`` variables)::

            litellm_settings:
              callbacks: bpo_integrations.litellm.proxy_handler
    """

    def __init__(
        self,
        optimizer: BPOOptimizer | None = None,
        *,
        skip_models: Sequence[str] = (),
        opt_in: bool = False,
    ) -> None:
        if isinstance(skip_models, str):
            raise TypeError("skip_models takes a list of patterns, not a single string")
        super().__init__()
        self._optimizer = optimizer
        self.skip_models = tuple(skip_models)
        self.opt_in = opt_in

    @property
    def optimizer(self) -> BPOOptimizer:
        if self._optimizer is None:
            self._optimizer = optimizer_from_env(os.environ)
        return self._optimizer

    # -- LiteLLM's hooks --------------------------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        """The proxy's hook: ``data`` is the request body, plus LiteLLM's ``metadata``."""
        if _call_name(call_type) not in _CHAT_CALLS:
            return data
        settings = [
            getattr(user_api_key_dict, "team_metadata", None),
            getattr(user_api_key_dict, "metadata", None),
        ]
        return await self._rewrite(data, settings)

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """The SDK's hook (``litellm.acompletion``); proxy requests arrive here already done."""
        if _call_name(call_type) not in _CHAT_CALLS:
            return None
        if any(RECORD_KEY in m for m in _metadata_dicts(kwargs)):
            return None
        return await self._rewrite(kwargs, [])

    # -- the work -----------------------------------------------------------------------------

    async def _rewrite(self, data: dict[str, Any], settings: list[Any]) -> dict[str, Any]:
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
            data["metadata"] = metadata
        outcome, messages = await self._optimize(data, [*settings, metadata])
        if messages is not None:
            data["messages"] = messages
        metadata[RECORD_KEY] = outcome.to_dict()
        return data

    async def _optimize(
        self, data: Mapping[str, Any], settings: list[Any]
    ) -> tuple[Outcome, list[Any] | None]:
        choice = _setting(settings)
        if choice is False or (self.opt_in and choice is not True):
            return Outcome(skipped=Skip.OPT_OUT if choice is False else Skip.NOT_OPTED_IN), None
        model = data.get("model")
        if isinstance(model, str) and any(
            fnmatch.fnmatchcase(model, pattern) for pattern in self.skip_models
        ):
            return Outcome(skipped=Skip.MODEL), None
        messages = data.get("messages")
        if not isinstance(messages, list):
            return Outcome(skipped=Skip.INVALID_BODY), None
        target = messages_target(messages)
        if isinstance(target, Skip):
            return Outcome(skipped=target), None
        try:
            outcome = Outcome(result=await self.optimizer.aoptimize(target.prompt))
        except Exception as error:  # on_error="raise", a bad environment, or a bug: fail open
            outcome = Outcome(error=f"{type(error).__name__}: {error}")
        if outcome.fallback_reason is not None:
            logger.warning("kept the original prompt (%s)", outcome.fallback_reason)
        if not outcome.optimized or outcome.result is None:
            return outcome, None
        return outcome, target.rebuild_list(outcome.result.optimized)


def optimizer_from_env(environ: Mapping[str, str]) -> BPOOptimizer:
    """The optimizer that ``BPO_BACKEND``, ``BPO_ENDPOINT``, ``BPO_MODEL``, ``BPO_TIMEOUT`` name.

    Example:
        >>> optimizer_from_env({"BPO_BACKEND": "tgi", "BPO_ENDPOINT": "http://localhost:8080"})
        BPOOptimizer(backend='tgi', mode='stable', iterations=1, timeout=10.0)
    """
    from bpo_integrations.backends import MissingExtraError, create

    timeout = environ.get("BPO_TIMEOUT", "10")
    try:
        budget = float(timeout)
        backend = create(
            environ.get("BPO_BACKEND", "local"),
            endpoint=environ.get("BPO_ENDPOINT") or None,
            model=environ.get("BPO_MODEL") or None,
        )
    except ValueError as error:
        raise ValueError(
            f"bad BPO_* settings for the LiteLLM callback (BPO_TIMEOUT={timeout!r}, "
            f"BPO_BACKEND={environ.get('BPO_BACKEND', 'local')!r}): {error}"
        ) from error
    except MissingExtraError as error:
        raise ValueError(f"bad BPO_* settings for the LiteLLM callback: {error}") from error
    return BPOOptimizer(backend, timeout=budget)


def _call_name(call_type: Any) -> str:
    return str(getattr(call_type, "value", call_type))


def _metadata_dicts(kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = [kwargs.get("metadata"), kwargs.get("litellm_metadata")]
    params = kwargs.get("litellm_params")
    if isinstance(params, dict):
        found.append(params.get("metadata"))
    return [m for m in found if isinstance(m, dict)]


def _setting(layers: list[Any]) -> bool | None:
    """The last ``bpo`` setting given (team, then key, then request): on, off, or unset."""
    choice: bool | None = None
    for layer in layers:
        value = layer.get(CONTROL_KEY) if isinstance(layer, dict) else None
        if isinstance(value, bool):
            choice = value
        elif isinstance(value, str) and value.strip().lower() in _OFF | _ON:
            choice = value.strip().lower() in _ON
    return choice


proxy_handler = BPOCallback()
"""The callback for a LiteLLM proxy's ``config.yaml``; the optimizer comes from ``BPO_*``."""
