"""What a scripted server answers: the responder's text, cut at a stop, truncated, in words."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bpo_integrations.settings import FinishReason
from bpo_integrations.testing.servers.faults import Fault, is_kind

RUNAWAY_WORDS = 4000


class RequestInvalid(Exception):
    """A request the scripted server rejects as TGI would (HTTP 422)."""


@dataclass(frozen=True)
class ScriptedCompletion:
    text: str
    finish_reason: FinishReason
    words: list[str]
    seed: int | None
    stop: str | None = None
    """The stop sequence that ended the completion, if one did."""


def echo(text: str) -> str:
    return text


def split_words(text: str) -> list[str]:
    """One token per whitespace-separated word, each keeping its leading whitespace."""
    words: list[str] = []
    current = ""
    for char in text:
        if char.isspace() and current.strip():
            words.append(current)
            current = ""
        current += char
    if current:
        words.append(current)
    return words


@dataclass(frozen=True)
class Responders:
    responder: Callable[[str], str]
    chat_responder: Callable[[list[dict[str, Any]]], str] | None = None

    def answer(self, text: str, messages: list[dict[str, Any]] | None) -> str:
        if messages is not None and self.chat_responder is not None:
            completion = self.chat_responder(messages)
        else:
            completion = self.responder(text)
        if not isinstance(completion, str):
            raise TypeError(f"the responder must return a str, got {type(completion).__name__}")
        return completion


def complete(
    responders: Responders,
    text: str,
    fault: Fault | None,
    *,
    max_tokens: int | None,
    stop: list[str],
    seed: int | None,
    keep_stop: bool,
    messages: list[dict[str, Any]] | None = None,
) -> ScriptedCompletion:
    """The completion of ``text``: cut at the first ``stop`` (kept with ``keep_stop``, TGI's way,
    or dropped, OpenAI's), then truncated to ``max_tokens`` words."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise RequestInvalid("`max_tokens` must be an integer")
    if is_kind(fault, "runaway"):
        words = split_words("more " * RUNAWAY_WORDS)
        return ScriptedCompletion("".join(words), "length", words, seed)
    completion = "" if is_kind(fault, "empty") else responders.answer(text, messages)
    finish: FinishReason = "eos_token"
    cuts = [(completion.find(s), s) for s in stop if s and s in completion]
    marker: str | None = None
    if cuts:
        index, marker = min(cuts)
        completion = completion[: index + len(marker)] if keep_stop else completion[:index]
        finish = "stop_sequence"
    words = split_words(completion)
    if max_tokens is not None and len(words) > max_tokens:
        words = words[:max_tokens]
        finish, marker = "length", None
    return ScriptedCompletion("".join(words), finish, words, seed, marker)


def validate_tgi(body: dict[str, Any]) -> dict[str, Any]:
    """TGI's router validation of a generate request (the checks clients can get wrong)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, str) or not inputs:
        raise RequestInvalid("`inputs` must be a non-empty string")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestInvalid("`parameters` must be an object")
    temperature = params.get("temperature")
    if temperature is not None and temperature <= 0:
        raise RequestInvalid("`temperature` must be strictly positive")
    top_p = params.get("top_p")
    if top_p is not None and not 0 < top_p < 1:
        raise RequestInvalid("`top_p` must be > 0.0 and < 1.0")
    max_new_tokens = params.get("max_new_tokens")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise RequestInvalid("`max_new_tokens` must be strictly positive")
    stop = params.get("stop") or []
    if not isinstance(stop, list) or len(stop) > 4:
        raise RequestInvalid("`stop` supports up to 4 stop sequences")
    seed = params.get("seed")
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise RequestInvalid("`seed` must be a non-negative integer")
    return params


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = [part.get("text") for part in content if isinstance(part, dict)]
                return "".join(text for text in texts if isinstance(text, str))
    raise RequestInvalid("`messages` has no user message")


def stop_list(body: dict[str, Any]) -> list[str]:
    """OpenAI's ``stop``: a string or a list of them."""
    stop = body.get("stop") or []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestInvalid("`stop` must be a string or a list of strings")
    return stops


def openai_finish(completion: ScriptedCompletion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"
