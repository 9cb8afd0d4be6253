"""The prompts of the DRPO search (their answers are read by :mod:`bpo_trainer.drpo.parsing`).

Dynamic rewarding: for each query the judge first picks the aspects that matter for it from a
catalogue (helpfulness, factuality, safety, ...; it may propose others), then scores a response
1 to 5 on each picked aspect with a rationale. The optimizer LLM revises an example's response
from that feedback (step 1) or proposes a better system prompt from it (step 2).

The structure follows the reference implementation (``maitrix-org/llm-reasoners``
``examples/DRPO/prompt.py`` and ``icl_opti_prompts.py``: aspect selection with a query analysis,
per-aspect JSON scores, revision prompts asking for ``analysis``/``thought`` and the new text);
the wording is condensed. The ICL step's judge acts as a strict critic and picks 3 to 6 aspects,
the system prompt step's judge is impartial and picks 2 to 5, as in the reference.

"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

Message = dict[str, str]

ASPECTS: dict[str, str] = {
    "Helpfulness": "How well the response addresses the query with a relevant, practical "
    "answer. 5: it fully helps the user; 1: little or no help.",
    "Clarity": "How well structured and coherent the response is. 5: clear and logically "
    "organised; 1: disjointed or confusing.",
    "Factuality": "Whether the information is accurate and truthful, uncertainty acknowledged. "
    "5: entirely correct; 1: significant factual errors.",
    "Depth": "The level of detail and thoroughness. 5: explores the topic in depth; 1: barely "
    "scratches the surface.",
    "Engagement": "How natural and engaging the response reads in conversation. 5: engaging "
    "and human-like; 1: robotic or dull.",
    "Conciseness": "Whether information is conveyed succinctly without losing substance. 5: to "
    "the point; 1: verbose or unfocused.",
    "Safety": "Adherence to ethical guidelines, avoiding harmful or inappropriate content. 5: "
    "safe and respectful; 1: harmful or inappropriate.",
    "Compliance": "How closely the response follows the instructions in the query (unless they "
    "are unethical). 5: meets every expectation; 1: ignores the instructions.",
    "Limitations": "Whether the response acknowledges the assistant's limits (no live data, no "
    "web search, no physical actions) where relevant. 5: self-aware; 1: misleading.",
    "Critical-Thinking": "Whether the response questions the query's assumptions instead of "
    "taking them at face value. 5: weighs perspectives and flags errors; 1: uncritical.",
    "Creativity": "Originality of ideas and perspectives. 5: fresh and inventive; 1: generic.",
    "Interactivity": "Use of questions, prompts or actionable suggestions that involve the user. "
    "5: highly interactive; 1: static and one-sided.",
    "Empathy": "Recognising and responding to the user's emotional state. 5: supportive and "
    "understanding; 1: cold or indifferent.",
    "Sensitivity": "Cultural awareness, avoiding stereotypes and generalisations. 5: respectful "
    "of diverse perspectives; 1: perpetuates biases.",
}
"""The aspect catalogue the judge chooses from: name -> what a 1 and a 5 mean."""

DEFAULT_ASPECTS = ("Helpfulness", "Clarity", "Factuality", "Depth", "Engagement")
"""The aspects used when the judge's selection cannot be parsed (just-eval's five)."""


SELECT_ASPECTS = """\
{preamble}Select the aspects that matter most for a high-quality response to the query below. \
Choose at least {low} and at most {high} aspects from the list, or name a new aspect if the query \
needs one.

## Aspects
{catalogue}

## Query
{query}

## Aspect Selection
First analyse the query: its main topic, the user's intent, any ambiguity or missing or wrong \
information, the response format that would serve the user best, and what makes a good answer \
hard. Then select the aspects and explain why.

Answer with JSON only, in this format:
```
{{
    "query_analysis": {{
        "main_topic": "...",
        "user_intent": "...",
        "ambiguities": "...",
        "response_format": "...",
        "challenges": "..."
    }},
    "aspects_selection": {{
        "reasoning": "[why these aspects]",
        "selected_aspects": ["Aspect1", "Aspect2"]
    }}
}}
```"""

SCORE_RESPONSE = """\
{preamble}Rate the quality of the output to the query on each selected aspect.

## Query
{query}

## Output
{output}

## Aspects
{aspects}

These aspects were selected because: {reason}

## Format
Score the output from 1 to 5 on each aspect individually (1: strongly disagree that the output \
is good on the aspect, 2: disagree, 3: neutral, 4: agree, 5: strongly agree) and give a short \
rationale. Answer with JSON only, filling in the placeholders:
```
{template}
```"""

_JUDGE_PREAMBLE = "Please act as an impartial judge of an AI assistant's responses. "
_CRITIC_PREAMBLE = (
    "You are a ruthless critic of an AI assistant's response: find every flaw, however small, "
    "deduct points for it, and always say why you deducted and how the response could earn the "
    "points back. Poor structure deserves harsh criticism; extra length is fine when it adds "
    "useful information. "
)

REVISE_RESPONSE = """\
You write the ideal response to a query, one that satisfies a ruthless critic.

## Query
{query}

## Current response
{response}

## The critic's feedback
{feedback}

Write a new response that addresses every point of the feedback:
- Answer as the assistant itself; never mention how you were built or trained.
- Structure it with at most 6 bullet or numbered points, introduced by a short overview and \
followed by a brief conclusion, without labelling those sections.
- Add depth: explain the reasoning, give details an expert would value and pointers for further \
reading, but state only what you are sure of; say so when you are not.
- Decline clearly and explain why when the query has malicious intent, and offer a safe \
alternative.
- Keep it engaging and varied in expression; trim the overview, not the substance, when it is \
too long.

Answer with JSON only, in this format:
```
{{
    "analysis": "[the scores and deductions, and what to improve]",
    "thought": "[how the new response improves on them]",
    "new_response": "[the new response]"
}}
```"""

PROPOSE_SYSTEM_PROMPT = """\
I am designing a system prompt that makes a language model answer user queries well on many \
aspects at once.

## Current system prompt
{current}

## A query
{query}

## The model's output with the current system prompt
{output}

## Evaluation of the output
{evaluation}

## Earlier system prompts, each improved from the one before
{history}

Design a new system prompt that is better than the current one:
1. It must be general, suited to any query, not specific to this one; balance the quality across \
all aspects (5 is best, 1 worst).
2. Begin with general instructions about being a helpful, honest and ethical assistant.
3. Then bullet points: the model's limitations (no internet or real-time data, no physical \
actions, declining malicious requests; better to decline than to answer off the point), tips \
for engaging, human-sounding answers, and specific lessons from the evaluation above.
4. Add at most 2 bullet points at a time and keep at most 8 in total: merge or rephrase instead \
of deleting points that matter for other queries.

Answer with JSON only, in this format:
```
{{
    "analysis": "[what the scores show about the current system prompt]",
    "thought": "[how to improve it]",
    "new_system_prompt": "[the new system prompt]"
}}
```"""


# -- building the messages -----------------------------------------------------------------


def select_aspects_messages(query: str, *, critic: bool) -> list[Message]:
    """Ask the judge which aspects matter for ``query`` (3-6 as a critic, else 2-5)."""
    low, high = (3, 6) if critic else (2, 5)
    catalogue = "\n".join(f"- {name}: {text}" for name, text in ASPECTS.items())
    content = _fill(
        SELECT_ASPECTS,
        preamble=_CRITIC_PREAMBLE if critic else _JUDGE_PREAMBLE,
        low=str(low),
        high=str(high),
        catalogue=catalogue,
        query=query,
    )
    return [{"role": "user", "content": content}]


def score_messages(
    query: str, output: str, aspects: Sequence[str], reason: str, *, critic: bool
) -> list[Message]:
    """Ask the judge to score ``output`` 1-5 on each of ``aspects``."""
    listed = "\n".join(
        f"- {name}: {ASPECTS.get(name, 'as the selection reasoning says.')}" for name in aspects
    )
    template = json.dumps(
        {
            name: {
                "rationale": f"[your thoughts on the {name.lower()} of the output]",
                "score": "[1-5]",
            }
            for name in aspects
        },
        indent=4,
    )
    content = _fill(
        SCORE_RESPONSE,
        preamble=_CRITIC_PREAMBLE if critic else _JUDGE_PREAMBLE,
        query=query,
        output=output,
        aspects=listed,
        reason=reason or "they matter for this query.",
        template=template,
    )
    return [{"role": "user", "content": content}]


def revise_response_messages(
    query: str, response: str, feedback: Mapping[str, Any]
) -> list[Message]:
    """Ask the optimizer to rewrite an example's ``response`` from the judge's ``feedback``."""
    content = _fill(
        REVISE_RESPONSE,
        query=query,
        response=response,
        feedback=json.dumps(feedback, indent=4, ensure_ascii=False),
    )
    return [{"role": "user", "content": content}]


def propose_system_prompt_messages(
    current: str,
    query: str,
    output: str,
    evaluation: Mapping[str, Any],
    history: Sequence[str],
) -> list[Message]:
    """Ask the optimizer for a better system prompt; ``history`` ends with ``current``."""
    earlier = [f"--- Version {i} ---\n{p}" for i, p in enumerate(history[:-1], start=1)]
    text = "\n".join([*earlier, f"--- Current version ---\n{current}"])
    content = _fill(
        PROPOSE_SYSTEM_PROMPT,
        current=current,
        query=query,
        output=output,
        evaluation=json.dumps(evaluation, indent=4, ensure_ascii=False),
        history=text,
    )
    return [{"role": "user", "content": content}]


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _fill(_template: str, **values: str) -> str:
    """Substitute ``{name}`` in one pass, so braces inside queries and answers stay as they are;
    ``{{``/``}}`` in the template are literal braces."""
    escaped = _template.replace("{{", "\x00").replace("}}", "\x01")
    filled = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), escaped)
    return filled.replace("\x00", "{").replace("\x01", "}")
