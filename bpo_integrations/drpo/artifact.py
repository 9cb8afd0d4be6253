"""The DRPO alignment artifact: a searched system prompt and optimized in-context examples.

``bpo-train drpo`` writes it once per base model; the middleware loads it and puts the system
prompt and the examples most similar to each request in front of the model. The file is one JSON
object whose ``format`` is ``"drpo-alignment/1"``; a reader refuses any other format by name
instead of misreading it. Besides the fields the middleware needs (``system_prompt``,
``examples``, ``k``), it records how it was made: the search's ``scores`` per step, its
``settings`` and the ``models`` used (kept as written, not interpreted here).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "drpo-alignment/1"
"""The artifact format this version reads and writes."""

_FAMILY = "drpo-alignment/"

ARTIFACT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "DRPO alignment artifact",
    "type": "object",
    "required": ["format", "system_prompt", "examples"],
    "properties": {
        "format": {"const": FORMAT},
        "system_prompt": {"type": "string"},
        "k": {"type": "integer", "minimum": 0},
        "examples": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["query", "response"],
                "properties": {
                    "query": {"type": "string", "pattern": "\\S"},
                    "response": {"type": "string", "pattern": "\\S"},
                    "score": {"type": ["number", "null"]},
                    "aspects": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "scores": {"type": "object"},
        "settings": {"type": "object"},
        "models": {"type": "object"},
        "created": {"type": "string"},
    },
}
"""JSON Schema of the artifact (what :func:`load_artifact` checks, for other tools)."""


class ArtifactError(ValueError):
    """An alignment artifact cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class ICLExample:
    """One in-context example: a query and the response the search optimized for it.

    ``score`` is the judge's mean aspect score of ``response`` (1 to 5) and ``aspects`` the
    aspects it was judged on; both are informational.
    """

    query: str
    response: str
    score: float | None = None
    aspects: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(query=self.query, response=self.response, score=self.score)
        out["aspects"] = list(self.aspects)
        return out


@dataclass(frozen=True)
class AlignmentArtifact:
    """A loaded ``drpo-alignment/1`` artifact.

    Example:
        >>> artifact = AlignmentArtifact.from_dict({
        ...     "format": "drpo-alignment/1",
        ...     "system_prompt": "You are a helpful, honest assistant.",
        ...     "examples": [{"query": "What is rain?", "response": "Water falling from clouds."}],
        ... })
        >>> artifact.k, artifact.examples[0].query
        (2, 'What is rain?')
    """

    system_prompt: str
    examples: tuple[ICLExample, ...]
    k: int = 2
    scores: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    models: Mapping[str, Any] = field(default_factory=dict)
    created: str | None = None
    source: str | None = field(default=None, compare=False)
    """Where it was loaded from (a path), for error messages."""

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> AlignmentArtifact:
        """Validate ``data`` (a parsed artifact) and build the artifact; raises
        :class:`ArtifactError` naming the first problem and how to fix it."""
        where = source or "the artifact"
        if not isinstance(data, Mapping):
            raise ArtifactError(
                f"{where}: expected a JSON object, got {type(data).__name__}; pass the file "
                "written by `bpo-train drpo` (alignment.json)"
            )
        fmt = data.get("format")
        if fmt is None:
            raise ArtifactError(
                f"{where}: no 'format' field, so this is not a DRPO alignment artifact; pass the "
                f"alignment.json written by `bpo-train drpo` (format {FORMAT!r})"
            )
        if fmt != FORMAT:
            hint = (
                "it was written by a newer version: upgrade bpo-integrations"
                if isinstance(fmt, str) and fmt.startswith(_FAMILY)
                else "this is not a DRPO alignment artifact"
            )
            raise ArtifactError(f"{where}: format {fmt!r} is not {FORMAT!r}; {hint}")
        system_prompt = data.get("system_prompt")
        if not isinstance(system_prompt, str):
            raise ArtifactError(
                f"{where}: 'system_prompt' must be a string, got {type(system_prompt).__name__}"
            )
        raw_examples = data.get("examples")
        if not isinstance(raw_examples, list):
            raise ArtifactError(
                f"{where}: 'examples' must be a list of {{'query', 'response'}} objects, got "
                f"{type(raw_examples).__name__}"
            )
        examples = tuple(_example(item, i, where) for i, item in enumerate(raw_examples))
        k = data.get("k", 2)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ArtifactError(f"{where}: 'k' must be an integer >= 0, got {k!r}")
        for name in ("scores", "settings", "models"):
            if not isinstance(data.get(name, {}), Mapping):
                raise ArtifactError(f"{where}: {name!r} must be an object")
        created = data.get("created")
        return cls(
            system_prompt=system_prompt,
            examples=examples,
            k=k,
            scores=dict(data.get("scores", {})),
            settings=dict(data.get("settings", {})),
            models=dict(data.get("models", {})),
            created=created if isinstance(created, str) else None,
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``format`` first)."""
        return {
            "format": FORMAT,
            "created": self.created,
            "system_prompt": self.system_prompt,
            "k": self.k,
            "examples": [example.to_dict() for example in self.examples],
            "scores": dict(self.scores),
            "settings": dict(self.settings),
            "models": dict(self.models),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact atomically (a temporary file renamed over ``path``)."""
        return write_artifact(path, self.to_dict())


def _example(item: Any, index: int, where: str) -> ICLExample:
    if not isinstance(item, Mapping):
        raise ArtifactError(
            f"{where}: examples[{index}] must be an object with 'query' and 'response', got "
            f"{type(item).__name__}"
        )
    for key in ("query", "response"):
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ArtifactError(
                f"{where}: examples[{index}].{key} must be a non-empty string; remove the example "
                "or re-run the search"
            )
    score = item.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise ArtifactError(f"{where}: examples[{index}].score must be a number or null")
    aspects = item.get("aspects", [])
    if not isinstance(aspects, list) or not all(isinstance(a, str) for a in aspects):
        raise ArtifactError(f"{where}: examples[{index}].aspects must be a list of strings")
    extra = {k: v for k, v in item.items() if k not in ("query", "response", "score", "aspects")}
    return ICLExample(
        query=item["query"],
        response=item["response"],
        score=None if score is None else float(score),
        aspects=tuple(aspects),
        extra=extra,
    )


def load_artifact(
    source: str | os.PathLike[str] | Mapping[str, Any] | AlignmentArtifact,
) -> AlignmentArtifact:
    """Load and validate an artifact from a path, a parsed dict, or pass one through.

    Example:
        >>> load_artifact({"format": "drpo-alignment/9", "system_prompt": "", "examples": []})
        Traceback (most recent call last):
        ...
        bpo_integrations.drpo.artifact.ArtifactError: the artifact: format 'drpo-alignment/9' \
is not 'drpo-alignment/1'; it was written by a newer version: upgrade bpo-integrations
    """
    if isinstance(source, AlignmentArtifact):
        return source
    if isinstance(source, Mapping):
        return AlignmentArtifact.from_dict(source)
    path = Path(source)
    if not path.is_file():
        raise ArtifactError(
            f"alignment artifact {path} not found: run `bpo-train drpo --output_dir DIR` and pass "
            "DIR/alignment.json"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path}: not valid JSON ({error}); was the file cut off?") from error
    return AlignmentArtifact.from_dict(data, source=str(path))


def write_artifact(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Validate ``data`` and write it as JSON atomically; returns the path."""
    AlignmentArtifact.from_dict(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(dict(data), out, ensure_ascii=False, indent=2)
            out.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
