"""The proxy's pure parts: which string of a request is the prompt, how the rewrite goes back in
(only that string's bytes change), the response headers, and the config's validation."""

from __future__ import annotations

import copy
import json
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpo_integrations.proxy.config import ProxyConfig, redact_url
from bpo_integrations.proxy.outcome import (
    FALLBACK_REASON,
    MAX_REWRITE_HEADER,
    OPTIMIZED,
    REWRITE,
    REWRITE_TRUNCATED,
    SKIPPED,
    Outcome,
    encode_header_text,
)
from bpo_integrations.proxy.rewrite import (
    Skip,
    chat_target,
    completion_target,
    messages_target,
    parse_body,
    splice,
    string_span,
)
from bpo_integrations.result import FallbackReason, OptimizationResult

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
}


def conversation() -> dict:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "21 degrees."},
            {"role": "user", "content": [IMAGE, {"type": "text", "text": "And this city?"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "n": 2,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 3,
    }


def test_only_the_newest_user_messages_text_part_changes() -> None:
    body = conversation()
    before = copy.deepcopy(body)
    target = chat_target(body)
    assert not isinstance(target, Skip)
    assert target.prompt == "And this city?"
    assert target.path == ("messages", 5, "content", 1, "text")
    changed = target.apply("Which city is this, and what is its weather?")
    assert body == before  # the input is not mutated
    assert changed["messages"][5]["content"] == [
        IMAGE,
        {"type": "text", "text": "Which city is this, and what is its weather?"},
    ]
    for key in ("model", "tools", "n", "response_format", "logprobs", "top_logprobs"):
        assert changed[key] is body[key]
    assert changed["messages"][:5] == body["messages"][:5]
    assert all(a is b for a, b in zip(changed["messages"][:5], body["messages"][:5], strict=True))


def test_raw_splice_keeps_every_other_byte() -> None:
    raw = (
        b'{ "model" : "m",\n  "messages": [ {"role":"system","content":"Sys \\u00e9t\\u00e9"},\n'
        b'   {"role": "user", "content": "first"}, {"content": "Tell me \\"why\\"", '
        b'"role": "user"} ],\n "temperature": 1E-1, "seed": 12345678901234567890 }'
    )
    body = parse_body(raw)
    assert body is not None
    target = chat_target(body)
    assert not isinstance(target, Skip) and target.prompt == 'Tell me "why"'
    out = splice(raw, target, "Tell me why, step by step: ü")
    old_literal = b'"Tell me \\"why\\""'
    new_literal = '"Tell me why, step by step: ü"'.encode()
    assert out == raw.replace(old_literal, new_literal)
    assert json.loads(out)["messages"][2]["content"] == "Tell me why, step by step: ü"


def test_splice_follows_json_loads_on_duplicate_keys_and_falls_back_off_utf8() -> None:
    raw = b'{"prompt": "first", "prompt": "second"}'
    target = completion_target(json.loads(raw))
    assert not isinstance(target, Skip) and target.prompt == "second"
    assert splice(raw, target, "x") == b'{"prompt": "first", "prompt": "x"}'
    utf16 = '{"prompt": "hi"}'.encode("utf-16")
    target = completion_target(json.loads(utf16))
    assert not isinstance(target, Skip)
    assert json.loads(splice(utf16, target, "hello")) == {"prompt": "hello"}


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=8,
    ),
    st.text(),
    st.text(),
    st.sampled_from([None, 0, 2]),
)
@settings(max_examples=200, deadline=None)
def test_splice_changes_exactly_the_prompt_whatever_surrounds_it(
    extra, prompt: str, rewrite: str, indent: int | None
) -> None:
    body = {"model": "m", "extra": extra, "prompt": prompt, "after": [extra]}
    raw = json.dumps(body, indent=indent, ensure_ascii=indent == 2).encode()
    target = completion_target(json.loads(raw))
    if not prompt.strip():
        assert target is Skip.NO_TEXT
        return
    assert not isinstance(target, Skip)
    out = json.loads(splice(raw, target, rewrite))
    assert out == {**body, "prompt": rewrite}


def test_string_span_on_missing_paths() -> None:
    text = '{"messages": [{"role": "user", "content": 3}]}'
    assert string_span(text, ("messages", 0, "content")) is None  # not a string
    assert string_span(text, ("messages", 1, "content")) is None
    assert string_span(text, ("nothing",)) is None
    assert string_span("[1]", ("messages",)) is None


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "system", "content": "x"}], Skip.NO_USER_MESSAGE),
        ([{"role": "user", "content": "   "}], Skip.NO_TEXT),
        ([{"role": "user", "content": [IMAGE]}], Skip.NO_TEXT),
        ([{"role": "user", "content": None}], Skip.NO_TEXT),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        IMAGE,
                        {"type": "text", "text": "b"},
                    ],
                }
            ],
            Skip.SEVERAL_TEXT_PARTS,
        ),
    ],
)
def test_messages_without_one_text_to_rewrite_are_skipped(messages, expected) -> None:
    assert messages_target(messages) is expected


def test_an_sdk_message_object_as_newest_user_message_is_not_passed_over() -> None:
    class Message:
        role = "user"
        content = "newest"

    found = messages_target([{"role": "user", "content": "older"}, Message()])
    assert found is Skip.UNSUPPORTED_PROMPT


def test_tool_results_after_the_user_message_keep_the_user_message_as_target() -> None:
    body = conversation()
    body["messages"] = body["messages"][:4]  # ... user, assistant tool call, tool result
    target = chat_target(body)
    assert not isinstance(target, Skip) and target.prompt == "What is the weather in Paris?"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Tell me", "Tell me"),
        (["Tell me"], "Tell me"),
        (["a", "b"], Skip.UNSUPPORTED_PROMPT),
        ([1, 2, 3], Skip.UNSUPPORTED_PROMPT),
        ("", Skip.NO_TEXT),
        (None, Skip.INVALID_BODY),
    ],
)
def test_completion_prompts(prompt, expected) -> None:
    body = {"model": "m"} if prompt is None else {"model": "m", "prompt": prompt}
    target = completion_target(body)
    if isinstance(expected, Skip):
        assert target is expected
    else:
        assert not isinstance(target, Skip) and target.prompt == expected
        assert target.apply("X")["prompt"] == ("X" if isinstance(prompt, str) else ["X"])


def test_bodies_that_are_not_json_objects() -> None:
    assert parse_body(b"[1, 2]") is None
    assert parse_body(b"{bad") is None
    assert parse_body(b"\xff\xfe\x00") is None
    assert parse_body(b"[" * 100_000) is None
    assert chat_target({"messages": "hi"}) is Skip.INVALID_BODY


def result(**changes) -> OptimizationResult:
    values = {"original": "Why?", "optimized": "Why? In detail.", "backend": "b", "latency_s": 0.1}
    return OptimizationResult(**{**values, **changes})


def test_headers_of_each_outcome() -> None:
    optimized = Outcome(result=result()).headers()
    assert optimized == {OPTIMIZED: "true", REWRITE: "Why%3F%20In%20detail."}
    fell_back = Outcome(
        result=result(
            optimized="Why?",
            fell_back=True,
            fallback_reason=FallbackReason.TIMEOUT,
            fallback_detail="no answer in 2s",
        )
    )
    assert fell_back.headers() == {OPTIMIZED: "false", FALLBACK_REASON: "timeout"}
    assert fell_back.fallback_reason == "timeout: no answer in 2s"
    assert Outcome(skipped=Skip.MODEL).headers() == {OPTIMIZED: "false", SKIPPED: "model"}
    raised = Outcome(error="BackendError: boom")
    assert raised.headers() == {OPTIMIZED: "false", FALLBACK_REASON: "unexpected_error"}
    assert raised.to_dict()["fallback_reason"] == "unexpected_error: BackendError: boom"


def test_a_long_rewrite_header_is_cut_at_a_character_and_flagged() -> None:
    rewrite = "Explique pourquoi le ciel est bleu, étape par étape. 天空为什么是蓝色的？\n" * 200
    headers = Outcome(result=result(optimized=rewrite)).headers()
    value = headers[REWRITE]
    assert len(value) <= MAX_REWRITE_HEADER and headers[REWRITE_TRUNCATED] == "true"
    assert value.isascii() and "\n" not in value
    decoded = unquote(value, errors="strict")
    assert rewrite.startswith(decoded) and len(decoded) > 100


@given(st.text(), st.integers(min_value=0, max_value=60))
def test_header_encoding_is_a_decodable_prefix(text: str, limit: int) -> None:
    value, cut = encode_header_text(text, limit)
    assert len(value) <= limit and value.isascii()
    decoded = unquote(value, errors="strict")
    assert text.startswith(decoded)
    assert cut == (decoded != text)


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="http"):
        ProxyConfig(upstream="localhost:8000")
    with pytest.raises(ValueError, match="upstream_timeout"):
        ProxyConfig(upstream="http://h/v1", upstream_timeout=0)
    with pytest.raises(ValueError, match="api_key"):
        ProxyConfig(upstream="http://h/v1", api_key="a\r\nX-Evil: 1")
    with pytest.raises(ValueError) as error:
        ProxyConfig(upstream="ftp://user:s3cret@h/v1")
    assert "s3cret" not in str(error.value)
    config = ProxyConfig(upstream="http://h/v1/", skip_models=("gpt-4o*, *embed*", "o1"))
    assert config.skip_models == ("gpt-4o*", "*embed*", "o1")
    assert config.upstream_url("/models") == "http://h/v1/models"
    assert config.skips_model("text-embedding-3") and not config.skips_model("llama")
    assert not config.skips_model(None)
    assert redact_url("https://me:pw@host:1/v1") == "https://me:***@host:1/v1"
