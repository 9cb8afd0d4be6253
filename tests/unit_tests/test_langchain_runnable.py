"""BPORunnable in real LCEL chains: the model gets the optimized prompt and nothing else changes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any
from uuid import UUID

import pytest
from example_runs import run_example_offline
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import LLM, BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import ConfigurableField
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from pydantic import Field, ValidationError

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.errors import BackendUnavailableError
from bpo_integrations.langchain import OPTIMIZATION_EVENT, BPORunnable, RunnableBPO
from bpo_integrations.langchain import runnable as runnable_module
from bpo_integrations.testing.backends import RecordingBackend

SUFFIX = " Explain step by step."


class RecordingChatModel(BaseChatModel):
    """Answers ``reply`` and keeps the messages of every call."""

    reply: str = "ok"
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.reply))])

    @property
    def _llm_type(self) -> str:
        return "recording-chat"


class RecordingLLM(LLM):
    """A text-completion model that keeps every prompt it was given."""

    seen: list[str] = Field(default_factory=list)

    def _call(
        self, prompt: str, stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> str:
        self.seen.append(prompt)
        return "done"

    @property
    def _llm_type(self) -> str:
        return "recording-llm"


class EventCollector(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, UUID]] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data, run_id))


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend(SUFFIX, max_batch_size=16)


@pytest.fixture
def bpo(backend: RecordingBackend) -> BPORunnable:
    return BPORunnable(optimizer=BPOOptimizer(backend, cache_size=0))


CHAT_PROMPT = ChatPromptTemplate.from_messages(
    [("system", "You are a careful physicist."), ("human", "{question}")]
)


def test_chat_chain_model_receives_optimized_prompt_and_untouched_system(
    bpo: BPORunnable, backend: RecordingBackend
) -> None:
    model = RecordingChatModel()
    answer = (CHAT_PROMPT | bpo | model).invoke({"question": "Why is the sky blue?"})

    assert answer.content == "ok"
    system, human = model.seen[0]
    assert system == SystemMessage("You are a careful physicist.")
    assert human.content == "Why is the sky blue?" + SUFFIX
    assert backend.calls == [["Why is the sky blue?"]]


def test_string_prompt_value_to_llm(bpo: BPORunnable) -> None:
    llm = RecordingLLM()
    chain = PromptTemplate.from_template("{question}") | bpo | llm
    assert chain.invoke({"question": "Name three primes."}) == "done"
    assert llm.seen == ["Name three primes." + SUFFIX]


def test_each_input_type_comes_back_as_the_same_type(bpo: BPORunnable) -> None:
    assert bpo.invoke("Hi there") == "Hi there" + SUFFIX

    out = bpo.invoke(StringPromptValue(text="Hi there"))
    assert isinstance(out, StringPromptValue)
    assert out.text == "Hi there" + SUFFIX

    value = CHAT_PROMPT.invoke({"question": "Hi there"})
    out = bpo.invoke(value)
    assert type(out) is type(value)
    assert out.messages[0] is value.messages[0]
    assert out.messages[1].content == "Hi there" + SUFFIX

    tuples = [("system", "Be brief."), ("human", "Hi there")]
    assert bpo.invoke(tuples) == [("system", "Be brief."), ("human", "Hi there" + SUFFIX)]


def test_only_last_human_message_changes_and_ids_are_kept(bpo: BPORunnable) -> None:
    messages: list[BaseMessage] = [
        SystemMessage("sys", id="s"),
        HumanMessage("first question", id="h1"),
        AIMessage("", id="a", tool_calls=[{"name": "calc", "args": {}, "id": "c1"}]),
        ToolMessage("42", tool_call_id="c1", id="t"),
        HumanMessage("second question", id="h2", name="ann"),
    ]
    out = bpo.invoke(messages)

    assert isinstance(out, list)
    assert all(out[i] is messages[i] for i in range(4))
    assert out[4].content == "second question" + SUFFIX
    assert (out[4].id, out[4].name, type(out[4])) == ("h2", "ann", HumanMessage)
    assert messages[4].content == "second question"  # the caller's list is not mutated


def test_target_all_human_optimizes_every_user_turn_in_one_call(
    backend: RecordingBackend,
) -> None:
    bpo = BPORunnable(optimizer=BPOOptimizer(backend, cache_size=0), target="all_human")
    out = bpo.invoke([HumanMessage("one"), AIMessage("a"), HumanMessage("two")])
    assert [m.content for m in out] == ["one" + SUFFIX, "a", "two" + SUFFIX]
    assert backend.calls == [["one", "two"]]


def test_multimodal_only_first_text_block_changes(bpo: BPORunnable) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    trailing = {"type": "text", "text": "(second text block)"}
    message = HumanMessage(
        content=[image, {"type": "text", "text": "What is in this picture?"}, trailing]
    )
    model = RecordingChatModel()
    (bpo | model).invoke([message])

    content = model.seen[0][0].content
    assert content[0] == image
    assert content[1] == {"type": "text", "text": "What is in this picture?" + SUFFIX}
    assert content[2] == trailing


def test_dict_with_input_key_and_untouched_context(
    backend: RecordingBackend,
) -> None:
    bpo = BPORunnable(
        optimizer=BPOOptimizer(backend, cache_size=0),
        input_key="question",
        context_key="docs",
    )
    prompt = ChatPromptTemplate.from_messages([("human", "{question}\n\nContext:\n{docs}")])
    model = RecordingChatModel()
    collector = RunCollectorCallbackHandler()
    docs = "Rayleigh scattering scales with 1/wavelength^4."
    (bpo | prompt | model).invoke(
        {"question": "Why is the sky blue?", "docs": docs}, {"callbacks": [collector]}
    )

    assert backend.calls == [["Why is the sky blue?"]]  # the context is never rewritten
    assert model.seen[0][0].content == f"Why is the sky blue?{SUFFIX}\n\nContext:\n{docs}"
    span = _find_run(collector.traced_runs, "bpo_optimize")
    assert span.outputs is not None and span.outputs["context"] == docs


def test_bad_input_errors_name_the_problem_and_the_fix(bpo: BPORunnable) -> None:
    with pytest.raises(TypeError, match=r"got int as input; it accepts str, StringPromptValue"):
        bpo.invoke(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"without the key 'input'.*\['q'\].*set input_key="):
        bpo.invoke({"q": "hello"})
    contextual = BPORunnable(optimizer=bpo.optimizer, context_key="ctx")
    with pytest.raises(TypeError, match=r"input\['ctx'\].*must be a str, got list"):
        contextual.invoke({"input": "hello", "ctx": ["a", "b"]})
    with pytest.raises(TypeError, match=r"could not read input as a list of messages"):
        bpo.invoke([object()])
    with pytest.raises(TypeError, match=r"got str; use BPOOptimizer\(TGIBackend\(url\)\)"):
        BPORunnable(optimizer="http://localhost:8080")


def test_backend_is_wrapped_in_an_optimizer() -> None:
    bpo = BPORunnable(optimizer=CallableBackend(lambda p: p + "!"))
    assert isinstance(bpo.optimizer, BPOOptimizer)
    assert bpo.invoke("Hello") == "Hello!"


def test_batch_is_one_backend_round_trip(bpo: BPORunnable, backend: RecordingBackend) -> None:
    questions = [f"Question number {i}?" for i in range(5)]
    outputs = bpo.batch(questions)
    assert outputs == [q + SUFFIX for q in questions]
    assert backend.calls == [questions]


def test_batch_return_exceptions_keeps_good_inputs(
    bpo: BPORunnable, backend: RecordingBackend
) -> None:
    outputs = bpo.batch(["Good one", 7, "Good two"], return_exceptions=True)  # type: ignore[list-item]
    assert outputs[0] == "Good one" + SUFFIX
    assert isinstance(outputs[1], TypeError)
    assert outputs[2] == "Good two" + SUFFIX
    assert backend.calls == [["Good one", "Good two"]]
    with pytest.raises(TypeError):
        bpo.batch(["Good one", 7])  # type: ignore[list-item]


async def test_async_invoke_and_batch(bpo: BPORunnable, backend: RecordingBackend) -> None:
    model = RecordingChatModel()
    chain = CHAT_PROMPT | bpo | model
    await chain.ainvoke({"question": "Async question?"})
    assert model.seen[0][1].content == "Async question?" + SUFFIX

    outputs = await bpo.abatch(["a one", "a two", "a three"])
    assert outputs == ["a one" + SUFFIX, "a two" + SUFFIX, "a three" + SUFFIX]
    assert backend.calls[-1] == ["a one", "a two", "a three"]


async def test_async_backend_function() -> None:
    async def rewrite(prompt: str) -> str:
        return prompt + " (async)"

    bpo = BPORunnable(optimizer=BPOOptimizer(CallableBackend(rewrite)))
    assert await bpo.ainvoke("Hello") == "Hello (async)"


def test_stream_through_the_chain(bpo: BPORunnable) -> None:
    model = RecordingChatModel(reply="streamed answer")
    chunks = list((CHAT_PROMPT | bpo | model).stream({"question": "Stream me?"}))
    assert "".join(str(c.content) for c in chunks) == "streamed answer"
    assert model.seen[0][1].content == "Stream me?" + SUFFIX
    assert list(bpo.stream("Alone?")) == ["Alone?" + SUFFIX]


async def test_astream_through_the_chain(bpo: BPORunnable) -> None:
    model = RecordingChatModel(reply="streamed answer")
    chunks = [c async for c in (CHAT_PROMPT | bpo | model).astream({"question": "Astream?"})]
    assert "".join(str(c.content) for c in chunks) == "streamed answer"
    assert model.seen[0][1].content == "Astream?" + SUFFIX


def _find_run(runs: list[Any], name: str) -> Any:
    stack = list(runs)
    while stack:
        run = stack.pop()
        if run.name == name:
            return run
        stack.extend(run.child_runs)
    raise AssertionError(f"no run named {name!r}")


def test_tracing_records_original_optimized_and_fallback(bpo: BPORunnable) -> None:
    collector = RunCollectorCallbackHandler()
    events = EventCollector()
    chain = CHAT_PROMPT | bpo.with_config(run_name="bpo") | RecordingChatModel()
    chain.invoke({"question": "Trace me?"}, {"callbacks": [collector, events]})

    bpo_run = _find_run(collector.traced_runs, "bpo")
    (span,) = bpo_run.child_runs
    assert span.name == "bpo_optimize"
    assert span.inputs == {"prompt": "Trace me?", "context": None}
    assert span.outputs is not None
    assert span.outputs["original"] == "Trace me?"
    assert span.outputs["optimized"] == "Trace me?" + SUFFIX
    assert span.outputs["fell_back"] is False
    assert span.outputs["fallback_reason"] is None

    ((name, data, run_id),) = events.events
    assert (name, run_id) == (OPTIMIZATION_EVENT, bpo_run.id)
    assert data["optimized"] == "Trace me?" + SUFFIX


async def test_async_tracing_and_stream_events(bpo: BPORunnable) -> None:
    events = [
        e async for e in (CHAT_PROMPT | bpo).astream_events({"question": "Events?"}, version="v2")
    ]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == [OPTIMIZATION_EVENT]
    assert custom[0]["data"]["original"] == "Events?"
    ends = [e for e in events if e["event"] == "on_chain_end" and e["name"] == "bpo_optimize"]
    assert ends[0]["data"]["output"]["optimized"] == "Events?" + SUFFIX


def test_fallback_answers_with_the_original_prompt() -> None:
    def down(prompt: str) -> str:
        raise BackendUnavailableError("connection refused: http://127.0.0.1:9")

    bpo = BPORunnable(optimizer=BPOOptimizer(CallableBackend(down), max_retries=0))
    model = RecordingChatModel(reply="still answered")
    collector = RunCollectorCallbackHandler()
    answer = (CHAT_PROMPT | bpo | model).invoke(
        {"question": "Is the backend up?"}, {"callbacks": [collector]}
    )

    assert answer.content == "still answered"
    assert model.seen[0][1].content == "Is the backend up?"
    span = _find_run(collector.traced_runs, "bpo_optimize")
    assert span.outputs["fell_back"] is True
    assert span.outputs["fallback_reason"].startswith("backend_unavailable")


def test_optimizer_that_raises_fails_the_run_and_the_span() -> None:
    def down(prompt: str) -> str:
        raise BackendUnavailableError("connection refused")

    optimizer = BPOOptimizer(CallableBackend(down), max_retries=0, on_error="raise")
    collector = RunCollectorCallbackHandler()
    with pytest.raises(BackendUnavailableError):
        BPORunnable(optimizer=optimizer).invoke("Hi", {"callbacks": [collector]})
    span = _find_run(collector.traced_runs, "bpo_optimize")
    assert span.error is not None and "connection refused" in span.error


def test_configurable_fields_switch_mode_iterations_and_enabled(
    bpo: BPORunnable, backend: RecordingBackend
) -> None:
    configurable = bpo.configurable_fields(
        mode=ConfigurableField(id="bpo_mode"),
        iterations=ConfigurableField(id="bpo_iterations"),
        enabled=ConfigurableField(id="bpo_enabled"),
    )
    model = RecordingChatModel()
    chain = CHAT_PROMPT | configurable | model

    chain.invoke({"question": "Default?"})
    assert backend.modes == ["stable"]

    chain.invoke(
        {"question": "Tuned?"},
        {"configurable": {"bpo_mode": "aggressive", "bpo_iterations": 2}},
    )
    assert backend.modes[1:] == ["aggressive", "aggressive"]
    assert backend.calls[1:] == [["Tuned?"], ["Tuned?" + SUFFIX]]
    assert model.seen[1][1].content == "Tuned?" + SUFFIX + SUFFIX

    chain.invoke({"question": "Off?"}, {"configurable": {"bpo_enabled": False}})
    assert model.seen[2][1].content == "Off?"
    assert len(backend.calls) == 3


def test_field_validation() -> None:
    optimizer = BPOOptimizer(CallableBackend(lambda p: p))
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        BPORunnable(optimizer=optimizer, iterations=0)
    with pytest.raises(ValidationError, match="mode"):
        BPORunnable(optimizer=optimizer, mode="wild")  # type: ignore[arg-type]


def test_no_human_message_passes_through(bpo: BPORunnable, backend: RecordingBackend) -> None:
    messages = [SystemMessage("only a system prompt")]
    assert bpo.invoke(messages) == messages
    assert backend.calls == []


def test_declared_types_give_a_real_input_schema(bpo: BPORunnable) -> None:
    assert RunnableBPO is BPORunnable
    schema = bpo.get_input_schema().model_json_schema()
    assert len(schema["anyOf"]) == 5
    assert bpo.get_output_schema().model_json_schema()["anyOf"] == schema["anyOf"]
    assert isinstance(bpo.invoke(ChatPromptValue(messages=[HumanMessage("x")])), ChatPromptValue)


def test_runnable_does_not_need_the_langchain_agents_package() -> None:
    code = "import sys, bpo_integrations.langchain; print('langchain' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lcel_example_runs_offline() -> None:
    out = run_example_offline("langchain_lcel.py")
    assert out.returncode == 0, out.stderr
    assert "the model was asked:" in out.stdout
    assert "bpo fell back: False" in out.stdout


def test_an_image_only_last_turn_is_not_replaced_by_an_earlier_one(
    bpo: BPORunnable, backend: RecordingBackend
) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [HumanMessage("Describe cats."), AIMessage("Cats are..."), HumanMessage([image])]
    assert bpo.invoke(messages) == messages
    assert backend.calls == []


def test_a_fallback_returns_the_chat_prompt_value_itself() -> None:
    def down(prompt: str) -> str:
        raise BackendUnavailableError("connection refused")

    bpo = BPORunnable(optimizer=BPOOptimizer(CallableBackend(down), max_retries=0))
    value = CHAT_PROMPT.invoke({"question": "Up?"})
    assert bpo.invoke(value) is value


def test_langchain_reads_the_stored_signatures_of_the_step_methods(bpo: BPORunnable) -> None:
    from langchain_core.runnables.utils import accepts_config, accepts_run_manager

    steps = (runnable_module._invoke, runnable_module._ainvoke)
    for function in (*steps, bpo._batch.__func__, bpo._abatch.__func__):
        assert "__signature__" in vars(function)
    for function in (*steps, bpo._batch, bpo._abatch):
        assert accepts_run_manager(function) and not accepts_config(function)
