"""RAG with BPO: the usual layout (documents in the optimized prompt) is warned about once, the
right one (optimize the question, then build the prompt) is shown and works."""

from __future__ import annotations

import subprocess
import sys
import warnings
from operator import itemgetter
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from bpo_integrations import BPOOptimizer
from bpo_integrations.langchain import BPORunnable, FilledPromptWarning
from bpo_integrations.langchain.runnable import looks_like_filled_rag_prompt
from bpo_integrations.testing.backends import RecordingBackend

REPO = Path(__file__).resolve().parents[2]
SUFFIX = " Explain step by step."
QUESTION = "Why is the sky blue?"
# Retrieved chunks are long; these stand for them.
DOCUMENTS = [
    "Rayleigh scattering. " + "Air molecules scatter short wavelengths more than long ones. " * 12,
    "Sunsets. " + "Sunlight crosses more air at dusk, so the blue is scattered away. " * 12,
]
# The shape of LangChain's hub prompt rlm/rag-prompt.
RAG_PROMPT = (
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved "
    "context to answer the question. If you don't know the answer, just say that you don't "
    "know.\nQuestion: {question}\nContext: {context}\nAnswer:"
)


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend(SUFFIX)


@pytest.fixture
def retriever():  # type: ignore[no-untyped-def]
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_texts(DOCUMENTS)
    return store.as_retriever(search_kwargs={"k": 2})


def format_docs(documents: list[Document]) -> str:
    return "\n\n".join(document.page_content for document in documents)


def test_the_usual_layout_warns_once_and_points_to_context_key(
    backend: RecordingBackend, retriever
) -> None:
    bpo = BPORunnable(BPOOptimizer(backend))
    prompt = ChatPromptTemplate.from_messages([("human", RAG_PROMPT)])
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | bpo

    with pytest.warns(FilledPromptWarning) as caught:
        chain.invoke(QUESTION)
        chain.invoke("Why is the sunset red?")

    assert len(caught) == 1
    message = str(caught[0].message)
    assert "looks like a filled RAG prompt" in message
    assert 'context_key="context"' in message
    assert 'itemgetter("question") | bpo' in message
    assert DOCUMENTS[0] in backend.prompts[0]  # what it warns about: the documents went in


def test_optimize_the_question_then_build_the_prompt(backend: RecordingBackend, retriever) -> None:
    bpo = BPORunnable(BPOOptimizer(backend))
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from this context:\n{context}"), ("human", "{question}")]
    )
    chain = {
        "context": itemgetter("question") | retriever | format_docs,
        "question": itemgetter("question") | bpo,
    } | prompt

    with warnings.catch_warnings():
        warnings.simplefilter("error", FilledPromptWarning)
        messages = chain.invoke({"question": QUESTION}).messages

    assert backend.prompts == [QUESTION]  # the optimizer saw the question only
    assert messages[1].content == QUESTION + SUFFIX
    assert all(document in messages[0].content for document in DOCUMENTS)


def test_context_key_keeps_the_documents_out_of_the_rewrite(
    backend: RecordingBackend, retriever
) -> None:
    bpo = BPORunnable(BPOOptimizer(backend), input_key="question", context_key="context")
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | bpo
        | PromptTemplate.from_template(RAG_PROMPT)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FilledPromptWarning)
        text = chain.invoke(QUESTION).to_string()

    assert backend.prompts == [QUESTION]
    assert f"Question: {QUESTION}{SUFFIX}\nContext: " in text


@pytest.mark.parametrize(
    "text",
    [
        RAG_PROMPT.format(question=QUESTION, context="\n\n".join(DOCUMENTS)),
        "Context information is below.\n---\n" + "\n".join(DOCUMENTS) + "\n---\nQuery: Why?",
        "<context>\n" + "\n".join(DOCUMENTS) + "\n</context>\nWhy is the sky blue?",
    ],
)
def test_filled_prompts_are_recognised(text: str) -> None:
    assert looks_like_filled_rag_prompt(text)


@pytest.mark.parametrize(
    "text",
    [
        QUESTION,
        "Context: I am writing a novel. Suggest a title.",  # short: a user's own context
        "Question: " + "Why is the sky blue, and why are sunsets red and clouds white? " * 30,
        "Write a story about a dragon who learns to read. " * 40,  # long, but no context block
    ],
)
def test_ordinary_prompts_are_not(text: str) -> None:
    assert not looks_like_filled_rag_prompt(text)


def test_the_rag_example_runs_offline() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "langchain_rag.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "documents as retrieved: True" in done.stdout
    assert "the model is asked: Why is the sky blue? Explain the physics" in done.stdout
    assert "context untouched: True" in done.stdout
    assert "FilledPromptWarning" not in done.stderr
