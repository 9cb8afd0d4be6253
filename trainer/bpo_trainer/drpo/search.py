"""The two searches of DRPO: in-context examples first, then the system prompt.

Step 1, :class:`ICLSearch`: for each base example, a beam search over revisions of its response.
The judge (as a strict critic) picks the aspects that matter for the example's query and scores
the response; the optimizer rewrites it from the feedback; the best-scored response is kept
(ties go to the later revision, as in the reference). An example stops when a response scores
5 on every aspect.

Step 2, :class:`PromptSearch`: a beam search over the system prompt. Step ``t`` asks the base
model seed query ``t`` with each candidate prompt and the K optimized examples most similar to
the query, scores the answer with the dynamic reward, and keeps the ``prompt_beam_width``
prompts with the best mean reward along their path (the last reward with a beam of 1). The
optimizer proposes ``prompt_candidates`` new prompts from each kept prompt's last evaluation; a
prompt that already scores ``skip_threshold`` or more is kept as is, and the search gets one step
more (at most ``prompt_max_depth_increase`` in all), as the reference's dynamic depth.

An example whose query *is* the seed query is not shown for it (the base model would copy its
answer). A judgment that stays unreadable gives no reward and no feedback: that state is not
revised (an example keeps its response, a prompt is kept as is), and a path's mean leaves it
out. Identical candidates are scored once. Both searches log every finished step in
``steps.jsonl`` (:class:`~bpo_trainer.drpo.steps.StepLog`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bpo_integrations.drpo import ICLExample, Retriever, alignment_messages
from bpo_trainer.drpo.calls import ModelCalls
from bpo_trainer.drpo.config import DRPOConfig
from bpo_trainer.drpo.parsing import AspectSelection, Evaluation, parse_revision
from bpo_trainer.drpo.prompts import propose_system_prompt_messages, revise_response_messages
from bpo_trainer.drpo.reward import DynamicReward, Judged
from bpo_trainer.drpo.steps import StepLog
from bpo_trainer.evaluate.config import settings_hash

StepCallback = Callable[[dict[str, Any]], None]

_HISTORY = 5
"""Earlier system prompts shown to the optimizer (the reference's last 5)."""


def _reward(state: dict[str, Any]) -> float | None:
    return state["evaluation"]["reward"]


def _rank_key(reward: float | None) -> float:
    return float("-inf") if reward is None else reward


def _unique(texts: Sequence[str | None]) -> list[str]:
    return list(dict.fromkeys(t for t in texts if t))


# -- step 1: in-context examples -------------------------------------------------------------


@dataclass
class OptimizedExample:
    """An example after the search: the best response and how its reward went."""

    index: int
    query: str
    original_response: str
    original_reward: float | None
    response: str
    reward: float | None
    aspects: tuple[str, ...]
    best_per_depth: list[float | None] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_icl_example(self) -> ICLExample:
        return ICLExample(
            query=self.query,
            response=self.response,
            score=self.reward,
            aspects=self.aspects,
            extra={
                "original_response": self.original_response,
                "original_score": self.original_reward,
            },
        )


class ICLSearch:
    """Beam search over revisions of each example's response (step 1)."""

    def __init__(
        self,
        calls: ModelCalls,
        config: DRPOConfig,
        steps: StepLog,
        *,
        on_step: StepCallback | None = None,
    ) -> None:
        self.calls = calls
        self.config = config
        self.steps = steps
        self.on_step = on_step or (lambda record: None)
        self.reward = DynamicReward(calls, critic=True, parse_retries=config.judge_parse_retries)
        self.identity = settings_hash(
            "icl",
            [calls.models[r].identity() for r in ("optimizer", "judge")],
            [asdict(calls.params(r)) for r in ("optimizer", "judge")],
            config.icl_beam_width,
            config.icl_candidates,
            config.judge_parse_retries,
        )

    async def optimize(self, index: int, query: str, response: str) -> OptimizedExample:
        """Search the best response to ``query``, starting from ``response``."""
        config = self.config
        records = [await self._root(index, query, response)]
        self.on_step(records[0])
        selection = AspectSelection.from_dict(records[0]["aspects"])
        beam = [records[0]["candidates"][i] for i in records[0]["beam"]]
        best = beam[0]
        best_per_depth = [_reward(best)]
        for depth in range(1, config.icl_depth + 1):
            if _reward(best) is not None and Evaluation.from_dict(best["evaluation"]).perfect:
                break
            revisable = [i for i, s in enumerate(beam) if self._revisable(s)]
            if not revisable:
                break
            key = settings_hash(
                self.identity, "icl-step", query, response, depth, [s["response"] for s in beam]
            )
            record = self.steps.get(key)
            if record is None:
                record = await self._step(key, index, query, depth, beam, revisable, selection)
            self.on_step(record)
            records.append(record)
            if not record["beam"]:
                break
            beam = [record["candidates"][i] for i in record["beam"]]
            top = beam[0]
            if _reward(top) is not None and _rank_key(_reward(top)) >= _rank_key(_reward(best)):
                best = top
            best_per_depth.append(_reward(best))
        root = records[0]["candidates"][0]
        return OptimizedExample(
            index=index,
            query=query,
            original_response=response,
            original_reward=_reward(root),
            response=best["response"],
            reward=_reward(best),
            aspects=selection.aspects,
            best_per_depth=best_per_depth,
            records=records,
        )

    @staticmethod
    def _revisable(state: dict[str, Any]) -> bool:
        evaluation = Evaluation.from_dict(state["evaluation"])
        return evaluation.valid and not evaluation.perfect

    async def _root(self, index: int, query: str, response: str) -> dict[str, Any]:
        key = settings_hash(self.identity, "icl-root", query, response)
        record = self.steps.get(key)
        if record is not None:
            return record
        selection = await self.reward.select(query)
        judged = await self.reward.score(query, response, selection)
        state = {"response": response, "depth": 0, "parent": None, **_judged(judged)}
        record = {
            "key": key,
            "kind": "icl",
            "example": index,
            "query": query,
            "depth": 0,
            "aspects": selection.to_dict(),
            "candidates": [state],
            "beam": [0],
            "malformed_revisions": 0,
        }
        return self.steps.write(record)

    async def _step(
        self,
        key: str,
        index: int,
        query: str,
        depth: int,
        beam: list[dict[str, Any]],
        revisable: list[int],
        selection: AspectSelection,
    ) -> dict[str, Any]:
        jobs = [
            (parent, sample) for parent in revisable for sample in range(self.config.icl_candidates)
        ]
        revisions = await asyncio.gather(
            *(self._revise(query, beam[parent], sample) for parent, sample in jobs)
        )
        malformed = sum(1 for r in revisions if r is None)
        seen: dict[str, int] = {}
        for (parent, _), text in zip(jobs, revisions, strict=True):
            if text is not None and text not in seen:
                seen[text] = parent
        judged = await asyncio.gather(*(self.reward.score(query, text, selection) for text in seen))
        candidates = [
            {"response": text, "depth": depth, "parent": parent, **_judged(j)}
            for (text, parent), j in zip(seen.items(), judged, strict=True)
        ]
        order = sorted(
            range(len(candidates)), key=lambda i: (-_rank_key(_reward(candidates[i])), i)
        )
        record = {
            "key": key,
            "kind": "icl",
            "example": index,
            "query": query,
            "depth": depth,
            "candidates": candidates,
            "beam": order[: self.config.icl_beam_width],
            "malformed_revisions": malformed,
        }
        return self.steps.write(record)

    async def _revise(self, query: str, state: dict[str, Any], sample: int) -> str | None:
        feedback = Evaluation.from_dict(state["evaluation"]).feedback()
        messages = revise_response_messages(query, state["response"], feedback)
        reply = await self.calls.chat("optimizer", messages, sample=sample, tag="revise")
        return parse_revision(reply.text, "new_response")


def _judged(judged: Judged) -> dict[str, Any]:
    return {"evaluation": judged.evaluation.to_dict(), "attempts": judged.attempts}


# -- step 2: the system prompt ---------------------------------------------------------------


@dataclass
class PromptSearchResult:
    """The best system prompt, its path's rewards and aggregate, and the step records."""

    system_prompt: str
    aggregate: float
    rewards: list[float | None]
    initial_reward: float | None
    records: list[dict[str, Any]]


class PromptSearch:
    """Beam search over the system prompt (step 2)."""

    def __init__(
        self,
        calls: ModelCalls,
        config: DRPOConfig,
        steps: StepLog,
        examples: Sequence[ICLExample],
        retriever: Retriever,
        *,
        retrieval: str = "bm25",
        on_step: StepCallback | None = None,
    ) -> None:
        self.calls = calls
        self.config = config
        self.steps = steps
        self.examples = list(examples)
        self.retriever = retriever
        self.on_step = on_step or (lambda record: None)
        self.reward = DynamicReward(calls, critic=False, parse_retries=config.judge_parse_retries)
        examples_digest = hashlib.sha256(
            "\x1e".join(f"{e.query}\x1f{e.response}" for e in self.examples).encode()
        ).hexdigest()
        self.identity = settings_hash(
            "prompt",
            [calls.models[r].identity() for r in ("base", "optimizer", "judge")],
            [asdict(calls.params(r)) for r in ("base", "optimizer", "judge")],
            config.prompt_beam_width,
            config.prompt_candidates,
            config.prompt_max_depth_increase,
            config.skip_threshold,
            config.k,
            config.judge_parse_retries,
            examples_digest,
            retrieval,
        )

    def aggregate(self, rewards: Sequence[float | None]) -> float:
        """The beam's ranking of a path: the mean of its valid rewards (the last one with a
        beam of 1); 0 when none is valid, as the reference scores an unparsed judgment."""
        valid = [r for r in rewards if r is not None]
        if not valid:
            return 0.0
        if self.config.prompt_beam_width == 1:
            return rewards[-1] if rewards[-1] is not None else 0.0
        return sum(valid) / len(valid)

    async def run(self, queries: Sequence[str], initial_prompt: str) -> PromptSearchResult:
        config = self.config
        root_key = settings_hash(self.identity, "prompt-root", initial_prompt, queries[0])
        root_record = self.steps.get(root_key)
        if root_record is None:
            node = await self._evaluate(initial_prompt, queries[0], [], [initial_prompt], None)
            root_record = {
                "key": root_key,
                "kind": "prompt",
                "step": 0,
                "query": queries[0],
                "candidates": [node],
                "beam": [0],
                "extra_steps": 0,
                "malformed_proposals": 0,
            }
            self.steps.write(root_record)
        self.on_step(root_record)
        records = [root_record]
        beam = [root_record["candidates"][0]]
        extra = 0
        step = 1
        while step <= config.prompt_depth + extra and step < len(queries):
            key = settings_hash(
                self.identity,
                "prompt-step",
                step,
                queries[step],
                [(n["prompt"], n["history"], n["rewards"]) for n in beam],
            )
            record = self.steps.get(key)
            if record is None:
                record = await self._step(key, step, queries[step], beam, extra)
            self.on_step(record)
            records.append(record)
            extra = record["extra_steps"]
            beam = [record["candidates"][i] for i in record["beam"]]
            step += 1
        best = beam[0]
        return PromptSearchResult(
            system_prompt=best["prompt"],
            aggregate=best["aggregate"],
            rewards=best["rewards"],
            initial_reward=_reward(root_record["candidates"][0]),
            records=records,
        )

    def _keep(self, node: dict[str, Any]) -> bool:
        """A prompt is kept rather than revised when its last answer already scores well, or
        when its judgment is malformed (there is no feedback to revise from)."""
        reward = _reward(node)
        return reward is None or reward >= self.config.skip_threshold

    async def _step(
        self, key: str, step: int, query: str, beam: list[dict[str, Any]], extra: int
    ) -> dict[str, Any]:
        config = self.config
        kept = [self._keep(node) for node in beam]
        proposals = await asyncio.gather(
            *(
                self._propose(node, sample)
                for node, keep in zip(beam, kept, strict=True)
                if not keep
                for sample in range(config.prompt_candidates)
            )
        )
        malformed = sum(1 for p in proposals if p is None)
        actions: list[tuple[int, str, bool]] = []
        position = 0
        for parent, (node, keep) in enumerate(zip(beam, kept, strict=True)):
            if keep:
                actions.append((parent, node["prompt"], True))
                continue
            mine = proposals[position : position + config.prompt_candidates]
            position += config.prompt_candidates
            texts = _unique(mine) or [node["prompt"]]
            actions += [(parent, text, False) for text in texts]
        children = await asyncio.gather(
            *(
                self._evaluate(
                    prompt,
                    query,
                    beam[parent]["rewards"],
                    [*beam[parent]["history"], prompt][-_HISTORY:]
                    if prompt != beam[parent]["prompt"]
                    else beam[parent]["history"],
                    parent,
                    kept=keep,
                )
                for parent, prompt, keep in actions
            )
        )
        best_by_prompt: dict[str, int] = {}
        for index, child in enumerate(children):
            other = best_by_prompt.get(child["prompt"])
            if other is None or child["aggregate"] > children[other]["aggregate"]:
                best_by_prompt[child["prompt"]] = index
        order = sorted(best_by_prompt.values(), key=lambda i: (-children[i]["aggregate"], i))
        grows = any(kept) and extra < config.prompt_max_depth_increase
        record = {
            "key": key,
            "kind": "prompt",
            "step": step,
            "query": query,
            "candidates": children,
            "beam": order[: config.prompt_beam_width],
            "extra_steps": extra + (1 if grows else 0),
            "malformed_proposals": malformed,
        }
        return self.steps.write(record)

    async def _propose(self, node: dict[str, Any], sample: int) -> str | None:
        evaluation = Evaluation.from_dict(node["evaluation"]).feedback()
        messages = propose_system_prompt_messages(
            node["prompt"], node["query"], node["output"], evaluation, node["history"]
        )
        reply = await self.calls.chat("optimizer", messages, sample=sample, tag="propose")
        return parse_revision(reply.text, "new_system_prompt")

    async def _evaluate(
        self,
        prompt: str,
        query: str,
        rewards: Sequence[float | None],
        history: Sequence[str],
        parent: int | None,
        *,
        kept: bool = False,
    ) -> dict[str, Any]:
        """Answer ``query`` with ``prompt`` and the K most similar examples, and judge it."""
        exclude = {i for i, example in enumerate(self.examples) if example.query == query}
        ranked = await self.retriever.atop_k(query, self.config.k, exclude=exclude)
        examples = [self.examples[i] for i, _ in ranked]
        reply = await self.calls.chat(
            "base", alignment_messages(prompt, examples, query), tag="answer"
        )
        selection = await self.reward.select(query)
        judged = await self.reward.score(query, reply.text, selection)
        path = [*rewards, judged.reward] if parent is not None else []
        return {
            "prompt": prompt,
            "history": list(history),
            "parent": parent,
            "kept": kept,
            "query": query,
            "examples": [i for i, _ in ranked],
            "output": reply.text,
            "aspects": selection.to_dict(),
            **_judged(judged),
            "rewards": path,
            "aggregate": self.aggregate(path),
        }
