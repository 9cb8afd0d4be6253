"""Robust parsing of the DRPO judge's and optimizer's answers.

Judges and optimizers answer JSON inside prose, code fences, with Python quotes or trailing
commas, and write scores as ``4``, ``"4"``, ``"4/5"`` or ``"[4]"``: :func:`parse_json_object`
and :func:`parse_scores` read all of these and report anything else as malformed.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bpo_trainer.drpo.prompts import ASPECTS, DEFAULT_ASPECTS

_ALIASES = {
    "compliance with instructions": "Compliance",
    "instruction following": "Compliance",
    "acknowledgement of limitations": "Limitations",
    "acknowledgment of limitations": "Limitations",
    "critical thinking": "Critical-Thinking",
    "cultural sensitivity": "Sensitivity",
    "accuracy": "Factuality",
    "harmlessness": "Safety",
    "relevance": "Helpfulness",
}


_FENCE = re.compile(r"```[ \t]*(?:json|JSON|python)?[ \t]*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in a model's answer, or ``None``.

    Reads a bare object, one inside a code fence or surrounded by prose, and repairs the usual
    slips: trailing commas, Python-style quotes and ``True``/``None``, raw newlines in strings.

    Example:
        >>> parse_json_object("Sure!\\n```json\\n{'score': 4,}\\n```")
        {'score': 4}
    """
    if not isinstance(text, str):
        return None
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        candidates.append(text[start : end + 1])
    candidates.append(text)
    for candidate in candidates:
        value = _loads(candidate.strip())
        if isinstance(value, dict):
            return value
        inner_start, inner_end = candidate.find("{"), candidate.rfind("}")
        if 0 <= inner_start < inner_end:
            value = _loads(candidate[inner_start : inner_end + 1])
            if isinstance(value, dict):
                return value
    return None


def _loads(text: str) -> Any:
    for attempt in (text, _TRAILING_COMMA.sub(r"\1", text)):
        try:
            return json.loads(attempt, strict=False)
        except (json.JSONDecodeError, ValueError):
            pass
        try:
            return ast.literal_eval(attempt)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            pass
    return None


@dataclass(frozen=True)
class AspectSelection:
    """The aspects the judge picked for a query; ``error`` is set when its answer could not be
    parsed and the default aspects stand in."""

    aspects: tuple[str, ...]
    reason: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"aspects": list(self.aspects), "reason": self.reason, "error": self.error}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AspectSelection:
        return cls(tuple(data["aspects"]), data.get("reason", ""), data.get("error"))


def canonical_aspect(name: str) -> str:
    """The catalogue's spelling of an aspect name (``"critical thinking"`` becomes
    ``Critical-Thinking``); a name outside the catalogue is kept, title-cased."""
    key = " ".join(str(name).replace("_", " ").split()).strip().lower()
    for known in ASPECTS:
        if key == known.lower() or key.replace(" ", "-") == known.lower():
            return known
    return _ALIASES.get(key, " ".join(w[:1].upper() + w[1:] for w in key.split()))


def parse_aspect_selection(text: str, *, low: int = 2, high: int = 6) -> AspectSelection:
    """The judge's aspect selection; the default aspects with ``error`` set when it cannot be
    read. More than ``high`` aspects are cut to the first ``high``."""
    data = parse_json_object(text)
    if data is None:
        return AspectSelection(DEFAULT_ASPECTS, "", "no JSON object in the aspect selection")
    selection = data.get("aspects_selection", data)
    if not isinstance(selection, Mapping):
        return AspectSelection(DEFAULT_ASPECTS, "", "'aspects_selection' is not an object")
    raw = selection.get("selected_aspects", selection.get("aspects"))
    if isinstance(raw, str):
        raw = [part for part in re.split(r"[,;\n]", raw) if part.strip()]
    if not isinstance(raw, list) or not raw:
        return AspectSelection(DEFAULT_ASPECTS, "", "no 'selected_aspects' list")
    names = list(dict.fromkeys(canonical_aspect(str(a)) for a in raw if str(a).strip()))
    if len(names) < low:
        names += [a for a in DEFAULT_ASPECTS if a not in names][: low - len(names)]
    reason = selection.get("reasoning", "")
    return AspectSelection(tuple(names[:high]), reason if isinstance(reason, str) else str(reason))


@dataclass(frozen=True)
class Evaluation:
    """The judge's per-aspect scores (1 to 5) and rationales of one output.

    ``reward`` is the mean score, ``None`` when no score could be read (``error`` says why).
    Aspects the judge left out or scored out of range are listed in ``missing``.
    """

    scores: dict[str, float] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    error: str | None = None

    @property
    def valid(self) -> bool:
        return bool(self.scores)

    @property
    def reward(self) -> float | None:
        if not self.scores:
            return None
        return sum(self.scores.values()) / len(self.scores)

    @property
    def perfect(self) -> bool:
        return self.valid and all(score >= 5 for score in self.scores.values())

    def feedback(self) -> dict[str, dict[str, Any]]:
        """The scores and rationales in the reference's JSON shape, for the optimizer."""
        return {
            name: {"rationale": self.rationales.get(name, ""), "score": _compact(score)}
            for name, score in self.scores.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": dict(self.scores),
            "rationales": dict(self.rationales),
            "missing": list(self.missing),
            "error": self.error,
            "reward": self.reward,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        return cls(
            scores={k: float(v) for k, v in data.get("scores", {}).items()},
            rationales=dict(data.get("rationales", {})),
            missing=tuple(data.get("missing", ())),
            error=data.get("error"),
        )


def _compact(score: float) -> int | float:
    return int(score) if float(score).is_integer() else score


_SCORE = re.compile(r"^\s*\[?\s*(\d+(?:\.\d+)?)\s*(?:/\s*5(?:\.0)?)?\s*\]?\s*(?:\(.*\))?\s*$")


def parse_score_value(value: Any) -> float | None:
    """A 1-5 score from ``4``, ``4.5``, ``"4"``, ``"4/5"`` or ``"[4]"``; ``None`` otherwise.

    Example:
        >>> [parse_score_value(v) for v in (4, "4/5", "[3]", "6", "great", True)]
        [4.0, 4.0, 3.0, None, None, None]
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _SCORE.match(value)
        if match is None:
            return None
        number = float(match.group(1))
    else:
        return None
    return number if 1 <= number <= 5 else None


def parse_scores(text: str, aspects: Sequence[str]) -> Evaluation:
    """The judge's scores of the selected ``aspects``.

    Reads ``{aspect: {"score": ..., "rationale"/"reason": ...}}`` (any key case, ``-``/``_``/space
    alike), also wrapped in a ``"scores"`` object or with bare numbers; aspects the judge scored
    beyond those asked for are ignored.

    Example:
        >>> evaluation = parse_scores('{"helpfulness": {"score": "4"}, "Depth": {"score": 2}}',
        ...                           ["Helpfulness", "Depth"])
        >>> evaluation.scores, evaluation.reward
        ({'Helpfulness': 4.0, 'Depth': 2.0}, 3.0)
    """
    data = parse_json_object(text)
    if data is None:
        return Evaluation(missing=tuple(aspects), error="no JSON object in the judgment")
    if isinstance(data.get("scores"), Mapping) and not any(_key(a) in _keys(data) for a in aspects):
        rationale = data.get("rationale", data.get("reason", ""))
        data = {
            name: {"score": value, "rationale": rationale} for name, value in data["scores"].items()
        }
    by_key = {_key(name): value for name, value in data.items()}
    scores: dict[str, float] = {}
    rationales: dict[str, str] = {}
    missing = []
    for aspect in aspects:
        entry = by_key.get(_key(aspect))
        if isinstance(entry, Mapping):
            score = parse_score_value(entry.get("score", entry.get("rating")))
            rationale = entry.get("rationale", entry.get("reason", ""))
        else:
            score, rationale = parse_score_value(entry), ""
        if score is None:
            missing.append(aspect)
            continue
        scores[aspect] = score
        rationales[aspect] = rationale if isinstance(rationale, str) else str(rationale)
    error = None if scores else "no aspect has a 1-5 score"
    return Evaluation(scores, rationales, tuple(missing), error)


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", canonical_aspect(str(name)).lower())


def _keys(data: Mapping[str, Any]) -> set[str]:
    return {_key(k) for k in data}


_START_END = re.compile(r"<START>\s*(.*?)\s*(?:<END>|$)", re.S)


def parse_revision(text: str, key: str) -> str | None:
    """The new text under ``key`` (``new_response`` or ``new_system_prompt``) in the optimizer's
    JSON answer, without ``<START>``/``<END>`` markers; ``None`` when it cannot be read.

    An answer that is not JSON but wraps the text in ``<START>``...``<END>`` is read too.

    Example:
        >>> parse_revision('{"thought": "...", "new_response": "<START>\\nHi!\\n<END>"}',
        ...                "new_response")
        'Hi!'
    """
    data = parse_json_object(text)
    value: Any = None
    if data is not None:
        value = data.get(key)
    elif isinstance(text, str):
        match = _START_END.search(text)
        value = match.group(1) if match else None
    if not isinstance(value, str):
        return None
    if "\n" not in value and "\\n" in value:  # newlines escaped twice by the model
        value = value.replace("\\n", "\n")
    match = _START_END.search(value)
    if match:
        value = match.group(1)
    value = value.strip()
    return value or None
