"""Request validation with TGI's rules and messages, plus the fix for each problem.

Every function here raises :class:`~bpo_integrations.serve.engine.InputError`, which the app
answers with HTTP 422 ``{"error": ..., "error_type": "validation"}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpo_integrations.serve.engine import InputError, SamplingParams
from bpo_integrations.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    GenerateParameters,
    Message,
)


@dataclass(frozen=True)
class Limits:
    """What the server accepts, as ``/info`` reports it."""

    max_input_tokens: int
    max_total_tokens: int
    default_max_new_tokens: int
    max_stop_sequences: int = 4
    max_client_batch_size: int = 4
    model_id: str = ""
    adapter: str | None = None


def check_input_length(ids: list[int], limits: Limits, *, field: str = "inputs") -> None:
    if not ids:
        raise InputError(f"`{field}` cannot be empty")
    if len(ids) > limits.max_input_tokens:
        raise InputError(
            f"`{field}` must have less than {limits.max_input_tokens} tokens. Given: {len(ids)}. "
            "Shorten the prompt, pass `truncate`, or start bpo serve with a larger "
            "--max-input-tokens"
        )


def check_input_bytes(text: str, limits: Limits, max_token_bytes: int, *, field: str) -> None:
    """Refuse, without tokenizing it, a text longer than ``max_input_tokens`` tokens of the
    longest kind could be."""
    size = len(text.encode("utf-8", "surrogatepass"))
    at_least = -(-size // max_token_bytes)
    if at_least > limits.max_input_tokens:
        raise InputError(
            f"`{field}` must have less than {limits.max_input_tokens} tokens. Given: at least "
            f"{at_least} ({size} bytes). Shorten the prompt, pass `truncate`, or start bpo serve "
            "with a larger --max-input-tokens"
        )


def max_new_tokens(requested: int | None, input_length: int, limits: Limits, name: str) -> int:
    """The request's new-token budget; the default shrinks to fit ``max_total_tokens``."""
    room = limits.max_total_tokens - input_length
    if requested is None:
        return max(1, min(limits.default_max_new_tokens, room))
    if requested == 0:
        raise InputError(f"`{name}` must be strictly positive")
    if requested > room:
        raise InputError(
            f"`inputs` tokens + `{name}` must be <= {limits.max_total_tokens}. Given: "
            f"{input_length} `inputs` tokens and {requested} `{name}`. Ask for fewer new "
            "tokens, or start bpo serve with a larger --max-total-tokens"
        )
    return requested


def truncate_length(truncate: int, limits: Limits) -> int:
    """TGI's ``truncate``: how many of the prompt's last tokens to keep."""
    if not 0 < truncate <= limits.max_input_tokens:
        raise InputError(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. "
            f"Given: {truncate}"
        )
    return truncate


MAX_STOP_CHARS = 256
"""Longest stop sequence: each one is matched against the text after every token, and kept while
the request runs."""


def _stops(stop: list[str] | str | None, limits: Limits) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > limits.max_stop_sequences:
        raise InputError(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stops)}"
        )
    if any(not s for s in stops):
        raise InputError("`stop` sequences cannot be empty strings: remove the empty one")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        longest = max(len(s) for s in stops)
        raise InputError(
            f"`stop` sequences must be at most {MAX_STOP_CHARS} characters. Given: {longest}"
        )
    return tuple(stops)


def generate_params(params: GenerateParameters, ids: list[int], limits: Limits) -> SamplingParams:
    """TGI's ``GenerateParameters`` for a prompt of ``ids`` (already truncated)."""
    if params.best_of is not None and params.best_of > 1:
        raise InputError(
            f"`best_of` must be > 0 and <= 1. Given: {params.best_of}. bpo serve generates one "
            "sequence per request: send several requests instead"
        )
    if params.watermark:
        raise InputError("`watermark` is not supported by bpo serve: remove it, or use TGI")
    if params.grammar is not None:
        raise InputError("`grammar` is not supported by bpo serve: remove it, or use TGI")
    if params.adapter_id is not None and params.adapter_id not in (limits.adapter, limits.model_id):
        raise InputError(
            f"adapter `{params.adapter_id}` is not loaded: bpo serve serves `{limits.model_id}` "
            "only; start it with --adapter to serve another adapter"
        )
    if params.top_n_tokens:
        raise InputError(
            f"`top_n_tokens` is not supported by bpo serve (its engine, OpenVINO GenAI, reports "
            f"only the chosen token's log-probability). Given: {params.top_n_tokens}; remove it"
        )
    if _below_one(params.typical_p) is not None:
        raise InputError(
            "`typical_p` is not supported by bpo serve (OpenVINO GenAI has no typical sampling): "
            "use top_p or top_k instead"
        )
    top_p = _below_one(params.top_p)
    temperature = _finite(params.temperature) if params.temperature != 1.0 else None
    # TGI samples as soon as any warper is set, whatever do_sample says.
    do_sample = params.do_sample or any(
        value is not None for value in (temperature, top_p, params.top_k)
    )
    return SamplingParams(
        max_new_tokens=max_new_tokens(params.max_new_tokens, len(ids), limits, "max_new_tokens"),
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=params.top_k,
        repetition_penalty=_finite(params.repetition_penalty)
        if params.repetition_penalty != 1.0
        else None,
        frequency_penalty=params.frequency_penalty or None,
        seed=params.seed,
        stop=_stops(params.stop, limits),
    )


FINITE_RANGE = (1e-4, 1e4)
"""Where ``temperature`` and ``repetition_penalty`` are clamped (``top_p`` to its floor): the
schema allows any positive value, and one that is 0 or infinite in the engine's float32 arithmetic
would fail the request."""


def _finite(value: float | None) -> float | None:
    low, high = FINITE_RANGE
    return None if value is None else min(max(value, low), high)


def _below_one(value: float | None) -> float | None:
    """``top_p``/``typical_p`` of 1.0 filter nothing: the same as unset. The rest is kept above
    :data:`FINITE_RANGE`'s floor: a tiny positive value is 0 in float32, which the engine refuses,
    and any value that small keeps only the likeliest token anyway."""
    if value is None or value >= 1.0:
        return None
    return max(value, FINITE_RANGE[0])


def chat_messages(messages: list[Message]) -> list[dict[str, str]]:
    """Messages as the chat template takes them: text only, chunks joined."""
    if not messages:
        raise InputError("`messages` cannot be empty: send at least one user message")
    rendered = []
    for index, message in enumerate(messages):
        if message.tool_calls:
            raise InputError(
                f"`messages[{index}]` has tool calls, which bpo serve does not support: "
                "send text messages only"
            )
        content = message.content
        if isinstance(content, list):
            if any(chunk.type != "text" for chunk in content):
                raise InputError(
                    f"`messages[{index}]` has an image: bpo serve serves a text-only model"
                )
            content = "".join(chunk.text for chunk in content)  # type: ignore[union-attr]
        rendered.append({"role": message.role, "content": content or ""})
    return rendered


def _openai_sampling(temperature: float | None, top_p: float | None) -> dict[str, object]:
    """TGI's OpenAI routes: temperature 0 means greedy, anything else samples."""
    if temperature == 0.0:
        return {"do_sample": False}
    return {
        "do_sample": True,
        "temperature": _finite(temperature) if temperature not in (None, 1.0) else None,
        "top_p": _below_one(top_p),
    }


def chat_params(request: ChatRequest, ids: list[int], limits: Limits) -> SamplingParams:
    if request.n not in (None, 1):
        raise InputError(f"`n` must be 1: bpo serve returns one choice. Given: {request.n}")
    if request.tools:
        raise InputError("`tools` are not supported by bpo serve: remove them, or use TGI")
    if request.response_format is not None:
        raise InputError(
            "`response_format` (grammar) is not supported by bpo serve: remove it, or use TGI"
        )
    if request.logprobs and request.top_logprobs:
        raise InputError(
            "`top_logprobs` is not supported by bpo serve (its engine, OpenVINO GenAI, reports "
            f"only the chosen token's log-probability). Given: {request.top_logprobs}; remove it"
        )
    requested = request.max_completion_tokens
    name = "max_completion_tokens"
    if requested is None:
        requested, name = request.max_tokens, "max_tokens"
    return SamplingParams(
        max_new_tokens=max_new_tokens(requested, len(ids), limits, name),
        frequency_penalty=request.frequency_penalty or None,
        presence_penalty=request.presence_penalty or None,
        seed=request.seed,
        stop=_stops(request.stop, limits),
        logprobs=bool(request.logprobs),
        **_openai_sampling(request.temperature, request.top_p),  # type: ignore[arg-type]
    )


def completion_prompts(request: CompletionRequest, limits: Limits) -> list[str]:
    prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
    if not prompts:
        raise InputError("`prompt` cannot be empty: send a string or a list of strings")
    if len(prompts) > limits.max_client_batch_size:
        raise InputError(
            f"`prompt` holds {len(prompts)} prompts, more than the {limits.max_client_batch_size} "
            "this server takes in one request: split them over several requests"
        )
    if request.suffix:
        raise InputError("`suffix` is not supported by bpo serve: remove it")
    return prompts


def completion_params(request: CompletionRequest, ids: list[int], limits: Limits) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=max_new_tokens(request.max_tokens, len(ids), limits, "max_tokens"),
        frequency_penalty=request.frequency_penalty or None,
        repetition_penalty=_finite(request.repetition_penalty)
        if request.repetition_penalty != 1.0
        else None,
        seed=request.seed,
        stop=_stops(request.stop, limits),
        **_openai_sampling(request.temperature, request.top_p),  # type: ignore[arg-type]
    )
