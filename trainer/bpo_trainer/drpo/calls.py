"""Every model call of the search, made once: cached in ``calls.jsonl``, retried, and counted.

A call's key hashes the role, the model's identity, the messages, the sampling settings and the
sample number, so a re-run (after a crash, or with more steps) replays finished calls from the
file instead of sending them again; identical calls in flight at the same time are sent once.
The plumbing (rate limiter, retries with ``Retry-After``, token and cost counters) is the BPO
evaluation's (:mod:`bpo_trainer.evaluate.runtime`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bpo_integrations.jsonl import JsonlWriter
from bpo_trainer.drpo.config import ROLES, DRPOConfig
from bpo_trainer.errors import StageFailedError
from bpo_trainer.evaluate.chat import ChatModel, ChatReply, SamplingParams
from bpo_trainer.evaluate.config import settings_hash
from bpo_trainer.evaluate.runtime import CallLimiter, RunState, records_by_key

CALLS_FILE = "calls.jsonl"


class ModelCalls:
    """Cached, retried, rate-limited calls to the base, optimizer and judge models.

    ``new_calls`` counts the requests this run sent, ``cached_calls`` the ones replayed from
    ``calls.jsonl``; ``usage`` and ``total`` hold the tokens (and cost) of this run and of the
    whole search.
    """

    def __init__(
        self,
        output_dir: Path,
        config: DRPOConfig,
        models: Mapping[str, ChatModel],
        *,
        progress: Any = None,
    ) -> None:
        self.config = config
        self.models = dict(models)
        self.path = output_dir / CALLS_FILE
        self._done = records_by_key(self.path)
        self._writer: JsonlWriter | None = None
        self._in_flight: dict[str, asyncio.Future[ChatReply]] = {}
        self._limiters = {
            role: CallLimiter(config.concurrency, config.requests_per_second) for role in ROLES
        }
        self.cached_calls = dict.fromkeys(ROLES, 0)
        self.run = RunState.start(config, output_dir, roles=ROLES, progress=progress)
        self.usage, self.total = self.run.usage, self.run.total

    @property
    def new_calls(self) -> dict[str, int]:
        return dict(self.run.new_calls)

    def params(self, role: str, sample: int = 0) -> SamplingParams:
        """The sampling settings of ``role``; ``sample`` picks another seed (another candidate)."""
        config = self.config
        return SamplingParams(
            max_tokens=getattr(config, f"{role}_max_tokens"),
            temperature=getattr(config, f"{role}_temperature"),
            seed=config.seed + sample,
        )

    def key(self, role: str, messages: Sequence[Mapping[str, str]], sample: int = 0) -> str:
        return settings_hash(
            role,
            self.models[role].identity(),
            [dict(m) for m in messages],
            asdict(self.params(role, sample)),
        )

    async def chat(
        self,
        role: str,
        messages: Sequence[Mapping[str, str]],
        *,
        sample: int = 0,
        tag: str = "",
    ) -> ChatReply:
        """The reply of ``role``'s model to ``messages``, from the cache when it has it.

        Raises :class:`StageFailedError` when the model still fails after the retries: the
        search cannot go on without the answer, and finished calls are kept for the next run.
        """
        key = self.key(role, messages, sample)
        record = self._done.get(key)
        if record is not None:
            self.cached_calls[role] += 1
            self.run.count_cached(role, record)
            return _reply(record)
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ChatReply] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            reply = await self._send(role, messages, sample, key, tag)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._in_flight.pop(key, None)
        future.set_result(reply)
        return reply

    async def _send(
        self, role: str, messages: Sequence[Mapping[str, str]], sample: int, key: str, tag: str
    ) -> ChatReply:
        model = self.models[role]
        params = self.params(role, sample)
        payload = [dict(m) for m in messages]
        try:
            reply = await self.run.call(
                self._limiters[role],
                lambda: model.achat(payload, params, timeout=self.config.request_timeout),
            )
        except Exception as error:
            self.run.fail(role, error)
            raise StageFailedError(
                f"the {role} model failed after {self.config.max_retries} retries "
                f"({type(error).__name__}: {error}); fix that endpoint and run again: finished "
                f"calls are kept in {self.path}"
            ) from error
        self.run.count_reply(role, reply)
        record = {
            "key": key,
            "role": role,
            "tag": tag,
            "sample": sample,
            "text": reply.text,
            "finish_reason": reply.finish_reason,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
        }
        if self._writer is None:
            self._writer = JsonlWriter(self.path, fsync=False)
        self._writer.write(record)
        self._done[key] = record
        return reply

    def describe(self) -> str:
        """Tokens (and cost, when priced) per model this run: the progress bar's counter."""
        return self.run.describe()

    def usage_summary(self) -> dict[str, Any]:
        """New and replayed calls, tokens and cost per model, this run and in all."""
        return {
            "new_calls": self.new_calls,
            "cached_calls": dict(self.cached_calls),
            "this_run": {role: usage.to_dict() for role, usage in self.usage.items()},
            "total": {role: usage.to_dict() for role, usage in self.total.items()},
            "cost_usd_total": round(sum(u.cost_usd for u in self.total.values()), 6),
        }

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _reply(record: Mapping[str, Any]) -> ChatReply:
    return ChatReply(
        text=record["text"],
        finish_reason=record.get("finish_reason"),
        prompt_tokens=record.get("prompt_tokens"),
        completion_tokens=record.get("completion_tokens"),
    )
