"""The LlamaIndex query transform over a real VectorStoreIndex, with a recording LLM and embedder."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from doubles_llama_index import (
    ADVICE,
    EventCollector,
    KeywordEmbedding,
    PromptRecordingLLM,
    build_index,
)
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms import MockLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.query_engine import TransformQueryEngine
from llama_index.core.schema import QueryBundle

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import CallableBackend
from bpo_integrations.errors import BackendUnavailableError
from bpo_integrations.llama_index import (
    BPOQueryBundle,
    BPOQueryOptimizedEvent,
    BPOQueryTransform,
    BPOTransformQueryEngine,
)
from bpo_integrations.llama_index import query_engine as query_engine_module
from bpo_integrations.llama_index import query_transform as query_transform_module

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Why do cats purr?"
REWRITE = QUESTION + ADVICE


class RecordingLLM(PromptRecordingLLM):
    """MockLLM (it echoes its prompt) that also keeps every prompt it was asked to complete."""

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._prompts.append(prompt)
        return super().complete(prompt, formatted=formatted, **kwargs)


@pytest.fixture
def embedder(monkeypatch: pytest.MonkeyPatch) -> KeywordEmbedding:
    model = KeywordEmbedding()
    monkeypatch.setattr(Settings, "_embed_model", model)
    return model


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> RecordingLLM:
    model = RecordingLLM()
    monkeypatch.setattr(Settings, "_llm", model)
    return model


@pytest.fixture
def index(embedder: KeywordEmbedding) -> VectorStoreIndex:
    return build_index(embedder)


def rewriter(calls: list[str] | None = None) -> CallableBackend:
    def rewrite(prompt: str) -> str:
        if calls is not None:
            calls.append(prompt)
        return prompt + ADVICE

    return CallableBackend(rewrite)


def make_engine(
    index: VectorStoreIndex,
    llm: RecordingLLM,
    transform: BPOQueryTransform,
    engine_cls: type[TransformQueryEngine] = BPOTransformQueryEngine,
) -> TransformQueryEngine:
    return engine_cls(index.as_query_engine(llm=llm, similarity_top_k=1), transform)


def retrieved_doc(response: Any) -> str:
    return response.source_nodes[0].node.ref_doc_id


# -- synthesis sees the rewrite, retrieval the original -------------------------------------------


def test_stock_engine_synthesis_sees_rewrite_and_retrieval_embeds_original(
    index: VectorStoreIndex, llm: RecordingLLM, embedder: KeywordEmbedding
) -> None:
    transform = BPOQueryTransform(BPOOptimizer(rewriter()))
    engine = make_engine(index, llm, transform, TransformQueryEngine)

    response = engine.query(QUESTION)

    assert len(llm.prompts) == 1
    assert REWRITE in llm.prompts[0]
    assert embedder.queries == [QUESTION]
    assert retrieved_doc(response) == "cat"


@pytest.mark.parametrize(
    ("embed", "embedded", "doc"),
    [
        ("original", [QUESTION], "cat"),
        ("optimized", [REWRITE], "python"),
        ("both", [QUESTION, REWRITE], "cat"),
    ],
)
def test_embed_option_chooses_what_retrieval_embeds(
    index: VectorStoreIndex,
    llm: RecordingLLM,
    embedder: KeywordEmbedding,
    embed: Any,
    embedded: list[str],
    doc: str,
) -> None:
    transform = BPOQueryTransform(BPOOptimizer(rewriter()), embed=embed)
    response = make_engine(index, llm, transform).query(QUESTION)

    assert embedder.queries == embedded
    assert retrieved_doc(response) == doc
    assert REWRITE in llm.prompts[0]


def test_original_mode_keeps_the_bundles_own_embedding_strs_and_embedding() -> None:
    transform = BPOQueryTransform(BPOOptimizer(rewriter()))
    bundle = QueryBundle(
        query_str=QUESTION, custom_embedding_strs=["a hypothetical answer"], embedding=[1.0, 2.0]
    )

    kept = transform.run(bundle)
    assert kept.query_str == REWRITE
    assert kept.custom_embedding_strs == ["a hypothetical answer"]
    assert kept.embedding == [1.0, 2.0]

    replaced = BPOQueryTransform(BPOOptimizer(rewriter()), embed="optimized").run(bundle)
    assert replaced.custom_embedding_strs == [REWRITE]
    assert replaced.embedding is None


# -- async ----------------------------------------------------------------------------------------


async def test_async_engine_synthesis_sees_rewrite_and_retrieval_embeds_original(
    index: VectorStoreIndex, llm: RecordingLLM, embedder: KeywordEmbedding
) -> None:
    async def arewrite(prompt: str) -> str:
        await asyncio.sleep(0)
        return prompt + ADVICE

    transform = BPOQueryTransform(BPOOptimizer(CallableBackend(arewrite)))
    response = await make_engine(index, llm, transform).aquery(QUESTION)

    assert REWRITE in llm.prompts[0]
    assert embedder.queries == [QUESTION]
    assert retrieved_doc(response) == "cat"
    assert response.metadata["bpo"]["optimized"] == REWRITE


async def _loop_ticks_during_rewrite(engine_cls: type[TransformQueryEngine], index: Any) -> int:
    """How often another task on the caller's loop ran while the optimizer's backend waited."""
    ticks = 0
    during: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    async def slow_rewrite(prompt: str) -> str:
        start = ticks
        await asyncio.sleep(0.2)
        during.append(ticks - start)
        return prompt + ADVICE

    transform = BPOQueryTransform(BPOOptimizer(CallableBackend(slow_rewrite)))
    engine = engine_cls(index.as_query_engine(llm=MockLLM()), transform)
    task = asyncio.create_task(ticker())
    try:
        response = await engine.aquery(QUESTION)
    finally:
        task.cancel()
    assert ADVICE in str(response)
    return during[0]


async def test_async_engine_keeps_the_event_loop_free(index: VectorStoreIndex) -> None:
    assert await _loop_ticks_during_rewrite(BPOTransformQueryEngine, index) >= 5


async def test_stock_engine_blocks_the_event_loop_which_is_why_ours_exists(
    index: VectorStoreIndex,
) -> None:
    assert await _loop_ticks_during_rewrite(TransformQueryEngine, index) == 0


async def test_async_engine_runs_a_transform_without_arun_in_a_thread(
    index: VectorStoreIndex, llm: RecordingLLM
) -> None:
    from llama_index.core.indices.query.query_transform import HyDEQueryTransform

    engine = BPOTransformQueryEngine(
        index.as_query_engine(llm=llm), HyDEQueryTransform(llm=llm, include_original=True)
    )
    response = await engine.aquery(QUESTION)
    assert len(llm.prompts) == 2  # the hypothetical document, then the answer
    assert "bpo" not in (response.metadata or {})


async def test_aretrieve_and_asynthesize(
    index: VectorStoreIndex, llm: RecordingLLM, embedder: KeywordEmbedding
) -> None:
    calls: list[str] = []
    transform = BPOQueryTransform(BPOOptimizer(rewriter(calls), cache_size=0))
    engine = make_engine(index, llm, transform)

    bundle = await transform.arun(QUESTION)
    nodes = await engine.aretrieve(bundle)
    response = await engine.asynthesize(bundle, nodes)

    assert [n.node.ref_doc_id for n in nodes] == ["cat"]
    assert embedder.queries == [QUESTION]
    assert REWRITE in llm.prompts[0]
    assert response.metadata["bpo"]["original"] == QUESTION
    assert calls == [QUESTION]  # an optimized bundle is not optimized again


# -- fallback -------------------------------------------------------------------------------------


def _failing_backend() -> CallableBackend:
    def down(prompt: str) -> str:
        raise BackendUnavailableError("connection refused by http://127.0.0.1:9")

    return CallableBackend(down)


def test_fallback_answers_with_the_original_query(
    index: VectorStoreIndex, llm: RecordingLLM, embedder: KeywordEmbedding
) -> None:
    transform = BPOQueryTransform(BPOOptimizer(_failing_backend(), max_retries=0))
    response = make_engine(index, llm, transform).query(QUESTION)

    assert f"Query: {QUESTION}\n" in llm.prompts[0]
    assert ADVICE not in llm.prompts[0]
    assert embedder.queries == [QUESTION]
    record = response.metadata["bpo"]
    assert record["fell_back"] is True
    assert record["fallback_reason"].startswith("backend_unavailable")


async def test_async_fallback_answers_with_the_original_query(
    index: VectorStoreIndex, llm: RecordingLLM
) -> None:
    transform = BPOQueryTransform(BPOOptimizer(_failing_backend(), max_retries=0))
    response = await make_engine(index, llm, transform).aquery(QUESTION)

    assert f"Query: {QUESTION}\n" in llm.prompts[0]
    assert response.metadata["bpo"]["fell_back"] is True


# -- where the optimization is visible ------------------------------------------------------------


def test_bundle_response_metadata_and_instrumentation_event(
    index: VectorStoreIndex, llm: RecordingLLM
) -> None:
    collector = EventCollector()
    dispatcher = get_dispatcher(query_transform_module.__name__)
    dispatcher.add_event_handler(collector)
    try:
        transform = BPOQueryTransform(BPOOptimizer(rewriter()))
        bundle = transform.run(QUESTION)
        response = make_engine(index, llm, transform).query(QUESTION)
    finally:
        dispatcher.event_handlers.remove(collector)

    assert isinstance(bundle, BPOQueryBundle)
    assert bundle.optimization is not None
    assert bundle.optimization.original == QUESTION
    assert bundle.optimization.optimized == REWRITE
    record = response.metadata[query_engine_module.METADATA_KEY]
    assert record["optimized"] == REWRITE
    assert record["fell_back"] is False
    assert record["cached"] is True  # the engine's query reused the rewrite of transform.run
    events = [e for e in collector.events if isinstance(e, BPOQueryOptimizedEvent)]
    assert [e.query_str for e in events] == [REWRITE, REWRITE]
    assert events[0].embedding_strs == [QUESTION]
    assert events[0].result.backend == "callable"


def test_transform_has_no_prompts_and_refuses_prompt_updates(
    index: VectorStoreIndex, llm: RecordingLLM
) -> None:
    transform = BPOQueryTransform(BPOOptimizer(rewriter()))
    engine = make_engine(index, llm, transform)

    assert transform.get_prompts() == {}
    assert not any(key.startswith("query_transform:") for key in engine.get_prompts())
    with pytest.raises(ValueError, match=r"fixed instruction.*another backend"):
        engine.update_prompts({"query_transform:bpo_prompt": PromptTemplate("{query_str}")})


def test_bad_arguments_name_the_fix() -> None:
    optimizer = BPOOptimizer(rewriter())
    with pytest.raises(ValueError, match=r"embed must be one of .*'original'.*got 'query'"):
        BPOQueryTransform(optimizer, embed="query")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes a BPOOptimizer, a Backend.*got str"):
        BPOQueryTransform("http://localhost:8080")
    with pytest.raises(TypeError, match="str or a QueryBundle"):
        asyncio.run(BPOQueryTransform(optimizer).arun(42))  # type: ignore[arg-type]


# -- docs, examples, imports ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (
            "llama_index_query_engine.py",
            [
                "the LLM was asked: Why do cats purr? Explain the mechanism",
                "retrieval embeds: ['Why do cats purr?']",
                "bpo fell back: False",
            ],
        ),
        (
            "llama_index_workflow.py",
            [
                "optimized query: Why do cats purr? Explain the mechanism step by step.",
                "bpo fell back: False",
                "cat-facts",
                "the LLM was asked: Why do cats purr? Explain the mechanism step by step.",
            ],
        ),
    ],
)
def test_examples_run_offline(script: str, expected: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OPENAI_API_KEY": ""},
    )
    assert done.returncode == 0, done.stderr
    for line in expected:
        assert line in done.stdout


def test_integration_imports_no_langchain_and_package_imports_no_llama_index() -> None:
    code = (
        "import sys, bpo_integrations\n"
        "assert 'llama_index' not in sys.modules, 'bpo_integrations imported llama_index'\n"
        "import bpo_integrations.llama_index\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_legacy_callback_manager_sees_each_optimization(
    index: VectorStoreIndex, llm: RecordingLLM
) -> None:
    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler

    debug = LlamaDebugHandler()
    transform = BPOQueryTransform(rewriter(), callback_manager=CallbackManager([debug]))
    asyncio.run(make_engine(index, llm, transform).aquery(QUESTION))

    ((start, end),) = debug.get_event_pairs(CBEventType.QUERY)
    assert start.payload["query_str"] == QUESTION
    assert end.payload["bpo"]["optimized"] == REWRITE
