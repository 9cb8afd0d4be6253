"""BPO in a RAG chain: optimize the question, then build the prompt with the retrieved documents.

The usual layout ``{"context": retriever, "question": ...} | prompt | bpo | llm`` would hand the
optimizer the filled prompt, documents included: slow, and the rewrite is usually rejected
(``BPORunnable`` warns when it sees such a prompt). Put BPO on the question instead, before the
prompt, and retrieve with the user's own words.

Runs offline as written: a plain function stands in for the BPO model, a fake embedding for
yours, and ``ParrotFakeChatModel`` answers with the question it was asked. Set
``BPO_TGI_URL=http://localhost:8080`` to optimize with a real BPO server.

    python examples/langchain_rag.py
"""

from __future__ import annotations

import os
from operator import itemgetter

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models import ParrotFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from bpo_integrations import BPOOptimizer
from bpo_integrations.backends import Backend, CallableBackend
from bpo_integrations.langchain import BPORunnable

DOCUMENTS = [
    "Rayleigh scattering: air molecules scatter short (blue) wavelengths far more than red ones.",
    "At sunset sunlight crosses more air, so the blue is scattered away and red light remains.",
]


def stand_in_bpo(prompt: str) -> str:
    """What a BPO model does to a terse question: spell out what a helpful answer contains."""
    return f"{prompt} Explain the physics step by step, and mention what we see at sunset."


def make_backend() -> Backend:
    url = os.environ.get("BPO_TGI_URL")
    if url:
        from bpo_integrations.backends import TGIBackend

        return TGIBackend(url)
    return CallableBackend(stand_in_bpo)


def format_docs(documents: list[Document]) -> str:
    return "\n".join(document.page_content for document in documents)


def main() -> None:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))  # your embeddings here
    store.add_texts(DOCUMENTS)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from this context only:\n{context}"), ("human", "{question}")]
    )
    bpo = BPORunnable(BPOOptimizer(make_backend()))

    # 1. Optimize the question, retrieve with the original, then build the prompt.
    build = {
        "context": itemgetter("question") | retriever | format_docs,
        "question": itemgetter("question") | bpo,
    } | prompt
    messages = build.invoke({"question": "Why is the sky blue?"}).messages
    print("documents as retrieved:", all(text in messages[0].content for text in DOCUMENTS))
    print("the model is asked:", messages[1].content)

    chain = build | ParrotFakeChatModel() | StrOutputParser()  # your chat model here
    print("answer:", chain.invoke({"question": "Why is the sunset red?"}))

    # 2. Or retrieve first and hand BPO both: it rewrites input_key, never context_key.
    both = {"context": retriever | format_docs, "question": RunnablePassthrough()} | BPORunnable(
        bpo.optimizer, input_key="question", context_key="context"
    )
    value = both.invoke("Why is the sky blue?")
    print("optimized question:", value["question"])
    print(
        "context untouched:",
        value["context"] == format_docs(retriever.invoke("Why is the sky blue?")),
    )


if __name__ == "__main__":
    main()
