"""Finding the one prompt of an OpenAI request that BPO rewrites, and putting the rewrite back.

Only the newest user message changes (its string content, or the single text part of a content
list); every other field, message and content part is carried over as it was. On raw JSON
(:func:`splice`) only the bytes of that one string change: everything else goes on byte for byte.
On parsed requests (:meth:`Target.apply`, LiteLLM's dicts) the input is never mutated: the
containers on the way to the changed string are copied, the rest is shared.
Pure Python, no web framework: the LiteLLM callback uses it too.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Skip(str, Enum):
    """Why a request went upstream without being optimized (not a failure of the optimizer)."""

    OPT_OUT = "opt_out"
    """The request asked for it (``X-BPO: off``, or LiteLLM metadata ``bpo: off``)."""
    MODEL = "model"
    """The model name matches a skip pattern."""
    INVALID_BODY = "invalid_body"
    """The body is not a JSON object (passed on for the upstream to answer)."""
    NO_USER_MESSAGE = "no_user_message"
    """No message has the role ``user``."""
    NO_TEXT = "no_text"
    """The newest user message (or the prompt) has no text: empty, or images only."""
    SEVERAL_TEXT_PARTS = "several_text_parts"
    """The newest user message has more than one text part: which to rewrite is not clear."""
    UNSUPPORTED_PROMPT = "unsupported_prompt"
    """A prompt that cannot be rewritten in place: token ids, a batch of completion prompts, or
    a user message that is not a JSON object (an SDK's message class)."""
    NOT_OPTED_IN = "not_opted_in"
    """LiteLLM with ``opt_in=True``: neither the key nor the request turned BPO on."""


@dataclass(frozen=True)
class Target:
    """The prompt to optimize, and how to rebuild the request around its rewrite.

    Example:
        >>> target = chat_target({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
        >>> target.prompt
        'Hi'
        >>> target.apply("Hello, please greet me back.")["messages"]
        [{'role': 'user', 'content': 'Hello, please greet me back.'}]
    """

    prompt: str
    rebuild: Callable[[str], dict[str, Any]]
    path: tuple[str | int, ...] = ()
    """Where :attr:`prompt` is in the body: keys and list indices, e.g. ``("prompt",)``."""

    def apply(self, rewrite: str) -> dict[str, Any]:
        """A new request body with ``rewrite`` in place of :attr:`prompt`."""
        return self.rebuild(rewrite)


def parse_body(raw: bytes) -> dict[str, Any] | None:
    """The JSON object in ``raw``; ``None`` for anything else (passed on untouched)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        return None
    return body if isinstance(body, dict) else None


def dump_body(body: dict[str, Any]) -> bytes:
    """``body`` as compact JSON bytes (UTF-8; escaped where a string holds a lone surrogate)."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def chat_target(body: dict[str, Any]) -> Target | Skip:
    """The newest user message of a ``/v1/chat/completions`` body."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return Skip.INVALID_BODY
    found = messages_target(messages)
    if isinstance(found, Skip):
        return found
    return Target(
        found.prompt,
        lambda rewrite: {**body, "messages": found.rebuild_list(rewrite)},
        ("messages", *found.path),
    )


@dataclass(frozen=True)
class MessagesTarget:
    """The newest user message's text in a list of messages, and how to rebuild the list."""

    prompt: str
    index: int
    messages: list[Any]
    part: int | None  # index of the text part in a content list; None: string content

    @property
    def path(self) -> tuple[str | int, ...]:
        """Where :attr:`prompt` is inside the list of messages."""
        if self.part is None:
            return (self.index, "content")
        return (self.index, "content", self.part, "text")

    def rebuild_list(self, rewrite: str) -> list[Any]:
        message = dict(self.messages[self.index])
        if self.part is None:
            message["content"] = rewrite
        else:
            content = list(message["content"])
            content[self.part] = {**content[self.part], "text": rewrite}
            message["content"] = content
        messages = list(self.messages)
        messages[self.index] = message
        return messages


def messages_target(messages: list[Any]) -> MessagesTarget | Skip:
    """The newest message with role ``user`` in ``messages`` (dicts, as sent over HTTP).

    Example:
        >>> found = messages_target([
        ...     {"role": "system", "content": "Be brief."},
        ...     {"role": "user", "content": [
        ...         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ...         {"type": "text", "text": "What is in this picture?"},
        ...     ]},
        ... ])
        >>> found.prompt
        'What is in this picture?'
        >>> found.rebuild_list("Describe this picture in detail.")[1]["content"][1]
        {'type': 'text', 'text': 'Describe this picture in detail.'}
    """
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict):
            if message.get("role") == "user":
                break
        elif getattr(message, "role", None) == "user":
            return Skip.UNSUPPORTED_PROMPT
    else:
        return Skip.NO_USER_MESSAGE
    content = message.get("content")
    if isinstance(content, str):
        if not content.strip():
            return Skip.NO_TEXT
        return MessagesTarget(content, index, messages, None)
    if not isinstance(content, list):
        return Skip.NO_TEXT
    texts = [
        i
        for i, part in enumerate(content)
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    ]
    if len(texts) > 1:
        return Skip.SEVERAL_TEXT_PARTS
    if not texts or not content[texts[0]]["text"].strip():
        return Skip.NO_TEXT
    return MessagesTarget(content[texts[0]]["text"], index, messages, texts[0])


def completion_target(body: dict[str, Any]) -> Target | Skip:
    """The ``prompt`` of a ``/v1/completions`` body: one string, or a list of one string."""
    prompt = body.get("prompt")
    path: tuple[str | int, ...]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        text, path = prompt[0], ("prompt", 0)

        def rebuild(rewrite: str) -> dict[str, Any]:
            return {**body, "prompt": [rewrite]}

    elif isinstance(prompt, str):
        text, path = prompt, ("prompt",)

        def rebuild(rewrite: str) -> dict[str, Any]:
            return {**body, "prompt": rewrite}

    elif prompt is None:
        return Skip.INVALID_BODY
    else:
        return Skip.UNSUPPORTED_PROMPT
    if not text.strip():
        return Skip.NO_TEXT
    return Target(text, rebuild, path)


def splice(raw: bytes, target: Target, rewrite: str) -> bytes:
    """``raw`` with the JSON string at ``target.path`` replaced by ``rewrite``, and nothing else.

    Falls back to :func:`dump_body` of :meth:`Target.apply` for a body that is not UTF-8.

    Example:
        >>> raw = b'{"model": "m",  "prompt": "Hi", "temperature": 1e-1}'
        >>> body = json.loads(raw)
        >>> splice(raw, completion_target(body), "Hello")
        b'{"model": "m",  "prompt": "Hello", "temperature": 1e-1}'
    """
    try:
        encoding = json.detect_encoding(raw)
        text = raw.decode(encoding) if encoding == "utf-8" else None
    except UnicodeDecodeError:
        text = None
    span = None if text is None else string_span(text, target.path)
    if text is None or span is None:
        return dump_body(target.apply(rewrite))
    start, end = span
    literal = json.dumps(rewrite, ensure_ascii=False)
    try:
        return (text[:start] + literal + text[end:]).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, escaped somewhere in the body
        return dump_body(target.apply(rewrite))


# json's own scanners (undocumented, so untyped): they read a value in place, at an offset
_WHITESPACE: re.Pattern[str] = json.decoder.WHITESPACE  # type: ignore[attr-defined]
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def string_span(text: str, path: Sequence[str | int]) -> tuple[int, int] | None:
    """Start and end offsets in JSON ``text`` of the string value at ``path``; ``None`` if absent.

    Duplicate keys resolve as :func:`json.loads` does: the last one wins.

    Example:
        >>> text = '{"messages": [{"role": "user", "content": "Hi"}]}'
        >>> start, end = string_span(text, ("messages", 0, "content"))
        >>> text[start:end]
        '"Hi"'
    """
    try:
        index = _skip_whitespace(text, 0)
        for step in path:
            found = (
                _member(text, index, step) if isinstance(step, str) else _element(text, index, step)
            )
            if found is None:
                return None
            index = found
        if text[index : index + 1] != '"':
            return None
        _, end = _scanstring(text, index + 1)
    except (StopIteration, ValueError):
        return None
    return index, end


def _skip_whitespace(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    return index if match is None else match.end()  # it matches the empty string too


def _member(text: str, index: int, key: str) -> int | None:
    """Offset of the value of the last ``key`` in the object at ``index``."""
    if text[index : index + 1] != "{":
        return None
    index = _skip_whitespace(text, index + 1)
    found = None
    while text[index : index + 1] == '"':
        name, index = _scanstring(text, index + 1)
        index = _skip_whitespace(text, index)
        if text[index : index + 1] != ":":
            return None
        index = _skip_whitespace(text, index + 1)
        if name == key:
            found = index
        _, index = _scan(text, index)
        index = _skip_whitespace(text, index)
        if text[index : index + 1] != ",":
            break
        index = _skip_whitespace(text, index + 1)
    return found


def _element(text: str, index: int, position: int) -> int | None:
    """Offset of element ``position`` of the array at ``index``."""
    if text[index : index + 1] != "[":
        return None
    index = _skip_whitespace(text, index + 1)
    if text[index : index + 1] == "]":
        return None
    for _ in range(position):
        _, index = _scan(text, index)
        index = _skip_whitespace(text, index)
        if text[index : index + 1] != ",":
            return None
        index = _skip_whitespace(text, index + 1)
    return index
