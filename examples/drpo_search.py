"""Search a DRPO alignment (``bpo-train drpo``), then score answers with and without it
(``bpo-train drpo-eval``), from Python.

Offline by default: three scripted OpenAI-compatible servers on 127.0.0.1 stand in for the base
model, the optimizer and the judge (the judge rewards answers that explain step by step; the
optimizer proposes adding that to the system prompt), so you can watch the whole loop, its
resumable files and its reports in a few seconds. To run it for real, point it at endpoints:

    DRPO_BASE_URL=http://localhost:8000/v1 DRPO_BASE_MODEL=mistral-7b-instruct \\
    DRPO_JUDGE_MODEL=gpt-4o DRPO_OPTIMIZER_MODEL=gpt-4o OPENAI_API_KEY=... \\
    python examples/drpo_search.py

The same runs from the command line: ``bpo-train drpo --queries_file ... --examples_file ...``
and ``bpo-train drpo-eval --artifact runs/drpo/alignment.json --testsets ...``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bpo_trainer.drpo import DRPOConfig, DRPOEvalConfig, run_drpo, run_drpo_eval

from bpo_integrations.testing.servers import ScriptedServer

QUERIES = [
    "Why is the sky blue?",
    "How do vaccines train the immune system?",
    "What makes a good cover letter?",
    "How does compound interest work?",
    "Why do cats purr?",
]
TEST_PROMPTS = ["How do rainbows form?", "What is a healthy breakfast?", "Explain what a VPN does."]
EXAMPLES = [
    {"query": "What causes ocean tides?", "response": "The Moon."},
    {"query": "How do I keep basil alive indoors?", "response": "Water it."},
]


def scripted_base(messages: list[dict[str, Any]]) -> str:
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    style = "Step by step: first ..., then ..., finally ..." if "step by step" in system else "..."
    return f"{style} (answer to: {messages[-1]['content']})"


def scripted_optimizer(prompt: str) -> str:
    if "## Current response\n" in prompt:
        response = prompt.split("## Current response\n", 1)[1].split("\n\n## The critic", 1)[0]
        return json.dumps({"new_response": response + " Here is why, step by step: ..."})
    current = prompt.split("## Current system prompt\n", 1)[1].split("\n\n## A query", 1)[0]
    return json.dumps({"new_system_prompt": current + "\n- Explain your answers step by step."})


def scripted_judge(prompt: str) -> str:
    if "## Aspect Selection" in prompt:
        selected = ["Helpfulness", "Depth", "Clarity"]
        return json.dumps({"aspects_selection": {"reasoning": "-", "selected_aspects": selected}})
    if "## Output:\n" in prompt:  # just-eval's prompt (the evaluation)
        output = prompt.split("## Output:\n", 1)[1]
        score = 5 if "step by step" in output.lower() else 2
        aspects = ("helpfulness", "clarity", "factuality", "depth", "engagement")
        return json.dumps({a: {"reason": "-", "score": str(score)} for a in aspects})
    output = prompt.split("## Output\n", 1)[1].split("\n\n## Aspects", 1)[0]
    score = 5 if "step by step" in output.lower() else 2
    listed = prompt.split("## Aspects\n", 1)[1].split("\n\n", 1)[0]
    names = [line[2:].split(":", 1)[0] for line in listed.splitlines()]
    return json.dumps({name: {"rationale": "more steps", "score": score} for name in names})


@contextlib.contextmanager
def endpoints() -> Iterator[dict[str, str]]:
    """Real endpoints from the environment, else three scripted servers."""
    if os.environ.get("DRPO_BASE_URL"):
        yield {
            "base_url": os.environ["DRPO_BASE_URL"],
            "base_model": os.environ.get("DRPO_BASE_MODEL", "base"),
            "judge_url": os.environ.get("DRPO_JUDGE_URL", ""),
            "judge_model": os.environ.get("DRPO_JUDGE_MODEL", "gpt-4o"),
            "optimizer_url": os.environ.get("DRPO_OPTIMIZER_URL", ""),
            "optimizer_model": os.environ.get("DRPO_OPTIMIZER_MODEL", "gpt-4o"),
        }
        return
    with (
        ScriptedServer(chat_responder=scripted_base) as base,
        ScriptedServer(scripted_optimizer) as optimizer,
        ScriptedServer(scripted_judge) as judge,
    ):
        yield {
            f"{role}_{key}": value
            for role, server in (("base", base), ("optimizer", optimizer), ("judge", judge))
            for key, value in (("url", server.url + "/v1"), ("model", server.model_id))
        }


def main() -> None:
    work = Path(os.environ.get("DRPO_OUTPUT", tempfile.mkdtemp(prefix="drpo-")))
    work.mkdir(parents=True, exist_ok=True)
    queries, examples = work / "queries.jsonl", work / "examples.jsonl"
    queries.write_text("".join(json.dumps({"query": q}) + "\n" for q in QUERIES))
    tests = work / "test_prompts.jsonl"
    tests.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in TEST_PROMPTS))
    examples.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    with endpoints() as models:
        models = {key: value or None for key, value in models.items()}  # type: ignore[misc]
        search = run_drpo(
            DRPOConfig(
                output_dir=str(work / "search"),
                queries_file=str(queries),
                examples_file=str(examples),
                icl_depth=1,
                prompt_depth=2,
                prompt_candidates=1,
                k=1,
                **models,
            )
        )
        print(search, end="\n\n")
        print("system prompt:", search.artifact.system_prompt, sep="\n", end="\n\n")
        evaluation = run_drpo_eval(
            DRPOEvalConfig(
                artifact=str(search.artifact_path),
                output_dir=str(work / "eval"),
                testsets=[str(tests)],
                answer_url=models["base_url"],
                answer_model=models["base_model"] or "base",
                judge_url=models["judge_url"],
                judge_model=models["judge_model"] or "gpt-4o",
            )
        )
        print(evaluation.report_path.read_text())


if __name__ == "__main__":
    main()
