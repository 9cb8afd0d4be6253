"""BPO for agents built with ``langchain.agents.create_agent``.

The user's turn is optimized once, in ``before_model``, and the rewrite is kept in the agent
state beside the untouched messages (keyed by the human message's id). ``wrap_model_call`` then
shows the model the rewrite on every call of the turn, so the tool loop neither re-optimizes nor
changes what the user said.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Annotated, Any, cast

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ContextT,
    ModelRequest,
    ModelResponse,
    OmitFromInput,
    ResponseT,
)
from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage
from langgraph.runtime import Runtime
from typing_extensions import NotRequired

from bpo_integrations._faces import as_optimizer
from bpo_integrations.langchain._messages import human_indices, is_human, message_text, with_text
from bpo_integrations.langchain.runnable import OPTIMIZATION_EVENT
from bpo_integrations.result import OptimizationResult
from bpo_integrations.settings import GenerationSettings, Mode

STATE_KEY = "bpo_optimizations"
"""The state field holding ``{human message id: OptimizationResult.to_dict()}``."""

ModelCallOutput = ModelResponse[Any] | AIMessage


class BPOState(AgentState[ResponseT]):
    """Agent state with the optimizations of the user's turns (kept in the agent's output)."""

    bpo_optimizations: NotRequired[Annotated[dict[str, dict[str, Any]], OmitFromInput]]


class BPOMiddleware(AgentMiddleware[BPOState[ResponseT], ContextT, ResponseT]):
    """Optimizes each new user turn with BPO once, and shows the model the optimized text.

    The agent state keeps the user's original messages; the rewrite of each turn is stored in
    ``state["bpo_optimizations"][message_id]`` and sent as the custom event
    ``bpo_optimization``. When the optimizer falls back, the model sees the original text.

    Examples:
        >>> from langchain.agents import create_agent
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from bpo_integrations import BPOOptimizer
        >>> from bpo_integrations.backends import CallableBackend
        >>> from bpo_integrations.langchain import BPOMiddleware
        >>> optimizer = BPOOptimizer(CallableBackend(lambda p: p + " Name the river too."))
        >>> agent = create_agent(
        ...     GenericFakeChatModel(messages=iter(["Paris, on the Seine."])),
        ...     tools=[],
        ...     middleware=[BPOMiddleware(optimizer)],
        ... )
        >>> state = agent.invoke({"messages": [("user", "Capital of France?")]})
        >>> state["messages"][0].content
        'Capital of France?'
        >>> [r["optimized"] for r in state["bpo_optimizations"].values()]
        ['Capital of France? Name the river too.']
    """

    state_schema = BPOState

    def __init__(
        self,
        optimizer: Any = None,
        *,
        mode: Mode | None = None,
        iterations: int | None = None,
        optimize_history: bool = True,
    ) -> None:
        """Initialize ``BPOMiddleware``.

        Args:
            optimizer: the optimizer; a backend or a LangChain model
                (:meth:`BPOOptimizer.from_llm`) to build one with default settings; nothing: the
                embedded default model. Its ``on_error`` decides what a failure does: fall back
                to the user's text (the default; the agent carries on) or raise.
            mode: decoding mode for each turn; ``None`` uses the optimizer's.
            iterations: rounds of re-optimization per turn; ``None`` uses the optimizer's.
            optimize_history: show the model earlier user turns as they were optimized (the
                text its earlier answers replied to); ``False`` shows only the newest turn
                optimized and earlier ones as the user wrote them.

        Raises:
            TypeError: ``optimizer`` is none of these.
            ValueError: ``mode`` or ``iterations`` is invalid.
        """
        super().__init__()
        optimizer = as_optimizer(optimizer, "BPOMiddleware")
        if mode is not None:
            GenerationSettings.for_mode(mode)
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.optimizer = optimizer
        self.mode: Mode | None = mode
        self.iterations = iterations
        self.optimize_history = optimize_history
        self.tools = []

    # -- before each model call: optimize the newest user turn, once --------------------------

    def before_model(
        self, state: BPOState[ResponseT], runtime: Runtime[ContextT]
    ) -> dict[str, Any] | None:
        pending = _pending_turn(state)
        if pending is None:
            return None
        key, text = pending
        result = self.optimizer.optimize(text, mode=self.mode, iterations=self.iterations)
        update = _record(state, key, result)
        with suppress(RuntimeError):  # no parent run: the hook was called outside a graph run
            dispatch_custom_event(OPTIMIZATION_EVENT, result.to_dict())
        return update

    async def abefore_model(
        self, state: BPOState[ResponseT], runtime: Runtime[ContextT]
    ) -> dict[str, Any] | None:
        pending = _pending_turn(state)
        if pending is None:
            return None
        key, text = pending
        result = await self.optimizer.aoptimize(text, mode=self.mode, iterations=self.iterations)
        update = _record(state, key, result)
        with suppress(RuntimeError):  # no parent run: the hook was called outside a graph run
            await adispatch_custom_event(OPTIMIZATION_EVENT, result.to_dict())
        return update

    # -- every model call: show the model the optimized text ----------------------------------

    def wrap_model_call(
        self,
        request: ModelRequest[ContextT],
        handler: Callable[[ModelRequest[ContextT]], ModelResponse[ResponseT]],
    ) -> ModelCallOutput:
        return handler(self._with_optimized_turns(request))

    async def awrap_model_call(
        self,
        request: ModelRequest[ContextT],
        handler: Callable[[ModelRequest[ContextT]], Awaitable[ModelResponse[ResponseT]]],
    ) -> ModelCallOutput:
        return await handler(self._with_optimized_turns(request))

    def _with_optimized_turns(self, request: ModelRequest[ContextT]) -> ModelRequest[ContextT]:
        records = _records(request.state)
        if not records:
            return request
        indices = human_indices(request.messages)
        if not self.optimize_history:
            indices = indices[-1:]
        messages: list[AnyMessage] = list(request.messages)
        changed = False
        for index in indices:
            message = messages[index]
            record = records.get(_turn_key(message))
            if record is not None and record["original"] == message_text(message):
                messages[index] = cast(AnyMessage, with_text(message, record["optimized"]))
                changed = changed or messages[index] is not message
        return request.override(messages=messages) if changed else request


def _turn_key(message: BaseMessage) -> str:
    # add_messages gives every state message an id; the text is a stand-in for id-less ones.
    return message.id or f"text:{message_text(message)}"


def _pending_turn(state: BPOState[Any]) -> tuple[str, str] | None:
    """``(key, text)`` of the newest user turn when it has not been optimized yet."""
    messages = state["messages"]
    turns = [index for index, message in enumerate(messages) if is_human(message)]
    if not turns or message_text(messages[turns[-1]]) is None:  # none, or image-only
        return None
    message = messages[turns[-1]]
    text = message_text(message) or ""
    record = _records(state).get(_turn_key(message))
    if record is not None and record["original"] == text:
        return None
    return _turn_key(message), text


def _record(state: BPOState[Any], key: str, result: OptimizationResult) -> dict[str, Any]:
    return {STATE_KEY: {**_records(state), key: result.to_dict()}}


def _records(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The optimizations a state holds, by turn key."""
    return cast(dict[str, dict[str, Any]], state.get(STATE_KEY) or {})
