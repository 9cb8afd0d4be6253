"""BPO as an LCEL step: ``prompt | BPORunnable(...) | llm``."""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from bpo_integrations._faces import as_optimizer
from bpo_integrations.langchain._messages import (
    PromptInput,
    as_message,
    element_with_text,
    human_indices,
    last_human_index,
    message_text,
)
from bpo_integrations.optimizer import BPOOptimizer
from bpo_integrations.result import OptimizationResult
from bpo_integrations.settings import Mode

BPOInput = PromptInput
"""What :class:`BPORunnable` accepts, and returns with only the user's text optimized."""

OPTIMIZATION_EVENT = "bpo_optimization"
"""Name of the custom event (``on_custom_event``, ``astream_events``) sent per optimized text."""

OPTIMIZATION_RUN_NAME = "bpo_optimize"
"""Name of the child run (the span LangSmith shows) that records each optimization."""

Target = Literal["last_human", "all_human"]

F = TypeVar("F", bound=Callable[..., Any])


class FilledPromptWarning(UserWarning):
    """``BPORunnable`` was given a prompt with retrieved documents already filled in."""


_CONTEXT_LABEL = re.compile(
    r"(?i)\b(?:context|documents?|sources?|passages?|excerpts?)\s*:"
    r"|\bcontext information\b|\bretrieved (?:context|documents?)\b"
    r"|<(?:context|documents?|sources?)>"
)
_QUESTION_LABEL = re.compile(r"(?i)\b(?:question|query)\s*:\s*(.*)")
_RAG_MIN_CHARS = 1200


def looks_like_filled_rag_prompt(text: str) -> bool:
    """Whether ``text`` reads as a RAG prompt already filled in: a labelled context block far
    longer than the question (``Context: ...`` / ``Question: ...``, ``<context>``, ...)."""
    if len(text) < _RAG_MIN_CHARS or not _CONTEXT_LABEL.search(text):
        return False
    question = _QUESTION_LABEL.search(text)
    return question is None or len(text) > 4 * len(question.group(1))


_RAG_ADVICE = (
    "BPORunnable got a prompt of {length} characters that looks like a filled RAG prompt (a "
    "context block far longer than the question): the optimizer would rewrite the retrieved "
    "documents, which is slow and usually rejected. Optimize the question before the prompt is "
    'built: {{"context": retriever | format_docs, "question": itemgetter("question") | bpo}} | '
    'prompt | llm, or give it the documents apart: BPORunnable(input_key="question", '
    'context_key="context") before the prompt (see the README, "RAG").'
)

_ACCEPTED = (
    "str, StringPromptValue, ChatPromptValue, a list of messages, or a dict holding the prompt "
    "under input_key"
)


def _presigned(function: F) -> F:
    """Store ``function``'s signature on it: LangChain inspects the function it runs on every call
    (does it take a ``config``, a ``run_manager``?), and a stored signature is read, not rebuilt.
    """
    function.__signature__ = inspect.signature(function)  # type: ignore[attr-defined]
    return function


@dataclass(frozen=True)
class _Plan:
    """The texts to optimize in one input, and how to put their rewrites back."""

    texts: list[str]
    context: str | None
    rebuild: Callable[[list[str]], Any]


class BPORunnable(RunnableSerializable[BPOInput, BPOInput]):
    """Optimizes the user's prompt with BPO between a prompt template and a model.

    Takes a ``str``, a ``StringPromptValue``, a ``ChatPromptValue``, a list of messages, or a
    dict (the prompt under ``input_key``, optional untouched context under ``context_key``), and
    returns the same type with only the user's text rewritten: by default the last human
    message. System, AI and tool messages, message ids and image blocks are kept as they are.

    Each optimization is recorded as a child run named ``bpo_optimize`` (what LangSmith shows:
    inputs ``prompt``/``context``, outputs ``original``, ``optimized``, ``fell_back``,
    ``fallback_reason``, ...) and sent as the custom event ``bpo_optimization``. When the
    optimizer falls back, the original text goes on to the model.

    Example:
        >>> from langchain_core.prompts import ChatPromptTemplate
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.backends import CallableBackend
        >>> from bpo_integrations.langchain import BPORunnable
        >>> bpo = BPORunnable(
        ...     optimizer=BPOOptimizer(CallableBackend(lambda p: p + " Answer step by step."))
        ... )
        >>> prompt = ChatPromptTemplate.from_messages(
        ...     [("system", "You are terse."), ("human", "{question}")]
        ... )
        >>> value = (prompt | bpo).invoke({"question": "Why is the sky blue?"})
        >>> [m.content for m in value.messages]
        ['You are terse.', 'Why is the sky blue? Answer step by step.']
    """

    optimizer: BPOOptimizer
    """The optimizer; a :class:`~bpo_integrations.backends.base.Backend` is wrapped in one."""
    mode: Mode | None = None
    """Decoding mode per call: ``stable``, ``aggressive``, ``greedy``; ``None``: the optimizer's."""
    iterations: int | None = Field(default=None, ge=1)
    """Rounds of re-optimization per call; ``None``: the optimizer's."""
    enabled: bool = True
    """``False`` passes every input through unchanged (an A/B switch via configurable_fields)."""
    target: Target = "last_human"
    """Which user turns of a message list to optimize: the last one, or all of them."""
    input_key: str = "input"
    """For dict inputs: the key holding the prompt (a str, prompt value or message list)."""
    context_key: str | None = None
    """For dict inputs: the key of a context the optimizer records but never rewrites."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _warned_rag: bool = PrivateAttr(default=False)

    def __init__(self, optimizer: Any = None, **kwargs: Any) -> None:
        """``optimizer``: a :class:`BPOOptimizer`, a backend, a LangChain or LlamaIndex LLM
        (see :meth:`BPOOptimizer.from_llm`), or nothing: the embedded default model."""
        fields = {"optimizer": as_optimizer(optimizer, "BPORunnable"), **kwargs}
        super().__init__(**fields)

    @field_validator("optimizer", mode="before")
    @classmethod
    def _wrap_backend(cls, value: Any) -> BPOOptimizer:
        return as_optimizer(value, "BPORunnable")

    @property
    def InputType(self) -> Any:
        return BPOInput

    @property
    def OutputType(self) -> Any:
        return BPOInput

    # -- public API ---------------------------------------------------------------------------

    def invoke(self, input: BPOInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        # langchain passes `step` on by name, which its Callable type cannot say
        return self._call_with_config(_invoke, input, config, step=self)  # type: ignore[arg-type]

    async def ainvoke(
        self, input: BPOInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        return await self._acall_with_config(
            _ainvoke,  # type: ignore[arg-type]
            input,
            config,
            step=self,
        )

    def batch(
        self,
        inputs: list[BPOInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Optimize all inputs with one ``optimize_batch`` call (one backend round-trip)."""
        return self._batch_with_config(
            self._batch, inputs, config, return_exceptions=return_exceptions
        )

    async def abatch(
        self,
        inputs: list[BPOInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async twin of :meth:`batch`."""
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions
        )

    # -- sync and async twins -----------------------------------------------------------------

    @_presigned
    def _batch(
        self, inputs: list[BPOInput], run_manager: list[CallbackManagerForChainRun]
    ) -> list[Any]:
        if not self.enabled:
            return list(inputs)
        plans = [self._try_plan(value) for value in inputs]
        owners, prompts, contexts = _flatten(plans)
        # No handler listens (no tracer, no callbacks): skip the child runs, a third of the cost.
        spans = [
            run_manager[i]
            .get_child()
            .on_chain_start(None, {"prompt": p, "context": c}, name=OPTIMIZATION_RUN_NAME)
            if run_manager[i].inheritable_handlers
            else None
            for i, p, c in zip(owners, prompts, contexts, strict=True)
        ]
        try:
            results = (
                self.optimizer.optimize_batch(
                    prompts, contexts=contexts, mode=self.mode, iterations=self.iterations
                )
                if prompts
                else []
            )
        except BaseException as error:
            for span in spans:
                if span is not None:
                    span.on_chain_error(error)
            raise
        for i, span, result in zip(owners, spans, results, strict=True):
            if span is None:
                continue
            record = result.to_dict()
            span.on_chain_end(record)
            parent = run_manager[i]
            parent.get_child().on_custom_event(OPTIMIZATION_EVENT, record, run_id=parent.run_id)
        return _rebuild(plans, results)

    @_presigned
    async def _abatch(
        self, inputs: list[BPOInput], run_manager: list[AsyncCallbackManagerForChainRun]
    ) -> list[Any]:
        if not self.enabled:
            return list(inputs)
        plans = [self._try_plan(value) for value in inputs]
        owners, prompts, contexts = _flatten(plans)
        spans = [
            await run_manager[i]
            .get_child()
            .on_chain_start(None, {"prompt": p, "context": c}, name=OPTIMIZATION_RUN_NAME)
            if run_manager[i].inheritable_handlers
            else None
            for i, p, c in zip(owners, prompts, contexts, strict=True)
        ]
        try:
            results = (
                await self.optimizer.aoptimize_batch(
                    prompts, contexts=contexts, mode=self.mode, iterations=self.iterations
                )
                if prompts
                else []
            )
        except BaseException as error:
            for span in spans:
                if span is not None:
                    await span.on_chain_error(error)
            raise
        for i, span, result in zip(owners, spans, results, strict=True):
            if span is None:
                continue
            record = result.to_dict()
            await span.on_chain_end(record)
            parent = run_manager[i]
            await parent.get_child().on_custom_event(
                OPTIMIZATION_EVENT, record, run_id=parent.run_id
            )
        return _rebuild(plans, results)

    # -- reading and rebuilding inputs --------------------------------------------------------

    def _try_plan(self, value: Any) -> _Plan | Exception:
        try:
            plan = self._plan(value)
        except (TypeError, ValueError) as error:
            return error
        if not self._warned_rag:
            for text in plan.texts:
                if looks_like_filled_rag_prompt(text):
                    self._warned_rag = True
                    warnings.warn(
                        _RAG_ADVICE.format(length=len(text)), FilledPromptWarning, stacklevel=2
                    )
                    break
        return plan

    def _plan(self, value: Any) -> _Plan:
        if not isinstance(value, dict):
            return self._plan_value(value, "input")
        if self.input_key not in value:
            raise ValueError(
                f"BPORunnable got a dict without the key {self.input_key!r} (keys: "
                f"{sorted(map(str, value))}); set input_key= to the key that holds the prompt"
            )
        inner = self._plan_value(value[self.input_key], f"input[{self.input_key!r}]")
        context = value.get(self.context_key) if self.context_key is not None else None
        if context is not None and not isinstance(context, str):
            raise TypeError(
                f"input[{self.context_key!r}] (the context) must be a str, got "
                f"{type(context).__name__}; format it into a string before BPORunnable"
            )
        key = self.input_key
        return _Plan(inner.texts, context, lambda new: {**value, key: inner.rebuild(new)})

    def _plan_value(self, value: Any, where: str) -> _Plan:
        if isinstance(value, str):
            return _Plan([value], None, lambda new: new[0])
        if isinstance(value, StringPromptValue):
            return _Plan(
                [value.text],
                None,
                lambda new: (
                    value if new[0] == value.text else value.model_copy(update={"text": new[0]})
                ),
            )
        if isinstance(value, ChatPromptValue):
            inner = self._plan_messages(value.messages, where)

            def rebuild_value(new: list[str]) -> ChatPromptValue:
                messages = inner.rebuild(new)
                if all(a is b for a, b in zip(messages, value.messages, strict=True)):
                    return value
                return value.model_copy(update={"messages": messages})

            return _Plan(inner.texts, None, rebuild_value)
        if isinstance(value, list):
            return self._plan_messages(value, where)
        raise TypeError(
            f"BPORunnable got {type(value).__name__} as {where}; it accepts {_ACCEPTED}"
        )

    def _plan_messages(self, elements: Sequence[Any], where: str) -> _Plan:
        try:
            messages = [as_message(element) for element in elements]
        except (TypeError, ValueError, NotImplementedError) as error:
            raise TypeError(
                f"BPORunnable could not read {where} as a list of messages ({error}); it accepts "
                f"{_ACCEPTED}"
            ) from error
        if self.target == "last_human":
            # The newest user turn only; when it has no text (image-only), nothing is optimized.
            last = last_human_index(messages)
            indices = [] if last is None or message_text(messages[last]) is None else [last]
        else:
            indices = human_indices(messages)
        texts = [message_text(messages[i]) or "" for i in indices]

        def rebuild(new: list[str]) -> list[Any]:
            out = list(elements)
            for index, text in zip(indices, new, strict=True):
                out[index] = element_with_text(elements[index], text)
            return out

        return _Plan(texts, None, rebuild)


RunnableBPO = BPORunnable
"""Alias following LangChain's ``RunnableX`` naming."""


# What ``invoke``/``ainvoke`` hand to LangChain's run wrapper: plain functions rather than bound
# methods, whose signature LangChain would rebuild on every call.
@_presigned
def _invoke(input_: BPOInput, run_manager: CallbackManagerForChainRun, step: BPORunnable) -> Any:
    return _raise_or_return(step._batch([input_], [run_manager])[0])


@_presigned
async def _ainvoke(
    input_: BPOInput, run_manager: AsyncCallbackManagerForChainRun, step: BPORunnable
) -> Any:
    return _raise_or_return((await step._abatch([input_], [run_manager]))[0])


def _flatten(plans: list[_Plan | Exception]) -> tuple[list[int], list[str], list[str | None]]:
    owners: list[int] = []
    prompts: list[str] = []
    contexts: list[str | None] = []
    for index, plan in enumerate(plans):
        if isinstance(plan, _Plan):
            owners.extend([index] * len(plan.texts))
            prompts.extend(plan.texts)
            contexts.extend([plan.context] * len(plan.texts))
    return owners, prompts, contexts


def _rebuild(plans: list[_Plan | Exception], results: list[OptimizationResult]) -> list[Any]:
    outputs: list[Any] = []
    position = 0
    for plan in plans:
        if isinstance(plan, Exception):
            outputs.append(plan)
            continue
        taken = results[position : position + len(plan.texts)]
        position += len(plan.texts)
        outputs.append(plan.rebuild([result.optimized for result in taken]))
    return outputs


def _raise_or_return(output: Any) -> Any:
    if isinstance(output, Exception):
        raise output
    return output
