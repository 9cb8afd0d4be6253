"""Dynamic rewarding: the judge picks the aspects that matter for a query, then scores outputs.

The reward of an output is the mean of its aspect scores (1 to 5). A judgment whose scores cannot
be read is asked again with another seed (``judge_parse_retries`` times); if it still cannot be
read it is *malformed*: it is counted, it gives no reward, and no revision is made from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bpo_trainer.drpo.calls import ModelCalls
from bpo_trainer.drpo.parsing import (
    AspectSelection,
    Evaluation,
    parse_aspect_selection,
    parse_scores,
)
from bpo_trainer.drpo.prompts import score_messages, select_aspects_messages


@dataclass(frozen=True)
class Judged:
    """An output and its evaluation; ``attempts`` is how many judge calls it took."""

    output: str
    evaluation: Evaluation
    attempts: int = 1

    @property
    def reward(self) -> float | None:
        return self.evaluation.reward

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "evaluation": self.evaluation.to_dict(),
            "attempts": self.attempts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Judged:
        return cls(data["output"], Evaluation.from_dict(data["evaluation"]), data["attempts"])


class DynamicReward:
    """The judge of one search step. ``critic=True`` is the ICL step's strict critic (3 to 6
    aspects), ``False`` the system prompt step's impartial judge (2 to 5 aspects).

    Example:
        >>> reward = DynamicReward(calls, critic=False, parse_retries=1)  # doctest: +SKIP
        >>> selection = await reward.select("How do vaccines work?")  # doctest: +SKIP
        >>> judged = await reward.score("How do vaccines work?", text, selection)  # doctest: +SKIP
        >>> judged.reward  # doctest: +SKIP
        4.25
    """

    def __init__(self, calls: ModelCalls, *, critic: bool, parse_retries: int) -> None:
        self.calls = calls
        self.critic = critic
        self.parse_retries = parse_retries

    async def select(self, query: str) -> AspectSelection:
        """The aspects to score answers to ``query`` on (the default five if unreadable)."""
        reply = await self.calls.chat(
            "judge", select_aspects_messages(query, critic=self.critic), tag="aspects"
        )
        low, high = (3, 6) if self.critic else (2, 5)
        return parse_aspect_selection(reply.text, low=low, high=high)

    async def score(self, query: str, output: str, selection: AspectSelection) -> Judged:
        """Score ``output`` on the selected aspects, asking again while it cannot be parsed."""
        messages = score_messages(
            query, output, selection.aspects, selection.reason, critic=self.critic
        )
        evaluation = Evaluation(error="not judged")
        for attempt in range(self.parse_retries + 1):
            reply = await self.calls.chat("judge", messages, sample=attempt, tag="score")
            evaluation = parse_scores(reply.text, selection.aspects)
            if evaluation.valid:
                return Judged(output, evaluation, attempt + 1)
        return Judged(output, evaluation, self.parse_retries + 1)
