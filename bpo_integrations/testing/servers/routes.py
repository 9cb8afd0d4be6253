"""The answers of a scripted server's POST routes: TGI's generate routes and OpenAI's."""

from __future__ import annotations

import random
import time
import uuid
from typing import TYPE_CHECKING, Any

from bpo_integrations.testing.servers import identity
from bpo_integrations.testing.servers.faults import Fault, is_kind
from bpo_integrations.testing.servers.script import (
    RequestInvalid,
    ScriptedCompletion,
    complete,
    last_user_text,
    openai_finish,
    split_words,
    stop_list,
    validate_tgi,
)

if TYPE_CHECKING:
    from bpo_integrations.testing.servers.handler import ScriptedHandler

_END_OF_TEXT = {"id": 2, "text": "</s>", "logprob": -0.1, "special": True}


# -- TGI ------------------------------------------------------------------------------------------


def generate(
    handler: ScriptedHandler,
    body: dict[str, Any],
    fault: Fault | None,
    *,
    stream: bool,
    as_list: bool,
) -> None:
    """TGI's ``/generate`` (a list of one answer on ``/``) or ``/generate_stream``."""
    server = handler.scripted
    params = validate_tgi(body)
    inputs: str = body["inputs"]
    seed = params.get("seed")
    if seed is None and params.get("do_sample"):
        seed = random.randint(1, 2**31)
    done = complete(
        server.responders,
        inputs,
        fault,
        max_tokens=params.get("max_new_tokens"),
        stop=list(params.get("stop") or []),
        seed=seed,
        keep_stop=True,
    )
    tokens = [
        {"id": next(server._ids) % 32000, "text": w, "logprob": -0.5, "special": False}
        for w in done.words
    ]
    text = inputs + done.text if params.get("return_full_text") else done.text
    if stream:
        _generate_stream(handler, fault, done, tokens, text, inputs)
        return
    if is_kind(fault, "malformed_json"):
        handler.send_raw(b'{"generated_text": "broken')
        return
    response: dict[str, Any] = {"generated_text": text}
    if params.get("details", True):
        response["details"] = {
            "finish_reason": done.finish_reason,
            "generated_tokens": len(done.words),
            "prefill": [],
            "tokens": tokens,
            "seed": done.seed,
        }
    handler.send_json([response] if as_list else response)


def _generate_stream(
    handler: ScriptedHandler,
    fault: Fault | None,
    done: ScriptedCompletion,
    tokens: list[dict[str, Any]],
    text: str,
    inputs: str,
) -> None:
    handler.start_sse()
    if is_kind(fault, "malformed_json"):
        handler.sse('{"index": 0, "token": {"id": 1, "text": "bro')
        return
    tokens = tokens or [_END_OF_TEXT]
    details = {
        "finish_reason": done.finish_reason,
        "generated_tokens": len(done.words),
        "input_length": len(split_words(inputs)),
        "seed": done.seed,
    }
    for index, token in enumerate(tokens):
        last = index == len(tokens) - 1
        handler.sse(
            {
                "index": index,
                "token": token,
                "generated_text": text if last else None,
                "details": details if last else None,
            }
        )


# -- OpenAI ---------------------------------------------------------------------------------------


def _unknown_model(handler: ScriptedHandler, body: dict[str, Any]) -> bool:
    """Answer 404 (vLLM's message) for a model this server does not serve."""
    server = handler.scripted
    model = body.get("model")
    if identity.serves(server, model):
        return False
    served = ", ".join([server.model_id, *server.lora_modules])
    message = f"The model `{model}` does not exist. Valid aliases: {served}."
    handler.send_error_body(404, message, "model")
    return True


def _completion_choice(
    handler: ScriptedHandler,
    body: dict[str, Any],
    fault: Fault | None,
    stop: list[str],
    index: int,
    text: Any,
) -> tuple[dict[str, Any], ScriptedCompletion]:
    if not isinstance(text, str) or not text:
        raise RequestInvalid("`prompt` must be a string or a non-empty list of strings")
    done = complete(
        handler.scripted.responders,
        text,
        fault,
        max_tokens=body.get("max_tokens", 16),
        stop=stop,
        seed=body.get("seed"),
        keep_stop=False,
    )
    choice: dict[str, Any] = {
        "index": index,
        "text": done.text,
        "finish_reason": openai_finish(done),
        "logprobs": None,
    }
    flavor = handler.scripted.flavor
    if flavor == "vllm":
        choice["stop_reason"] = done.stop
    if flavor == "sglang":
        choice["matched_stop"] = done.stop
    return choice, done


def completions(handler: ScriptedHandler, body: dict[str, Any], fault: Fault | None) -> None:
    """OpenAI's legacy ``/v1/completions``: one choice per prompt."""
    if _unknown_model(handler, body):
        return
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts:
        raise RequestInvalid("`prompt` must be a string or a non-empty list of strings")
    stop = stop_list(body)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, text in enumerate(prompts):
        choice, done = _completion_choice(handler, body, fault, stop, index, text)
        choices.append(choice)
        prompt_tokens += len(split_words(text))
        completion_tokens += len(done.words)
    if is_kind(fault, "malformed_json"):
        handler.send_raw(b'{"id": "cmpl-broken", "choices": [{"te')
        return
    handler.send_json(
        {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or handler.scripted.model_id,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def streamed_completion(
    handler: ScriptedHandler, body: dict[str, Any], fault: Fault | None
) -> None:
    """OpenAI's legacy ``/v1/completions`` streamed: one choice per prompt."""
    if _unknown_model(handler, body):
        return
    server = handler.scripted
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RequestInvalid("`prompt` must be a string or a list of strings")
    stop = stop_list(body)
    done = [
        complete(
            server.responders,
            p,
            fault,
            max_tokens=body.get("max_tokens", 16),
            stop=stop,
            seed=body.get("seed"),
            keep_stop=False,
        )
        for p in prompts
    ]
    base = {
        "id": f"cmpl-{uuid.uuid4().hex[:12]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": server.model_id,
    }
    handler.start_sse()
    for index, completion in enumerate(done):
        reason = openai_finish(completion)
        words = completion.words or [""]
        for position, word in enumerate(words):
            last = position == len(words) - 1
            choice = {
                "index": index,
                "text": word,
                "finish_reason": reason if last else None,
                "logprobs": None,
            }
            handler.sse({**base, "choices": [choice]})
    handler.sse("[DONE]")


def chat(handler: ScriptedHandler, body: dict[str, Any], fault: Fault | None) -> None:
    """OpenAI's ``/v1/chat/completions``, streamed or not."""
    if _unknown_model(handler, body):
        return
    server = handler.scripted
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestInvalid("`messages` must be a non-empty list")
    text = last_user_text(messages)
    done = complete(
        server.responders,
        text,
        fault,
        max_tokens=body.get("max_tokens", body.get("max_completion_tokens")),
        stop=stop_list(body),
        seed=body.get("seed"),
        keep_stop=False,
        messages=messages,
    )
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "created": int(time.time()),
        "model": server.model_id,
        "system_fingerprint": "scripted-3.3.4",
    }
    usage = {
        "prompt_tokens": len(split_words(text)),
        "completion_tokens": len(done.words),
        "total_tokens": len(split_words(text)) + len(done.words),
    }
    if body.get("stream"):
        _chat_stream(handler, fault, done, base, usage)
        return
    if is_kind(fault, "malformed_json"):
        handler.send_raw(b'{"id": "chatcmpl-broken", "choices": [{"mess')
        return
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": done.text},
        "finish_reason": openai_finish(done),
        "logprobs": None,
    }
    handler.send_json({**base, "object": "chat.completion", "choices": [choice], "usage": usage})


def _chat_stream(
    handler: ScriptedHandler,
    fault: Fault | None,
    done: ScriptedCompletion,
    base: dict[str, Any],
    usage: dict[str, int],
) -> None:
    handler.start_sse()
    if is_kind(fault, "malformed_json"):
        handler.sse('{"id": "chatcmpl-broken", "choices": [{"delta": {"con')
        return
    finish = openai_finish(done)
    words = done.words or [""]
    for index, word in enumerate(words):
        last = index == len(words) - 1
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": word},
            "finish_reason": finish if last else None,
            "logprobs": None,
        }
        chunk = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [choice],
            "usage": usage if last else None,
        }
        handler.sse(chunk)
    handler.sse("[DONE]")
