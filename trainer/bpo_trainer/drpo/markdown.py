"""``search_log.md``: a human-readable account of every search step.

For each example: the aspects the judge chose and why, then per depth each revision with its
scores and whether it stayed in the beam. For the system prompt: per step the seed query, every
candidate prompt with the base model's answer, the scores and the path's mean reward. Rewritten
after every step, so it is readable while the search runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_CLIP = 700


def _clip(text: str, limit: int = _CLIP) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + f" … [{len(text)} chars]"


def _quote(text: str, limit: int = _CLIP) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in _clip(text, limit).splitlines())


def _fence(text: str) -> str:
    ticks = "````" if "```" in text else "```"
    return f"{ticks}text\n{text.strip()}\n{ticks}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _scores(state: Mapping[str, Any]) -> str:
    evaluation = state["evaluation"]
    if not evaluation["scores"]:
        extra = f" after {state['attempts']} tries" if state.get("attempts", 1) > 1 else ""
        return f"**malformed judgment**{extra}: {evaluation.get('error') or 'unreadable'}"
    parts = [f"{name} {score:g}" for name, score in evaluation["scores"].items()]
    if evaluation.get("missing"):
        parts.append("missing: " + ", ".join(evaluation["missing"]))
    return ", ".join(parts)


def _title(query: str, limit: int = 80) -> str:
    line = " ".join(query.split())
    return line if len(line) <= limit else line[:limit].rstrip() + "…"


def render_icl(index: int, records: Sequence[Mapping[str, Any]]) -> list[str]:
    root = records[0]
    aspects = root["aspects"]
    lines = [
        f"### Example {index + 1}: {_title(root['query'])}",
        "",
        f"Aspects: {', '.join(aspects['aspects'])}"
        + (f" (default: {aspects['error']})" if aspects.get("error") else ""),
    ]
    if aspects.get("reason"):
        lines.append(f"Why: {_clip(aspects['reason'], 400)}")
    for record in records:
        lines += [
            "",
            f"#### Depth {record['depth']}" + (" (original)" if not record["depth"] else ""),
        ]
        if record.get("malformed_revisions"):
            lines.append(f"- unreadable revisions: {record['malformed_revisions']}")
        if not record["candidates"]:
            lines.append("- no revision could be read: the search of this example stops")
        for number, state in enumerate(record["candidates"]):
            kept = "kept" if number in record["beam"] else "dropped"
            reward = state["evaluation"]["reward"]
            lines += [
                f"- candidate {number + 1} (reward {_num(reward)}, {kept}): {_scores(state)}",
                "",
                _quote(state["response"]),
                "",
            ]
    return lines


def render_prompt_step(record: Mapping[str, Any]) -> list[str]:
    step = record["step"]
    lines = [
        f"### Step {step}" + (" (initial prompt)" if step == 0 else ""),
        "",
        f"Seed query: {_title(record['query'], 200)}",
    ]
    if record.get("malformed_proposals"):
        lines.append(f"Unreadable proposals: {record['malformed_proposals']}")
    lines += [
        "",
        "| # | from | revised | reward | path mean | beam |",
        "|---|---|---|---|---|---|",
    ]
    for number, node in enumerate(record["candidates"]):
        parent = "—" if node["parent"] is None else str(node["parent"] + 1)
        revised = "kept" if node["kept"] else ("initial" if node["parent"] is None else "new")
        beam = "yes" if number in record["beam"] else ""
        lines.append(
            f"| {number + 1} | {parent} | {revised} | {_num(node['evaluation']['reward'])} | "
            f"{_num(node['aggregate'] if node['parent'] is not None else None)} | {beam} |"
        )
    for number, node in enumerate(record["candidates"]):
        lines += [
            "",
            f"#### Candidate {number + 1}: {_scores(node)}",
            "",
            _fence(node["prompt"]),
            "",
            f"Examples shown: {', '.join(str(i + 1) for i in node['examples']) or 'none'}. Answer:",
            "",
            _quote(node["output"]),
        ]
    return lines


def render_search_log(
    *,
    header: Sequence[str],
    icl: Sequence[Sequence[Mapping[str, Any]]],
    prompt: Sequence[Mapping[str, Any]],
    result: Mapping[str, Any] | None = None,
) -> str:
    """The whole log: ``header`` lines, the ICL records per example, the prompt step records,
    and the ``result`` (system prompt, rewards) once the search is done."""
    lines = ["# DRPO search log", "", *header, ""]
    if icl:
        lines += ["## Step 1: in-context examples", ""]
        for index, records in enumerate(icl):
            if records:
                lines += [*render_icl(index, records), ""]
    if prompt:
        lines += ["## Step 2: system prompt", ""]
        for record in prompt:
            lines += [*render_prompt_step(record), ""]
    if result is not None:
        lines += [
            "## Result",
            "",
            f"Mean reward along the best path: {_num(result.get('aggregate'))} (the initial "
            f"prompt scored {_num(result.get('initial_reward'))} on the first seed query)",
            "",
            _fence(result["system_prompt"]),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"
