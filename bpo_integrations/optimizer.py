"""The engine-agnostic optimizer: prompt in, optimized prompt and a result record out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bpo_integrations import _log
from bpo_integrations._loop import concurrent, run_sync
from bpo_integrations.backends.base import Backend
from bpo_integrations.budget import generate_within_budget
from bpo_integrations.cache import LRUCache
from bpo_integrations.circuit import CircuitBreaker
from bpo_integrations.errors import BackendUnavailableError, GuardError, fallback_reason_of
from bpo_integrations.guards import Guards
from bpo_integrations.postprocess import clean_completion
from bpo_integrations.result import FallbackReason, OptimizationResult
from bpo_integrations.settings import GenerationSettings, Mode

OnError = Literal["fallback", "raise"]


@dataclass
class _Item:
    prompt: str
    context: str | None
    current: str
    rounds: list[str]
    key: Hashable | None = None
    error: BaseException | None = None
    done: bool = False


class BPOOptimizer:
    """Rewrites prompts with a BPO model, and never breaks the caller by default.

    Every failure (backend down, timeout, a rewrite that lost protected content) returns the
    original prompt with ``fell_back=True`` and the reason, unless ``on_error="raise"``.

    Args:
        backend: where the optimizer model runs; ``None`` uses the local default model.
        mode: ``"stable"``, ``"aggressive"`` or ``"greedy"`` (see :class:`GenerationSettings`);
            ``None``: the backend's recommended settings, else ``"stable"``.
        settings: full generation settings; overrides ``mode``.
        iterations: rounds of re-optimization (the paper found about four rounds best).
        timeout: latency budget in seconds for one prompt, retries included; ``None``: no limit.
            A rewrite that arrives after it is discarded (``timeout`` fallback), also from a
            backend the budget cannot interrupt (a sync ``CallableBackend`` function run inline).
        on_error: ``"fallback"`` returns the original prompt, ``"raise"`` raises.
        max_retries: retries of transient errors (429, 503, connection resets) within the budget.
        guards: acceptance rules for a rewrite; ``None``: :class:`Guards`, or for the shipped
            default model (``LocalBackend()``) :data:`DEFAULT_MODEL_GUARDS`.
        cache_size: entries of the in-memory LRU cache of rewrites; 0 disables it.
        max_concurrency: prompts (or backend batches) optimized at once by the batch methods;
            ``None``: what the backend serves at once (``backend.max_concurrency``), else 8.
        max_input_chars: longer prompts pass through unchanged (``input_too_long``).
        circuit_breaker: skips the backend after repeated failures (see :class:`CircuitBreaker`).

    A fallback is also logged on the ``bpo_integrations`` logger: a WARNING with the reason and
    the fix once per cause (backend down, timeouts, input too long), then DEBUG lines; each
    optimization is a DEBUG line. ``BPOOptimizer.from_llm(llm)`` uses a LangChain or LlamaIndex
    model you already have. ``with BPOOptimizer(...) as optimizer:`` (or ``async with``) closes
    the backend's clients at the end; an optimizer pickles (clients are made again on load).

    Example:
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.backends import CallableBackend
        >>> opt = BPOOptimizer(CallableBackend(lambda p: f"{p} Please answer in detail."))
        >>> result = opt.optimize("What is BPO?")
        >>> result.text, result.fell_back
        ('What is BPO? Please answer in detail.', False)
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        mode: Mode | None = None,
        settings: GenerationSettings | None = None,
        iterations: int = 1,
        timeout: float | None = 30.0,
        on_error: OnError = "fallback",
        max_retries: int = 2,
        guards: Guards | None = None,
        cache_size: int = 1024,
        max_concurrency: int | None = None,
        max_input_chars: int = 8000,
        circuit_breaker: CircuitBreaker | None = None,
    ) -> None:
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        if on_error not in ("fallback", "raise"):
            raise ValueError(f"on_error must be 'fallback' or 'raise', got {on_error!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if backend is None:
            from bpo_integrations.backends.local import LocalBackend

            backend = LocalBackend()
        if max_concurrency is None:
            max_concurrency = backend.max_concurrency or 8
        self.backend = backend
        if settings is None and mode is None:
            settings = backend.recommended_settings()
        self.settings = settings or GenerationSettings.for_mode(mode or "stable")
        self.iterations = iterations
        self.timeout = timeout
        self.on_error: OnError = on_error
        self.max_retries = max_retries
        self.guards = guards or backend.recommended_guards() or Guards()
        self.cache: LRUCache[OptimizationResult] = LRUCache(cache_size)
        self.max_concurrency = max_concurrency
        self.max_input_chars = max_input_chars
        self.circuit = circuit_breaker or CircuitBreaker()

    @classmethod
    def from_llm(cls, llm: Any, **kwargs: Any) -> BPOOptimizer:
        """An optimizer that runs on an LLM you already have, with the BPO template applied.

        ``llm``: a LangChain chat or completion model (``ChatOpenAI``, ``HuggingFaceEndpoint``,
        a model with ``.bind(...)``) or a LlamaIndex LLM (``OpenAILike``, ``Settings.llm``).
        A chat model gets the BPO instruction and the prompt as the user message, a completion
        model the raw template; async calls use the model's async API. ``kwargs`` go to
        :class:`BPOOptimizer` (``timeout``, ``guards``, ...). The model decodes with its own
        settings (temperature, token limit); only ``stop`` sequences are passed on.

        Example:
            >>> from langchain_core.language_models import GenericFakeChatModel
            >>> chat = GenericFakeChatModel(messages=iter(["Why is the sky blue? Explain."]))
            >>> BPOOptimizer.from_llm(chat).optimize("why sky blue").text
            'Why is the sky blue? Explain.'
        """
        from bpo_integrations.backends import from_llm

        return cls(from_llm(llm), **kwargs)

    def __repr__(self) -> str:
        return (
            f"BPOOptimizer(backend={self.backend.name!r}, mode={self.settings.mode!r}, "
            f"iterations={self.iterations}, timeout={self.timeout})"
        )

    def __enter__(self) -> BPOOptimizer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> BPOOptimizer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- public API ---------------------------------------------------------------------------

    def optimize(
        self,
        prompt: str,
        *,
        context: str | None = None,
        mode: Mode | None = None,
        iterations: int | None = None,
    ) -> OptimizationResult:
        """Optimize one prompt. ``context`` is passed on verbatim, never rewritten."""
        return self.optimize_batch([prompt], contexts=[context], mode=mode, iterations=iterations)[
            0
        ]

    async def aoptimize(
        self,
        prompt: str,
        *,
        context: str | None = None,
        mode: Mode | None = None,
        iterations: int | None = None,
    ) -> OptimizationResult:
        """Async twin of :meth:`optimize`."""
        results = await self.aoptimize_batch(
            [prompt], contexts=[context], mode=mode, iterations=iterations
        )
        return results[0]

    def optimize_batch(
        self,
        prompts: Sequence[str],
        *,
        contexts: Sequence[str | None] | None = None,
        mode: Mode | None = None,
        iterations: int | None = None,
    ) -> list[OptimizationResult]:
        """Optimize many prompts, ``max_concurrency`` at a time; one result per prompt, in order."""
        prepared = self._prepare(prompts, contexts, mode, iterations)
        if all(isinstance(r, OptimizationResult) for r in prepared[0]):
            return list(prepared[0])  # type: ignore[arg-type]
        return run_sync(self._run(*prepared))

    async def aoptimize_batch(
        self,
        prompts: Sequence[str],
        *,
        contexts: Sequence[str | None] | None = None,
        mode: Mode | None = None,
        iterations: int | None = None,
    ) -> list[OptimizationResult]:
        """Async twin of :meth:`optimize_batch`."""
        prepared = self._prepare(prompts, contexts, mode, iterations)
        return await self._run(*prepared)

    def close(self) -> None:
        """Close the backend's clients, connections and workers (it can still be used after)."""
        self.backend.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`: also closes the clients bound to the running loop."""
        aclose = getattr(self.backend, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            self.backend.close()

    # -- internals ----------------------------------------------------------------------------

    def _settings_for(self, mode: Mode | None) -> GenerationSettings:
        if mode is None or mode == self.settings.mode:
            return self.settings
        return GenerationSettings.for_mode(
            mode, max_new_tokens=self.settings.max_new_tokens, seed=self.settings.seed
        )

    def _cache_key(self, prompt: str, settings: GenerationSettings, iterations: int) -> Hashable:
        return (self.backend.cache_identity(), prompt, settings.cache_key(), iterations)

    def _prepare(
        self,
        prompts: Sequence[str],
        contexts: Sequence[str | None] | None,
        mode: Mode | None,
        iterations: int | None,
    ) -> tuple[list[OptimizationResult | _Item], GenerationSettings, int, float]:
        """Validate inputs and answer what needs no backend call (bad input, cache hits)."""
        started = time.perf_counter()
        if isinstance(prompts, str):
            raise TypeError("optimize_batch takes a list of prompts, not a single string")
        if contexts is None:
            contexts = [None] * len(prompts)
        if len(contexts) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(contexts)} contexts")
        rounds = self.iterations if iterations is None else iterations
        if rounds < 1:
            raise ValueError(f"iterations must be >= 1, got {rounds}")
        settings = self._settings_for(mode)
        slots: list[OptimizationResult | _Item] = []
        for prompt, context in zip(prompts, contexts, strict=True):
            if not isinstance(prompt, str):
                raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}")
            if context is not None and not isinstance(context, str):
                raise TypeError(f"a context must be a str or None, got {type(context).__name__}")
            if not prompt.strip():
                empty = FallbackReason.EMPTY_INPUT
                slots.append(self._passthrough(prompt, context, empty, "", started))
            elif len(prompt) > self.max_input_chars:
                detail = f"{len(prompt)} characters, limit {self.max_input_chars}"
                too_long = FallbackReason.INPUT_TOO_LONG
                slots.append(self._passthrough(prompt, context, too_long, detail, started))
            else:
                key = self._cache_key(prompt, settings, rounds) if self.cache.maxsize else None
                hit = None if key is None else self.cache.get(key)
                if hit is None and not self.circuit.allow():
                    skip = FallbackReason.CIRCUIT_OPEN
                    slots.append(self._passthrough(prompt, context, skip, "", started))
                elif hit is not None:
                    latency = time.perf_counter() - started
                    _log.logger.debug("cache hit for %.80r", prompt)
                    slots.append(
                        OptimizationResult(
                            original=prompt,
                            optimized=hit.optimized,
                            backend=hit.backend,
                            latency_s=latency,
                            context=context,
                            rounds=hit.rounds,
                            cached=True,
                        )
                    )
                else:
                    slots.append(
                        _Item(prompt=prompt, context=context, current=prompt, rounds=[], key=key)
                    )
        return slots, settings, rounds, started

    def _passthrough(
        self,
        prompt: str,
        context: str | None,
        kind: FallbackReason,
        detail: str,
        started: float,
    ) -> OptimizationResult:
        if self.on_error == "raise" and kind is FallbackReason.CIRCUIT_OPEN:
            raise BackendUnavailableError(
                f"the {self.backend.name} backend failed {self.circuit.consecutive_failures} times "
                f"in a row; skipped for {self.circuit.cooldown_s}s (circuit open)"
            )
        if self.on_error == "raise" and kind is FallbackReason.INPUT_TOO_LONG:
            raise ValueError(f"prompt not optimized: {kind.message(detail)}")
        logged = detail
        if kind is FallbackReason.CIRCUIT_OPEN:  # the record stays one word, the log says why
            logged = (
                f"the backend failed {self.circuit.consecutive_failures} times in a row and is "
                f"skipped for {self.circuit.cooldown_s}s"
            )
        latency = time.perf_counter() - started  # the decision's, not the log line's
        _log.fallback(self.backend.cache_identity(), self.backend.name, kind, logged)
        return OptimizationResult(
            original=prompt,
            optimized=prompt,
            backend=self.backend.name,
            latency_s=latency,
            context=context,
            fell_back=True,
            fallback_reason=kind,
            fallback_detail=detail,
        )

    async def _run(
        self,
        slots: list[OptimizationResult | _Item],
        settings: GenerationSettings,
        iterations: int,
        started: float,
    ) -> list[OptimizationResult]:
        items = [s for s in slots if isinstance(s, _Item)]
        if items:
            chunk = max(1, self.backend.max_batch_size)
            groups = [items[i : i + chunk] for i in range(0, len(items), chunk)]
            if len(groups) == 1:  # the common case: no task to spawn
                deadline = None if self.timeout is None else started + self.timeout
                await self._optimize_group(groups[0], settings, iterations, deadline)
            else:
                semaphore = asyncio.Semaphore(self.max_concurrency)

                async def run_group(group: list[_Item]) -> None:
                    async with semaphore:
                        # the budget counts from when a group starts, not while it waits its turn
                        now = time.perf_counter()
                        deadline = None if self.timeout is None else now + self.timeout
                        await self._optimize_group(group, settings, iterations, deadline)

                with concurrent():  # the groups share the loop: none may block it
                    await asyncio.gather(*(run_group(g) for g in groups))
        return [s if isinstance(s, OptimizationResult) else self._finish(s, started) for s in slots]

    async def _optimize_group(
        self,
        group: list[_Item],
        settings: GenerationSettings,
        iterations: int,
        deadline: float | None,
    ) -> None:
        """Run the rounds for a group of prompts that share one backend call per round."""
        for round_index in range(iterations):
            active = [item for item in group if not item.done]
            if not active:
                return
            try:
                generations = await generate_within_budget(
                    self.backend,
                    [item.current for item in active],
                    settings,
                    deadline,
                    max_retries=self.max_retries,
                    budget_s=self.timeout,
                )
            except Exception as error:
                self.circuit.record_failure()
                for item in active:
                    if round_index == 0:
                        item.error = error
                    item.done = True
                return
            self.circuit.record_success()
            for item, generation in zip(active, generations, strict=True):
                rewrite = clean_completion(generation.text, cut_markers=settings.stop)
                failure = self.guards.check(
                    item.prompt,
                    rewrite,
                    finish_reason=generation.finish_reason,
                    context=item.context,
                )
                if failure is not None:
                    if round_index == 0:
                        item.error = GuardError(failure.reason, failure.detail)
                    item.done = True
                    continue
                item.rounds.append(rewrite)
                item.current = rewrite

    def _finish(self, item: _Item, started: float) -> OptimizationResult:
        latency = time.perf_counter() - started
        if item.error is not None or not item.rounds:
            error = item.error or GuardError(FallbackReason.EMPTY_OUTPUT)
            if self.on_error == "raise":
                raise error
            kind, detail = fallback_reason_of(error)
            if kind is FallbackReason.UNEXPECTED_ERROR:
                _log.logger.debug("the %s backend raised", self.backend.name, exc_info=error)
            _log.fallback(self.backend.cache_identity(), self.backend.name, kind, detail)
            return OptimizationResult(
                original=item.prompt,
                optimized=item.prompt,
                backend=self.backend.name,
                latency_s=latency,
                context=item.context,
                fell_back=True,
                fallback_reason=kind,
                fallback_detail=detail,
                error=repr(error),
            )
        result = OptimizationResult(
            original=item.prompt,
            optimized=item.rounds[-1],
            backend=self.backend.name,
            latency_s=latency,
            context=item.context,
            rounds=tuple(item.rounds),
        )
        if item.key is not None:
            self.cache.put(item.key, result)
        if _log.logger.isEnabledFor(logging.DEBUG):
            _log.logger.debug(
                "optimized by %s in %.3fs (%d rounds): %.80r -> %.80r",
                self.backend.name,
                latency,
                len(item.rounds),
                item.prompt,
                result.optimized,
            )
        return result
