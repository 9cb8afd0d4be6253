"""An LCEL chain whose prompts are optimized by BPO on vLLM (or SGLang): ``prompt | bpo | model``.

The ``chain`` service of ``docker-compose.yml`` runs it against the ``vllm`` service. It runs the
same against any OpenAI-compatible server that serves the optimizer, ``bpo serve`` included:

    bpo serve --port 8000 --served-model-name THUDM/BPO &
    BPO_BASE_URL=http://localhost:8000/v1 BPO_MODEL=THUDM/BPO python examples/vllm/chain.py

``BPO_MODEL`` is the served model's name or a LoRA module's (``bpo`` for the ``vllm-lora``
service). The answering model is any OpenAI-compatible server when ``ANSWER_BASE_URL`` is set
(with ``ANSWER_MODEL`` and ``OPENAI_API_KEY``); otherwise a parrot that answers with what it was
asked, so you see the optimized prompt.
"""

from __future__ import annotations

import os
import sys

from langchain_core.language_models import ParrotFakeChatModel
from langchain_core.messages import convert_to_openai_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

from bpo_integrations import BPOOptimizer, FallbackReason, GenerationSettings
from bpo_integrations.backends.openai import OpenAIBackend
from bpo_integrations.langchain import BPORunnable

QUESTIONS = [
    "Tell me about Harry Potter",
    "how do i make my python script faster",
    "Write a short poem about the sea.",
]


def answering_model() -> Runnable:
    """An OpenAI-compatible chat model from ``ANSWER_BASE_URL``, else a parrot."""
    base_url = os.environ.get("ANSWER_BASE_URL")
    if not base_url:
        return ParrotFakeChatModel() | StrOutputParser()
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    model = os.environ.get("ANSWER_MODEL", "default")

    def ask(value: PromptValue) -> str:
        messages = convert_to_openai_messages(value.to_messages())
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=512)
        return answer.choices[0].message.content or ""

    return RunnableLambda(ask)


def build_chain(optimizer: BPOOptimizer) -> Runnable:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a helpful and harmless assistant."), ("human", "{question}")]
    )
    return prompt | BPORunnable(optimizer=optimizer) | answering_model()


def main(base_url: str | None = None, model: str | None = None, max_new_tokens: int = 256) -> int:
    base_url = base_url or os.environ.get("BPO_BASE_URL", "http://localhost:8000/v1")
    model = model or os.environ.get("BPO_MODEL", "THUDM/BPO")
    settings = GenerationSettings.for_mode("stable", max_new_tokens=max_new_tokens)
    backend = OpenAIBackend(model, base_url=base_url, timeout=60)
    optimizer = BPOOptimizer(backend, settings=settings, timeout=120)
    chain = build_chain(optimizer)
    unreachable = 0
    for question in QUESTIONS:
        result = optimizer.optimize(question)  # cached: the chain below reuses this rewrite
        note = f"  [kept the original: {result.fallback_message}]" if result.fell_back else ""
        print(f"question:  {question}")
        print(f"optimized: {result.optimized}{note}  ({result.latency_s:.2f} s)")
        print(f"answer:    {chain.invoke({'question': question})}\n")
        unreachable += result.fallback_reason in (
            FallbackReason.BACKEND_UNAVAILABLE,
            FallbackReason.BACKEND_OVERLOADED,
            FallbackReason.BACKEND_ERROR,
        )
    if unreachable == len(QUESTIONS):
        print(f"BPO at {base_url} ({model}) did not answer: is the server up?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
