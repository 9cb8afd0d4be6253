"""Generation for ``bpo serve``: the protocol's view of the local backend's engine.

Every request, streamed or not, is one request to the backend's
:class:`~bpo_integrations.inference.openvino.OpenVINOEngine`, whose continuous batching runs the
concurrent requests together; this module turns TGI's and OpenAI's parameters into the engine's
and the engine's tokens into the protocol's (text pieces, stop sequences, finish reasons).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bpo_integrations.inference.engine import SamplingParams as EngineParams
from bpo_integrations.inference.engine import split_at_stop
from bpo_integrations.settings import FinishReason
from bpo_integrations.template import BPO_TEMPLATE

if TYPE_CHECKING:
    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.inference.engine import EngineRequest, InferenceEngine


_BPO_PREFIX, _BPO_SUFFIX = BPO_TEMPLATE.split("{prompt}")


class InputError(ValueError):
    """A request the model cannot take as it is (answered with HTTP 422)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request, already validated against the server's limits."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False


@dataclass(frozen=True)
class TokenInfo:
    """One generated token: ``text`` is what it adds to the generated text ("" when special)."""

    id: int
    text: str
    logprob: float | None = None
    special: bool = False
    raw: str = ""


@dataclass(frozen=True)
class Prompt:
    """A prompt as the model will see it: its text and its token ids."""

    text: str
    ids: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Completion:
    """The outcome of one request: the text up to the stop sequence that ended it, and that stop.

    :meth:`Engine.stream` cuts the text at its stop once; TGI's routes answer :attr:`text` (with
    the stop sequence), OpenAI's :attr:`text_before_stop` (without).
    """

    text_before_stop: str
    finish_reason: FinishReason
    input_tokens: int
    tokens: list[TokenInfo] = field(default_factory=list)
    seed: int | None = None
    stop: str | None = None

    @property
    def text(self) -> str:
        """The text ending with the stop sequence that ended it (TGI's convention)."""
        return self.text_before_stop + (self.stop or "")

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)


class Engine:
    """Tokenization, chat templates and generation for ``bpo serve``.

    Args:
        backend: the local backend whose model is served (loaded here).
        length_rule: make every raw BPO-template request write at least as many tokens as its
            prompt has (plus 5), as the backend does in-process; ``None``: the backend's
            ``length_rule`` (on for the default optimizer).

    Example:
        >>> from bpo_integrations.backends.local import LocalBackend  # doctest: +SKIP
        >>> engine = Engine(LocalBackend("path/to/model.gguf"))  # doctest: +SKIP
        >>> prompt = engine.encode("Tell me about Harry Potter")  # doctest: +SKIP
        >>> params = SamplingParams(max_new_tokens=8)  # doctest: +SKIP
        >>> asyncio.run(engine.generate(prompt, params)).text  # doctest: +SKIP
    """

    def __init__(self, backend: LocalBackend, *, length_rule: bool | None = None) -> None:
        backend.load()
        self.backend = backend
        self.model: InferenceEngine = backend.engine
        self.length_rule = backend.length_rule if length_rule is None else length_rule
        self.eos_token_ids = frozenset(self.model.eos_token_ids)

    @property
    def max_positions(self) -> int | None:
        return self.model.max_positions

    @property
    def max_token_bytes(self) -> int:
        return self.model.max_token_bytes

    def close(self) -> None:
        """Close the backend (its engine and model)."""
        self.backend.close()

    # -- text <-> tokens --------------------------------------------------------------------------

    def encode(self, text: str) -> Prompt:
        try:
            ids = self.model.encode(text)
        except Exception as error:  # the tokenizer's own errors are about the text, not us
            raise InputError(f"the tokenizer cannot encode the prompt: {error}") from error
        return Prompt(text=text, ids=ids)

    def truncate(self, prompt: Prompt, keep: int) -> Prompt:
        """The last ``keep`` tokens of ``prompt`` (TGI's ``truncate``)."""
        if len(prompt) <= keep:
            return prompt
        ids = prompt.ids[-keep:]
        return Prompt(text=self.model.decode(ids, skip_special_tokens=False), ids=ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.decode(list(ids))

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's own text, for TGI's prefill details."""
        return [self.model.decode([i], skip_special_tokens=False) for i in ids]

    def offsets(self, prompt: Prompt) -> list[tuple[int, str, int, int]]:
        """``(id, text, start, stop)`` per token of ``prompt``, as TGI's ``/tokenize`` answers.

        Offsets count the characters of the decoded tokens, which is the text itself for the
        byte-level tokenizers BPO models use; they never run past the text.
        """
        text = prompt.text
        pieces = _Pieces(self.model)
        spans = []
        position = 0
        for token_id in prompt.ids:
            piece = pieces.push(token_id, skip_special_tokens=False)
            # a token the tokenizer does not know decodes to more text than it stands for
            start, position = position, min(position + len(piece), len(text))
            spans.append((token_id, text[start:position], start, position))
        return spans

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render ``messages`` as the model was trained to read them, ready for :meth:`encode`.

        A model trained on the raw BPO template reads one user message as ``[INST] ... [/INST]``
        (what the Llama-2 chat template makes of it); other models use their chat template.
        """
        if self.backend.template_kind == "bpo":
            users = [m for m in messages if m["role"] == "user"]
            if len(users) != 1 or len(messages) != 1:
                raise InputError(
                    "this model was trained on single BPO prompts: send one user message "
                    "(the BPO instruction and the prompt), or use /v1/completions"
                )
            return f"[INST] {users[0]['content']} [/INST]"
        if not self.model.has_chat_template:
            raise InputError(
                "this model has no chat template: use /generate with a raw prompt, or serve a "
                "model whose tokenizer has a chat template"
            )
        try:
            return self.model.apply_chat_template(messages)
        except Exception as error:  # a template that rejects the conversation
            raise InputError(f"the chat template rejected `messages`: {error}") from error

    # -- generation -------------------------------------------------------------------------------

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        """Generate one completion; concurrent requests run together in the engine."""
        completion: Completion | None = None
        async for event in self.stream(prompt, params):
            if isinstance(event, Completion):
                completion = event
        assert completion is not None
        return completion

    async def stream(
        self, prompt: Prompt, params: SamplingParams
    ) -> AsyncGenerator[TokenInfo | Completion, None]:
        """Yield each token as it is generated, then the :class:`Completion`.

        Closing the iterator early (a client that disconnected) cancels the request.
        """
        request = self._submit(prompt, params)
        pieces = _Pieces(self.model)
        tokens: list[TokenInfo] = []
        try:
            async for step in request.asteps():
                logprobs = step.logprobs or (None,) * len(step.ids)
                for token_id, logprob in zip(step.ids, logprobs, strict=True):
                    special = token_id in self.eos_token_ids
                    piece = pieces.push(token_id, skip_special_tokens=True)
                    info = TokenInfo(
                        id=token_id,
                        text="" if special else piece,
                        logprob=logprob,
                        special=special,
                        raw=self.model.decode([token_id], skip_special_tokens=False),
                    )
                    tokens.append(info)
                    yield info
            outcome = await request.aresult()
        finally:
            if not request.done:
                request.cancel()
        text = self.decode([t.id for t in tokens])
        stop = outcome.stop
        if stop is not None:  # the engine may have dropped part of the stop: cut at its start
            text, _ = split_at_stop(text, (stop,))
        yield Completion(
            text_before_stop=text,
            finish_reason=outcome.finish_reason,
            input_tokens=len(prompt),
            tokens=tokens,
            seed=params.seed if params.do_sample else None,
            stop=stop,
        )

    def _submit(self, prompt: Prompt, params: SamplingParams) -> EngineRequest:
        minimum = 0
        if self.length_rule and prompt.text.startswith(_BPO_PREFIX):
            inner = prompt.text[len(_BPO_PREFIX) :]
            if inner.endswith(_BPO_SUFFIX):
                inner = inner[: -len(_BPO_SUFFIX)]
                minimum = min(self.backend.length_rule_minimum(inner), params.max_new_tokens)
        sampling = params.do_sample
        return self.model.submit(
            prompt.ids,
            EngineParams(
                max_new_tokens=params.max_new_tokens,
                min_new_tokens=minimum,
                do_sample=sampling,
                temperature=(params.temperature or 1.0) if sampling else 1.0,
                top_p=(params.top_p or 1.0) if sampling else 1.0,
                top_k=(params.top_k or 0) if sampling else 0,
                seed=params.seed,
                repetition_penalty=params.repetition_penalty or 1.0,
                presence_penalty=params.presence_penalty or 0.0,
                frequency_penalty=params.frequency_penalty or 0.0,
                stop=params.stop,
                logprobs=True,
            ),
        )

    @property
    def stats(self) -> dict[str, int]:
        return self.model.stats


class _Pieces:
    """Incremental decoding: the text each new token adds, never splitting a UTF-8 character."""

    def __init__(self, model: InferenceEngine) -> None:
        self.model = model
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int, *, skip_special_tokens: bool) -> str:
        self.ids.append(token_id)
        decode = self.model.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=skip_special_tokens)
        after = decode(self.ids[self.prefix :], skip_special_tokens=skip_special_tokens)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""
