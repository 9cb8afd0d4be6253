"""The DRPO artifact: what loads, what is refused (with the fix named), and the light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bpo_integrations.drpo import (
    ARTIFACT_SCHEMA,
    FORMAT,
    AlignmentArtifact,
    ArtifactError,
    DRPOAligner,
    ICLExample,
    alignment_messages,
    load_artifact,
    write_artifact,
)

VALID: dict[str, Any] = {
    "format": "drpo-alignment/1",
    "created": "2025-01-01T00:00:00+00:00",
    "system_prompt": "You are a helpful, honest assistant.",
    "k": 2,
    "examples": [
        {
            "query": "What is rain?",
            "response": "Water from clouds.",
            "score": 4.5,
            "aspects": ["Helpfulness"],
            "original_response": "Water.",
        },
        {"query": "Bake bread?", "response": "Knead, prove, bake.", "score": None},
    ],
    "scores": {"system_prompt": {"best_aggregate": 4.2}},
    "settings": {"k": 2},
    "models": {"judge": ["openai", "https://api.openai.com/v1", "gpt-4o"]},
    "stats": {"malformed": {"judgments": 0}},
}


def test_a_valid_artifact_loads_round_trips_and_matches_the_schema(tmp_path: Path) -> None:
    jsonschema.validate(VALID, ARTIFACT_SCHEMA)
    path = write_artifact(tmp_path / "a" / "alignment.json", VALID)
    artifact = load_artifact(path)
    assert artifact.source == str(path) and artifact.k == 2
    assert artifact.examples[0] == ICLExample(
        "What is rain?", "Water from clouds.", 4.5, ("Helpfulness",)
    )
    assert artifact.examples[0].extra == {"original_response": "Water."}
    assert artifact.models["judge"][2] == "gpt-4o"
    again = load_artifact(artifact.save(tmp_path / "b.json"))
    assert again == artifact
    assert json.loads((tmp_path / "b.json").read_text())["format"] == FORMAT
    assert load_artifact(artifact) is artifact


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": None}, "no 'format' field, so this is not a DRPO alignment artifact"),
        ({"format": "drpo-alignment/2"}, "it was written by a newer version: upgrade"),
        ({"format": "bpo-run/1"}, "'bpo-run/1' is not 'drpo-alignment/1'; this is not a DRPO"),
        ({"system_prompt": None}, "'system_prompt' must be a string, got NoneType"),
        ({"examples": {"q": "r"}}, "'examples' must be a list of {'query', 'response'} objects"),
        ({"examples": ["text"]}, r"examples\[0\] must be an object with 'query' and 'response'"),
        ({"examples": [{"query": "q", "response": " "}]}, r"examples\[0\].response must be a non"),
        ({"examples": [{"query": "q", "response": "r", "score": "high"}]}, "score must be a num"),
        ({"examples": [{"query": "q", "response": "r", "aspects": "Depth"}]}, "list of strings"),
        ({"k": -1}, "'k' must be an integer >= 0, got -1"),
        ({"k": True}, "'k' must be an integer >= 0"),
        ({"settings": []}, "'settings' must be an object"),
    ],
)
def test_bad_artifacts_are_refused_naming_the_problem(change: dict[str, Any], message: str) -> None:
    data = {key: value for key, value in {**VALID, **change}.items() if value is not None}
    with pytest.raises(ArtifactError, match=message):
        load_artifact(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, ARTIFACT_SCHEMA)


def test_file_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found: run `bpo-train drpo"):
        load_artifact(tmp_path / "missing.json")
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(VALID)[:50])
    with pytest.raises(ArtifactError, match=r"cut.json: not valid JSON .* cut off\?"):
        load_artifact(cut)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ArtifactError, match=r"list\.json: expected a JSON object, got list"):
        load_artifact(listed)
    with pytest.raises(ArtifactError):
        write_artifact(tmp_path / "never.json", {**VALID, "format": "x"})
    assert not (tmp_path / "never.json").exists()


def test_the_aligner_builds_the_searched_layout() -> None:
    aligner = DRPOAligner(VALID, k=1)
    messages = aligner.messages("Why does rain fall?")
    assert messages == alignment_messages(
        VALID["system_prompt"], [("What is rain?", "Water from clouds.")], "Why does rain fall?"
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    chosen = aligner.select("How to bake sourdough bread?")
    assert chosen.indices == (1,) and chosen.similarities[0] > 0
    assert chosen.to_dict()["example_queries"] == ["Bake bread?"]
    assert DRPOAligner(VALID, k=0).messages("Hi") == [
        {"role": "system", "content": VALID["system_prompt"]},
        {"role": "user", "content": "Hi"},
    ]
    no_system = DRPOAligner(VALID, use_system_prompt=False).messages("Hi")
    assert [m["role"] for m in no_system] == ["user", "assistant", "user", "assistant", "user"]
    assert DRPOAligner(VALID).k == 2  # the artifact's k by default
    empty = AlignmentArtifact.from_dict({**VALID, "system_prompt": ""})
    assert DRPOAligner(empty, k=0).messages("Hi") == [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        DRPOAligner(VALID, k=-2)
    with pytest.raises(TypeError, match="the query must be a str, got list"):
        aligner.select(["Hi"])  # type: ignore[arg-type]


def test_importing_drpo_is_light() -> None:
    code = (
        "import sys, bpo_integrations.drpo; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert not loaded & {"torch", "transformers", "langchain_core", "llama_index", "numpy"}
