"""The serve engine: streams and plain requests are requests of one continuous-batching engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("openvino_genai")

from bpo_integrations.backends.local import LocalBackend
from bpo_integrations.serve.engine import Completion, Engine, SamplingParams, TokenInfo
from bpo_integrations.template import format_bpo_prompt


async def _stream(engine: Engine, text: str, max_new_tokens: int) -> list[TokenInfo | Completion]:
    params = SamplingParams(max_new_tokens)
    return [item async for item in engine.stream(engine.encode(text), params)]


@pytest.fixture(scope="module")
def engine(tiny_llama_dir: Path):
    engine = Engine(LocalBackend(tiny_llama_dir / "tiny.gguf"))
    yield engine
    engine.close()


def test_streams_and_plain_requests_share_the_engine(engine: Engine) -> None:
    async def scenario() -> tuple[list[TokenInfo | Completion], Completion]:
        streamed, plain = await asyncio.gather(
            _stream(engine, "Tell me about Harry Potter", 6),
            engine.generate(engine.encode("Why is the sky blue?"), SamplingParams(6)),
        )
        return streamed, plain

    before = engine.stats["requests"]
    streamed, plain = asyncio.run(scenario())
    tokens, completion = streamed[:-1], streamed[-1]
    assert isinstance(completion, Completion) and len(tokens) == 6
    assert completion.text == "".join(t.text for t in tokens if isinstance(t, TokenInfo))
    assert plain.generated_tokens == 6
    assert engine.stats["requests"] - before == 2
    assert all(isinstance(t, TokenInfo) and t.logprob is not None for t in tokens)


def test_a_stream_closed_early_cancels_its_request(engine: Engine) -> None:
    async def scenario() -> None:
        stream = engine.stream(engine.encode("Hi"), SamplingParams(max_new_tokens=2000))
        first = await anext(stream)
        assert isinstance(first, TokenInfo)
        await stream.aclose()  # the client hung up

    asyncio.run(scenario())
    generated = engine.stats["generated_tokens"]
    again = asyncio.run(_stream(engine, "Hi", 4))  # the engine goes on, the stopped one is gone
    assert len(again) == 5
    assert engine.stats["generated_tokens"] - generated < 200


def test_the_length_rule_applies_to_bpo_template_prompts_only(engine: Engine) -> None:
    ruled = Engine(engine.backend, length_rule=True)  # the same loaded backend
    prompt = "Why is the sky blue? Explain it to a child."
    minimum = len(engine.model.encode(prompt)) + 5
    request = ruled._submit(ruled.encode(format_bpo_prompt(prompt)), SamplingParams(64))
    assert len(request.result().token_ids) >= minimum
    plain = ruled._submit(ruled.encode(prompt), SamplingParams(64))
    assert plain.result().token_ids  # raw text: no minimum asked (the model may stop any time)


def test_a_model_trained_on_the_bpo_template_reads_chat_messages_as_that_template(
    tiny_llama_dir: Path,
) -> None:
    import json
    import shutil
    import tempfile

    from bpo_integrations.inference.prepare import prepare_model
    from bpo_integrations.template import BPO_TEMPLATE, format_bpo_message

    folder = Path(tempfile.mkdtemp())
    shutil.copytree(prepare_model(tiny_llama_dir / "tiny.gguf").path, folder, dirs_exist_ok=True)
    (folder / "bpo_training.json").write_text(json.dumps({"template": BPO_TEMPLATE}))
    engine = Engine(LocalBackend(folder))
    try:
        message = format_bpo_message("Tell me about Harry Potter")
        rendered = engine.chat_prompt([{"role": "user", "content": message}])
        assert rendered == format_bpo_prompt("Tell me about Harry Potter")
    finally:
        engine.close()
