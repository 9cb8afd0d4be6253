"""An LLM the user already has as the optimizer: LangChain chat and completion models, LlamaIndex
LLMs and ``Settings.llm``, the BPO template applied, async paths used, the prompt swappable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any, ClassVar

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.llms import LLM as LangChainLLM
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import CustomLLM, MockLLM
from llama_index.core.prompts import PromptTemplate
from pydantic import PrivateAttr

from bpo_integrations import BPO_INSTRUCTION, BPOOptimizer, format_bpo_prompt
from bpo_integrations.backends import (
    CallableBackend,
    LangChainBackend,
    LlamaIndexBackend,
    from_langchain,
    from_llama_index,
    from_llm,
)
from bpo_integrations.backends.langchain import RUN_NAME
from bpo_integrations.langchain import BPOMiddleware, BPORunnable
from bpo_integrations.llama_index import BPOQueryTransform, BPOTransformQueryEngine
from bpo_integrations.template import format_bpo_message

SUFFIX = " Explain step by step."


def rewrite_of(model_input: str) -> str:
    """What our test models answer: the prompt inside the BPO template, plus advice."""
    prompt = model_input.split("\n", 1)[1].removesuffix(" [/INST]")
    return prompt + SUFFIX


class RecordingChatModel(BaseChatModel):
    """A LangChain chat model that rewrites like a BPO model and records each call's path."""

    calls: ClassVar[list[tuple[str, list[BaseMessage], list[str] | None]]] = []

    @property
    def _llm_type(self) -> str:
        return "recording-chat"

    def _result(self, messages: list[BaseMessage]) -> ChatResult:
        text = rewrite_of(str(messages[-1].content))
        message = AIMessage(content=text, response_metadata={"finish_reason": "stop"})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any
    ) -> ChatResult:
        self.calls.append(("sync", messages, stop))
        return self._result(messages)

    async def _agenerate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any
    ) -> ChatResult:
        self.calls.append(("async", messages, stop))
        return self._result(messages)


class RecordingCompletionModel(LangChainLLM):
    """A LangChain completion model (``LLM``) that rewrites and records each call's path."""

    calls: ClassVar[list[tuple[str, str]]] = []

    @property
    def _llm_type(self) -> str:
        return "recording-llm"

    def _call(self, prompt: str, stop: list[str] | None = None, **kwargs: Any) -> str:
        self.calls.append(("sync", prompt))
        return rewrite_of(prompt)

    async def _acall(self, prompt: str, stop: list[str] | None = None, **kwargs: Any) -> str:
        self.calls.append(("async", prompt))
        return rewrite_of(prompt)


class RecordingChatLLM(CustomLLM):
    """A LlamaIndex chat LLM that rewrites and records each call's path and messages."""

    _calls: list[tuple[str, list[ChatMessage]]] = PrivateAttr(default_factory=list)

    @property
    def calls(self) -> list[tuple[str, list[ChatMessage]]]:
        return self._calls

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True)

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        self._calls.append(("sync", list(messages)))
        return ChatResponse(message=ChatMessage(content=rewrite_of(messages[-1].content)))

    async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        self._calls.append(("async", list(messages)))
        return ChatResponse(message=ChatMessage(content=rewrite_of(messages[-1].content)))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise AssertionError("a chat model is called through chat")

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        raise AssertionError("a chat model is called through chat")


class RecordingCompletionLLM(MockLLM):
    """A LlamaIndex completion LLM that rewrites and records each call's path and prompt."""

    _calls: list[tuple[str, str, bool]] = PrivateAttr(default_factory=list)

    @property
    def calls(self) -> list[tuple[str, str, bool]]:
        return self._calls

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._calls.append(("sync", prompt, formatted))
        return CompletionResponse(text=rewrite_of(prompt))

    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        self._calls.append(("async", prompt, formatted))
        return CompletionResponse(text=rewrite_of(prompt))


@pytest.fixture(autouse=True)
def fresh_calls() -> None:
    RecordingChatModel.calls = []
    RecordingCompletionModel.calls = []


# -- LangChain --------------------------------------------------------------------------------


def test_a_langchain_chat_model_gets_the_bpo_instruction_as_the_user_message() -> None:
    model = RecordingChatModel()
    optimizer = BPOOptimizer.from_llm(model)

    result = optimizer.optimize("Why is the sky blue?")
    asyncio.run(optimizer.aoptimize("Why is the sea blue?"))

    assert result.text == "Why is the sky blue?" + SUFFIX and not result.fell_back
    assert isinstance(optimizer.backend, LangChainBackend) and optimizer.backend.chat
    (path, messages, _), (apath, amessages, _) = model.calls
    assert (path, apath) == ("sync", "async")  # the async API goes through ainvoke
    assert [type(m) for m in messages] == [HumanMessage]
    assert messages[0].content == format_bpo_message("Why is the sky blue?")
    assert amessages[0].content == f"{BPO_INSTRUCTION}\nWhy is the sea blue?"


def test_a_langchain_completion_model_gets_the_raw_template() -> None:
    model = RecordingCompletionModel()
    optimizer = BPOOptimizer(from_langchain(model))

    assert optimizer.optimize("Tell me about Harry Potter").optimized == (
        "Tell me about Harry Potter" + SUFFIX
    )
    results = asyncio.run(optimizer.aoptimize_batch(["a question", "another question"]))

    assert [r.optimized for r in results] == ["a question" + SUFFIX, "another question" + SUFFIX]
    assert model.calls[0] == ("sync", format_bpo_prompt("Tell me about Harry Potter"))
    assert [path for path, _ in model.calls[1:]] == ["async", "async"]


def test_a_bound_model_is_read_through_and_stop_sequences_are_passed_on() -> None:
    model = RecordingChatModel()
    optimizer = BPOOptimizer.from_llm(model.bind(seed=1), mode="aggressive")
    optimizer.optimize("Why is the sky blue?")
    ((_, _, stop),) = model.calls
    assert stop == ["[KE", "[INS", "[PRO"]


def test_optimizer_calls_are_tagged_child_runs() -> None:
    seen: list[tuple[str | None, list[str]]] = []

    class Collector(BaseCallbackHandler):
        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            seen.append((kwargs.get("name"), kwargs.get("tags") or []))

    bpo = BPORunnable(RecordingChatModel())
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    value = (prompt | bpo).invoke({"question": "Why?"}, {"callbacks": [Collector()]})

    assert value.messages[0].content == "Why?" + SUFFIX
    ((name, tags),) = seen
    assert name == RUN_NAME
    assert {"bpo_optimizer", "nostream"} <= set(tags)


def test_the_three_faces_take_a_model_as_they_take_a_backend() -> None:
    runnable = BPORunnable(RecordingChatModel())
    middleware = BPOMiddleware(RecordingChatModel())
    transform = BPOQueryTransform(RecordingChatLLM())
    assert isinstance(runnable.optimizer.backend, LangChainBackend)
    assert isinstance(middleware.optimizer.backend, LangChainBackend)
    assert isinstance(transform.optimizer.backend, LlamaIndexBackend)
    assert runnable.invoke("Why?") == "Why?" + SUFFIX


class FailingChatModel(RecordingChatModel):
    error: Exception

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise self.error

    async def _agenerate(
        self, messages: list[BaseMessage], *args: Any, **kwargs: Any
    ) -> ChatResult:
        raise self.error


class APIConnectionError(Exception):
    """Named like the provider clients' connection errors (openai, anthropic)."""


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError("refused"), "backend_unavailable: the LangChain model"),
        (APIConnectionError("Connection error."), "backend_unavailable: the LangChain model"),
        (TimeoutError("slow"), "timeout: no answer from the LangChain model"),
        (ValueError("unknown model 'x'"), "backend_error: the LangChain model"),
    ],
)
def test_errors_of_the_model_are_fallbacks_with_our_reasons(error: Exception, reason: str) -> None:
    optimizer = BPOOptimizer.from_llm(FailingChatModel(error=error), max_retries=0)
    result = optimizer.optimize("Why?")
    assert result.fell_back
    assert result.fallback_message.startswith(reason)
    assert "FailingChatModel" in result.fallback_detail


def test_what_is_not_a_model_is_refused() -> None:
    from langchain_core.runnables import RunnableLambda

    with pytest.raises(TypeError, match="LangChain chat model or LLM"):
        from_langchain(RunnableLambda(lambda p: p))


# -- LlamaIndex -------------------------------------------------------------------------------


def test_a_llama_index_chat_llm_gets_one_user_message_sync_and_async() -> None:
    llm = RecordingChatLLM()
    optimizer = BPOOptimizer.from_llm(llm)
    assert optimizer.optimize("Why do cats purr?").optimized == "Why do cats purr?" + SUFFIX
    asyncio.run(optimizer.aoptimize("Why do dogs bark?"))

    (path, messages), (apath, _) = llm.calls
    assert (path, apath) == ("sync", "async")
    assert [(m.role, m.content) for m in messages] == [
        (MessageRole.USER, format_bpo_message("Why do cats purr?"))
    ]


def test_a_llama_index_completion_llm_gets_the_raw_template_already_formatted() -> None:
    llm = RecordingCompletionLLM()
    optimizer = BPOOptimizer(from_llama_index(llm))
    optimizer.optimize("Why do cats purr?")
    asyncio.run(optimizer.aoptimize("Why do dogs bark?"))
    assert llm.calls == [
        ("sync", format_bpo_prompt("Why do cats purr?"), True),
        ("async", format_bpo_prompt("Why do dogs bark?"), True),
    ]


def test_settings_llm_is_the_default_of_from_llama_index(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = RecordingChatLLM()
    monkeypatch.setattr(Settings, "_llm", llm)
    assert from_llama_index().llm is llm
    assert BPOQueryTransform(Settings.llm).optimizer.backend.llm is llm  # HyDE's habit


def test_the_query_transform_exposes_and_swaps_the_prompt_the_llama_index_way() -> None:
    llm = RecordingChatLLM()
    index = VectorStoreIndex.from_documents(
        [Document(text="Cats purr when content.")], embed_model=MockEmbedding(embed_dim=8)
    )
    transform = BPOQueryTransform(llm)
    engine = BPOTransformQueryEngine(index.as_query_engine(llm=MockLLM()), transform)

    prompt = transform.get_prompts()["bpo_prompt"]
    assert isinstance(prompt, PromptTemplate)
    assert prompt.template == f"{BPO_INSTRUCTION}\n{{prompt}}"
    assert prompt.template_vars == ["prompt"]
    assert "query_transform:bpo_prompt" in engine.get_prompts()

    engine.update_prompts(
        {"query_transform:bpo_prompt": PromptTemplate("Improve this prompt:\n{prompt}")}
    )
    engine.query("Why do cats purr?")
    assert llm.calls[-1][1][0].content == "Improve this prompt:\nWhy do cats purr?"
    with pytest.raises(ValueError, match=r"only field is \{prompt\}"):
        transform.update_prompts({"bpo_prompt": PromptTemplate("{question}")})


def test_a_trained_model_backend_has_a_fixed_prompt() -> None:
    transform = BPOQueryTransform(CallableBackend(str.upper))
    assert transform.get_prompts() == {}
    with pytest.raises(ValueError, match=r"fixed instruction.*BPOQueryTransform\(llm\)"):
        transform.update_prompts({"bpo_prompt": PromptTemplate("{prompt}")})


# -- detection without importing the other framework ------------------------------------------


def test_from_llm_refuses_what_is_not_a_model() -> None:
    with pytest.raises(TypeError, match="from_llm takes a LangChain chat model or LLM"):
        from_llm(lambda p: p)
    with pytest.raises(TypeError, match="BPORunnable takes a BPOOptimizer, a Backend, a LangChain"):
        BPORunnable("http://localhost:8080")


def test_detecting_a_llama_index_llm_imports_no_langchain() -> None:
    code = (
        "import sys\n"
        "from llama_index.core.llms import MockLLM\n"
        "from bpo_integrations import BPOOptimizer\n"
        "BPOOptimizer.from_llm(MockLLM())\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0].startswith('langchain'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- a real provider client: ChatOpenAI against an OpenAI-compatible server -------------------


def test_chat_openai_as_the_optimizer_through_sync_and_async_apis() -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from bpo_integrations.testing.servers import ScriptedServer

    with ScriptedServer(lambda message: rewrite_of(message), model_id="gpt-4o-mini") as server:
        llm = langchain_openai.ChatOpenAI(
            model="gpt-4o-mini", base_url=server.url + "/v1", api_key="sk-test", max_retries=0
        )
        with BPOOptimizer.from_llm(llm, timeout=10) as optimizer:
            sync = optimizer.optimize("Why is the sky blue?")

        async def run() -> list[Any]:
            async with BPOOptimizer.from_llm(llm, timeout=10) as optimizer:
                return await optimizer.aoptimize_batch(["first one", "second one"])

        results = asyncio.run(run())
        bodies = [body for path, body in server.requests if path == "/v1/chat/completions"]

    assert sync.text == "Why is the sky blue?" + SUFFIX
    assert [r.text for r in results] == ["first one" + SUFFIX, "second one" + SUFFIX]
    assert bodies[0]["messages"] == [
        {"role": "user", "content": format_bpo_message("Why is the sky blue?")}
    ]
