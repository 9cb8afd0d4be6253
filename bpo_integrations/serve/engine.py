"""Generation for ``bpo serve`` on top of a :class:`~bpo_integrations.backends.local.LocalBackend`.

Two paths share the backend's model:

- batched: plain requests (TGI's ``/generate``, chat and completions without per-token extras)
  go through ``LocalBackend.agenerate_raw``, whose micro-batcher gathers concurrent calls into one
  ``model.generate``.
- streamed: ``/generate_stream``, streamed chat, and requests that need what ``generate_raw``
  does not offer (``top_k``, repetition/frequency/presence penalties, ``typical_p``, per-token
  logprobs or alternatives) run one at a time, token by token, through a transformers streamer
  on the backend's model, on the backend's worker thread between batches
  (``LocalBackend.arun_in_worker``). On CPU every thread that runs torch gets an OpenMP pool of
  its own, and a second pool slowed every later batch step 1.7x on 2 cores.

The engine keeps its own copies of the tokenizer: a fast tokenizer must not be used from two
threads at once, and the backend's worker thread owns the backend's.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from bpo_integrations.settings import GenerationSettings

if TYPE_CHECKING:
    from bpo_integrations.backends.local import LocalBackend

FinishReason = Literal["length", "eos_token", "stop_sequence"]


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
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_n_tokens: int = 0
    logprobs: bool = False

    @property
    def batchable(self) -> bool:
        """Whether ``LocalBackend.generate_raw`` can serve it (it knows only these knobs)."""
        extras = (self.top_k, self.typical_p, self.repetition_penalty)
        penalties = (self.frequency_penalty, self.presence_penalty)
        return (
            all(value is None for value in extras)
            and not any(penalties)
            and not self.top_n_tokens
            and not self.logprobs
        )

    def to_settings(self) -> GenerationSettings:
        return GenerationSettings(
            mode="stable" if self.do_sample else "greedy",
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature or 1.0,
            top_p=self.top_p or 1.0,
            seed=self.seed,
            stop=self.stop,
        )


@dataclass(frozen=True)
class TokenInfo:
    """One generated token: ``text`` is what it adds to the generated text ("" when special)."""

    id: int
    text: str
    logprob: float | None = None
    special: bool = False
    raw: str = ""
    top: tuple[TokenInfo, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """A prompt as the model will see it: its text and its token ids."""

    text: str
    ids: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Completion:
    """The outcome of one request. ``text`` ends with the stop sequence that ended it, as TGI's."""

    text: str
    finish_reason: FinishReason
    input_tokens: int
    tokens: list[TokenInfo] = field(default_factory=list)
    seed: int | None = None
    stop: str | None = None

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)

    def text_before_stop(self) -> str:
        """The text without its stop sequence (OpenAI's convention)."""
        if self.stop is not None and self.text.endswith(self.stop):
            return self.text[: -len(self.stop)]
        return self.text


class Engine:
    """Tokenization, chat templates and generation for ``bpo serve``.

    Example:
        >>> from bpo_integrations.backends.local import LocalBackend  # doctest: +SKIP
        >>> engine = Engine(LocalBackend("path/to/model"))  # doctest: +SKIP
        >>> prompt = engine.encode("Tell me about Harry Potter")  # doctest: +SKIP
        >>> params = SamplingParams(max_new_tokens=8)  # doctest: +SKIP
        >>> asyncio.run(engine.generate(prompt, params)).text  # doctest: +SKIP
    """

    def __init__(self, backend: LocalBackend) -> None:
        backend.load()
        self.backend = backend
        self.model: Any = backend.model
        # one tokenizer for the event loop, one for streams on the worker thread
        self.tokenizer: Any = copy.deepcopy(backend.tokenizer)
        self._stream_tokenizer: Any = copy.deepcopy(backend.tokenizer)
        self.streams_run = 0
        self.streams_running = 0
        config = self.model.generation_config
        eos = config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.special_ids = frozenset(self.tokenizer.all_special_ids)

    @property
    def max_positions(self) -> int | None:
        value = getattr(self.model.config, "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    def close(self) -> None:
        """Close the backend (its worker thread and model) once the work queued on it is done."""
        self.backend.close()

    # -- text <-> tokens --------------------------------------------------------------------------

    def encode(self, text: str) -> Prompt:
        """Tokenize as ``LocalBackend.generate_raw`` does: no second BOS after a leading one."""
        bos = self.tokenizer.bos_token
        try:
            ids = self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))
        except Exception as error:  # the tokenizer's own errors are about the text, not us
            raise InputError(f"the tokenizer cannot encode the prompt: {error}") from error
        return Prompt(text=text, ids=list(ids.input_ids))

    def truncate(self, prompt: Prompt, keep: int) -> Prompt:
        """The last ``keep`` tokens of ``prompt`` (TGI's ``truncate``)."""
        if len(prompt) <= keep:
            return prompt
        ids = prompt.ids[-keep:]
        return Prompt(text=self.tokenizer.decode(ids, skip_special_tokens=False), ids=ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's own text, for TGI's prefill details."""
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def offsets(self, text: str) -> list[tuple[int, str, int, int]]:
        """``(id, text, start, stop)`` per token, as TGI's ``/tokenize`` answers."""
        bos = self.tokenizer.bos_token
        try:
            encoding = self.tokenizer(
                text,
                add_special_tokens=not (bos and text.startswith(bos)),
                return_offsets_mapping=True,
            )
        except Exception as error:
            raise InputError(f"the tokenizer cannot encode the prompt: {error}") from error
        return [
            (token_id, text[start:stop], start, stop)
            for token_id, (start, stop) in zip(
                encoding.input_ids, encoding.offset_mapping, strict=True
            )
        ]

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render ``messages`` with the model's chat template, ready for :meth:`encode`."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(
                "this model has no chat template: use /generate with a raw prompt, or serve a "
                "model whose tokenizer_config.json has a chat_template"
            )
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as error:  # jinja's TemplateError, raise_exception() in templates
            raise InputError(f"the chat template rejected `messages`: {error}") from error

    # -- generation -------------------------------------------------------------------------------

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        """Generate one completion: batched with concurrent requests when ``params`` allow."""
        if params.batchable:
            return await self._generate_batched(prompt, params)
        completion: Completion | None = None
        async for event in self.stream(prompt, params):
            if isinstance(event, Completion):
                completion = event
        assert completion is not None
        return completion

    async def _generate_batched(self, prompt: Prompt, params: SamplingParams) -> Completion:
        generations = await self.backend.agenerate_raw([prompt.text], params.to_settings())
        generation = generations[0]
        token_ids = generation.extra.get("token_ids")
        if not isinstance(token_ids, list):
            token_ids = self.tokenizer(generation.text, add_special_tokens=False).input_ids
        tokens = self._token_infos(token_ids)
        finish = generation.finish_reason
        text, stop = generation.text, None
        if finish == "stop_sequence":
            # the backend cuts the stop sequence off; TGI's text keeps it
            full = self.decode(token_ids)
            stop = _first_stop(full, params.stop)
            if stop is not None:
                text = full[: full.find(stop) + len(stop)]
        elif finish not in ("length", "eos_token"):
            finish = "length"
        return Completion(
            text=text,
            finish_reason=finish,  # type: ignore[arg-type]
            input_tokens=len(prompt),
            tokens=tokens,
            seed=params.seed if params.do_sample else None,
            stop=stop,
        )

    def _token_infos(self, ids: Sequence[int]) -> list[TokenInfo]:
        detok = _Detokenizer(self.tokenizer)
        infos = []
        for token_id in ids:
            piece = detok.push(token_id)
            special = token_id in self.special_ids
            infos.append(
                TokenInfo(
                    id=token_id,
                    text="" if special else piece,
                    special=special,
                    raw=self.tokenizer.decode([token_id], skip_special_tokens=False),
                )
            )
        return infos

    async def stream(
        self, prompt: Prompt, params: SamplingParams
    ) -> AsyncGenerator[TokenInfo | Completion, None]:
        """Yield each token as it is generated, then the :class:`Completion`.

        Closing the iterator early (a client that disconnected) stops the generation.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Step | None] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: _Step | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = asyncio.ensure_future(
            self.backend.arun_in_worker(
                lambda: self._generate_streamed(prompt.ids, params, emit, cancel)
            )
        )
        # a stream the worker never ran (it was closed first) ends too
        future.add_done_callback(lambda _: queue.put_nowait(None))
        detok = _Detokenizer(self.tokenizer)
        tokens: list[TokenInfo] = []
        try:
            while (step := await queue.get()) is not None:
                token_id, logprob, top = step
                piece = detok.push(token_id)
                special = token_id in self.special_ids
                info = TokenInfo(
                    id=token_id,
                    text="" if special else piece,
                    logprob=logprob,
                    special=special,
                    raw=self.tokenizer.decode([token_id], skip_special_tokens=False),
                    top=tuple(
                        TokenInfo(
                            id=i,
                            text=self.tokenizer.decode([i], skip_special_tokens=False),
                            logprob=value,
                            special=i in self.special_ids,
                        )
                        for i, value in top
                    ),
                )
                tokens.append(info)
                yield info
            stop = await future
        finally:
            cancel.set()
        if stop is not None:
            finish: FinishReason = "stop_sequence"
        elif tokens and tokens[-1].id in self.eos_token_ids:
            finish = "eos_token"
        else:
            finish = "length"
        text = self.decode([t.id for t in tokens])
        if stop is not None and stop in text:
            text = text[: text.find(stop) + len(stop)]
        yield Completion(
            text=text,
            finish_reason=finish,
            input_tokens=len(prompt),
            tokens=tokens,
            seed=params.seed if params.do_sample else None,
            stop=stop,
        )

    def _generate_streamed(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        emit: Callable[[_Step | None], None],
        cancel: threading.Event,
    ) -> str | None:
        """Run ``model.generate`` for one request in this thread; return the stop that ended it."""
        # only the one stream thread writes these counters
        self.streams_running += 1
        try:
            if cancel.is_set():
                return None
            self.streams_run += 1
            input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.backend.device)
            recorder = _LogprobRecorder(params.top_n_tokens)
            processors = LogitsProcessorList()
            if params.frequency_penalty or params.presence_penalty:
                processors.append(
                    _PenaltyProcessor(
                        len(prompt_ids),
                        params.frequency_penalty or 0.0,
                        params.presence_penalty or 0.0,
                    )
                )
            processors.append(recorder)
            stops = _StopSequences(self._stream_tokenizer, params.stop, len(prompt_ids))
            criteria = StoppingCriteriaList([stops, _StopOnEvent(cancel)])
            streamer = _CallbackStreamer(lambda token: emit((token, *recorder.read(token))))
            config = copy.deepcopy(self.model.generation_config)
            sampling = params.do_sample
            config.update(
                max_new_tokens=params.max_new_tokens,
                max_length=None,
                min_new_tokens=None,
                min_length=0,
                num_beams=1,
                do_sample=sampling,
                repetition_penalty=params.repetition_penalty,
                # the model's own sampling defaults do not apply: TGI's request is the whole story
                temperature=(params.temperature or 1.0) if sampling else None,
                top_p=(params.top_p or 1.0) if sampling else None,
                top_k=(params.top_k or 0) if sampling else None,
                typical_p=(params.typical_p or 1.0) if sampling else None,
            )
            seeded = params.do_sample and params.seed is not None
            with torch.inference_mode(), torch.random.fork_rng(devices=[], enabled=seeded):
                if seeded:
                    torch.manual_seed(params.seed)
                self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    logits_processor=processors,
                    stopping_criteria=criteria,
                    streamer=streamer,
                )
            return stops.matched
        finally:
            self.streams_running -= 1
            emit(None)


_Step = tuple[int, "float | None", "list[tuple[int, float]]"]
"""What the generation thread hands the event loop per token: id, logprob, alternatives."""


def _first_stop(text: str, stops: Sequence[str]) -> str | None:
    found = [(text.find(s), s) for s in stops if s and s in text]
    return min(found)[1] if found else None


class _Detokenizer:
    """Incremental decoding: the text each new token adds, never splitting a UTF-8 character.

    Decoding a window that starts one token back keeps the spaces that SentencePiece-style
    tokenizers drop at the start of a decode, so the pieces join up to the full decode.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class _LogprobRecorder(LogitsProcessor):
    """Keeps the last step's log-probabilities, so the streamer can report the chosen token's."""

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def read(self, token_id: int) -> tuple[float | None, list[tuple[int, float]]]:
        if self.last is None:
            return None, []
        row = self.last[0]
        top: list[tuple[int, float]] = []
        if self.top_n:
            values, indices = torch.topk(row, self.top_n)
            top = [
                (int(i), float(v))
                for v, i in zip(values.tolist(), indices.tolist(), strict=True)
                if v != float("-inf")
            ]
        logprob = float(row[token_id])
        return (logprob if logprob != float("-inf") else None), top


class _PenaltyProcessor(LogitsProcessor):
    """OpenAI's frequency and presence penalties, over the tokens generated so far."""

    def __init__(self, prompt_length: int, frequency: float, presence: float) -> None:
        self.prompt_length = prompt_length
        self.frequency = frequency
        self.presence = presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class _StopSequences(StoppingCriteria):
    """Stops when the generated text contains one of ``stops`` (TGI's ``stop`` parameter)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_length = prompt_length
        # every token adds at least one character, so the last len(stop) + 2 tokens hold it
        self.window = max((len(s) for s in self.stops), default=0) + 2
        self.matched: str | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = False
        if self.stops and self.matched is None:
            tail = input_ids[0, max(self.prompt_length, input_ids.shape[1] - self.window) :]
            text = self.tokenizer.decode(tail.tolist(), skip_special_tokens=True)
            found = _first_stop(text, self.stops)
            if found is not None:
                self.matched, done = found, True
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class _CallbackStreamer(BaseStreamer):
    """Calls ``on_token(id)`` for each new token (the first ``put`` is the prompt)."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self.on_token(int(token_id))

    def end(self) -> None:
        pass
