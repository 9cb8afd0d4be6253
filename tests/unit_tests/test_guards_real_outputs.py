"""The guards on real rewrites: the shipped default optimizer's, and ChatGPT's in the BPO data.

``tests/fixtures/default_optimizer_outputs.jsonl`` holds rewrites that the default optimizer
(SmolLM2-135M-Instruct + the shipped adapter, its recommended decoding) wrote for BPO prompts,
saved by ``python -m bpo_trainer.guard_report generate``: each line names its prompt by set and
index and holds our output only. The prompts themselves are read from ``$BPO_SHARED_DIR``. The
verdicts below were judged by reading each output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bpo_integrations.guards import NO_GUARDS, GuardFailure, Guards
from bpo_integrations.postprocess import clean_completion

pytestmark = pytest.mark.shared_data

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "default_optimizer_outputs.jsonl"
FILES = {
    "val": "val.json",
    "dolly": "dolly_eval.json",
    "self_instruct": "self_instruct_eval.json",
    "vicuna": "vicuna_eval.jsonl",
}

# (set, index) -> the reason Guards() must give for our rewrite of that prompt, None: accepted.
VERDICTS: dict[tuple[str, int], str | None] = {
    # invented samples or titles: the prompt's material is passed on after the rewrite as it is
    ("val", 5): "invented_content",  # two made-up "text samples" about a John Smith
    ("val", 25): "invented_content",  # Sentence: "I am feeling happy."
    ("val", 34): "invented_content",  # a made-up sentence to encode
    ("val", 55): "invented_content",  # two made-up sentences to compare
    ("val", 175): "invented_content",  # "The Legend of Zelda: A Link to the Past"
    # an answer instead of a rewrite
    ("val", 273): "answered_instead",  # "hello who are you" -> "Hello, I'm glad you're ..."
    # the prompt said twice: the copy is better
    ("val", 8): "repeated_text",
    ("val", 14): "repeated_text",
    ("val", 16): "repeated_text",
    ("val", 24): "repeated_text",
    ("val", 62): "repeated_text",
    ("val", 188): "repeated_text",
    # dropped the list the question is about (the number of "3 planks" goes first)
    ("val", 150): "lost_protected_content",
    # good rewrites: specific, same request, nothing made up
    ("val", 0): None,
    ("val", 19): None,
    ("val", 26): None,
    ("val", 46): None,
    ("val", 64): None,
    ("val", 98): None,
    ("val", 127): None,  # "illegally download" made legal: the BPO data does the same
    ("val", 184): None,
    ("val", 191): None,
    ("val", 201): None,
    ("val", 214): None,
    ("val", 234): None,
    ("val", 254): None,  # "Hello, World!" is in the prompt ("hello world program")
    ("val", 261): None,
    ("val", 271): None,
    ("val", 281): None,
    ("val", 290): None,
    ("val", 293): None,
    ("val", 297): None,
}


# The dev split wrapped in SmolLM2's chat template (LocalBackend(template="chat")): the model
# mostly answers. Judged by reading each output: answers, and rewrites.
CHAT_ANSWERS = [
    51,
    61,
    98,
    127,
    166,
    184,
    191,
    193,
    201,
    234,
    235,
    253,
    271,
    284,
    290,
    293,
    297,
]
CHAT_REWRITES = [0, 19, 26, 46, 64, 92, 214, 254, 261, 281]
# Not listed: 296 (half rewrite, half reply), 77 (the request said again around three "random"
# addresses) and 273 ("Hello! I'm here to assist you ... Please provide ..."): replies that the
# guards let through.


def _prompt(row: dict[str, Any]) -> tuple[str, str]:
    context = (row.get("context") or "").strip()
    if "final_input" in row and not context:
        return row["final_input"].strip(), ""
    return (row.get("text") or row.get("instruction") or "").strip(), context


@pytest.fixture(scope="module")
def prompts(shared_dir: Path) -> dict[tuple[str, int], tuple[str, str]]:
    """Every prompt of the BPO files by (set, index): (instruction, context)."""
    out = {}
    for name, file in FILES.items():
        path = shared_dir / "data" / "bpo" / file
        if not path.is_file():
            pytest.skip(f"{path} not found")
        text = path.read_text(encoding="utf-8")
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if file.endswith(".jsonl")
            else json.loads(text)
        )
        out.update({(name, i): _prompt(row) for i, row in enumerate(rows)})
    return out


@pytest.fixture(scope="module")
def outputs() -> dict[tuple[str, str, int], dict[str, Any]]:
    """The saved rewrites by (template, set, index)."""
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    return {(r["template"], r["set"], r["index"]): r for r in rows}


def check(guards: Guards, prompt: tuple[str, str], output: dict[str, Any]) -> GuardFailure | None:
    instruction, context = prompt
    return guards.check(
        instruction,
        output["rewrite"],
        finish_reason=output["finish_reason"],
        context=context or None,
    )


@pytest.mark.parametrize(("key", "verdict"), list(VERDICTS.items()), ids=str)
def test_each_judged_output_gets_its_verdict(
    key: tuple[str, int],
    verdict: str | None,
    prompts: dict[tuple[str, int], tuple[str, str]],
    outputs: dict[tuple[str, str, int], dict[str, Any]],
) -> None:
    output = outputs[("bpo", *key)]
    reason = check(Guards(), prompts[key], output)
    if verdict is None:
        assert reason is None, output["rewrite"]
    else:
        assert reason is not None and reason.reason == verdict, (reason, output)
    assert check(NO_GUARDS, prompts[key], output) is None


NEW_GUARDS = {
    "answered_instead": {"reject_answers": True},
    "invented_content": {"reject_invented": True},
    "changed_intent": {"min_kept_content": Guards().min_kept_content},
    "repeated_text": {"reject_repeats": True},
}


@pytest.mark.parametrize("guard", list(NEW_GUARDS))
def test_a_new_guard_rejects_few_of_the_chatgpt_rewrites(
    guard: str, bpo_val_records: list[dict[str, Any]]
) -> None:
    """ChatGPT's optimized prompts in the BPO data are good rewrites: at most 1 in 100 rejected."""
    from dataclasses import replace

    guards = replace(NO_GUARDS, **NEW_GUARDS[guard])
    rejected = []
    for index, record in enumerate(bpo_val_records):
        context = (record.get("context") or "").strip()
        instruction = record["instruction"].strip() if context else record["final_input"].strip()
        reason = guards.check(
            instruction, clean_completion(record["optimized_prompt"]), context=context or None
        )
        if reason is not None:
            assert reason.reason == guard
            rejected.append((index, reason))
    assert len(rejected) <= 3, rejected


def test_the_new_guards_catch_what_the_old_ones_let_through(
    prompts: dict[tuple[str, int], tuple[str, str]],
    outputs: dict[tuple[str, str, int], dict[str, Any]],
) -> None:
    """Of our rewrites of ``val.json``, the new guards reject some the old ones accepted."""
    old = Guards(
        reject_answers=False, reject_invented=False, min_kept_content=0, reject_repeats=False
    )
    caught = [
        key
        for key, output in outputs.items()
        if key[0] == "bpo"
        and key[1] == "val"
        and check(old, prompts[key[1:]], output) is None
        and check(Guards(), prompts[key[1:]], output) is not None
    ]
    judged_bad = {
        key for key, verdict in VERDICTS.items() if verdict and verdict != "lost_protected_content"
    }
    assert judged_bad <= {key[1:] for key in caught}


def test_answers_in_the_chat_template_are_rejected_and_its_rewrites_kept(
    prompts: dict[tuple[str, int], tuple[str, str]],
    outputs: dict[tuple[str, str, int], dict[str, Any]],
) -> None:
    old = Guards(
        reject_answers=False, reject_invented=False, min_kept_content=0, reject_repeats=False
    )
    caught_by_old, caught = [], []
    for index in CHAT_ANSWERS:
        output = outputs[("chat", "val", index)]
        reason = check(Guards(), prompts[("val", index)], output)
        assert reason is not None, output["rewrite"]
        caught.append(index)
        if check(old, prompts[("val", index)], output) is not None:
            caught_by_old.append(index)
        elif output["finish_reason"] != "length":
            assert reason.reason in ("answered_instead", "repeated_text"), reason
    assert len(caught_by_old) < len(caught) / 2  # most answers end on their own: the old guards
    # let them through
    for index in CHAT_REWRITES:
        output = outputs[("chat", "val", index)]
        assert check(Guards(), prompts[("val", index)], output) is None, output["rewrite"]


def test_the_keep_rule_raises_both_scores_on_the_records_it_was_tuned_on(
    prompts: dict[tuple[str, int], tuple[str, str]],
    outputs: dict[tuple[str, str, int], dict[str, Any]],
    bpo_val_records: list[dict[str, Any]],
) -> None:
    """On our rewrites of the val.json records outside the dev split (the model's training data,
    where the threshold was chosen), keeping the prompt where the rewrite is hardly longer than
    it scores higher chrF and BLEU against the BPO references than Guards() alone."""
    sacrebleu = pytest.importorskip("sacrebleu")
    from bpo_integrations.guards import DEFAULT_MODEL_GUARDS
    from bpo_integrations.models import default_adapter_path
    from bpo_integrations.template import join_context

    record = json.loads((default_adapter_path() / "bpo_training.json").read_text("utf-8"))
    dev = set(record["dev_indices"])
    keys = sorted(k[1:] for k in outputs if k[:2] == ("bpo", "val") and k[2] not in dev)
    references = [[bpo_val_records[i]["final_output"].strip() for _, i in keys]]

    def sent_on(guards: Guards) -> list[str]:
        texts = []
        for key in keys:
            instruction, context = prompts[key]
            rewrite = outputs[("bpo", *key)]["rewrite"]
            kept = check(guards, prompts[key], outputs[("bpo", *key)]) is not None
            texts.append(join_context(instruction if kept else rewrite, context or None))
        return texts

    scores = {}
    for name, guards in (("plain", Guards()), ("keep rule", DEFAULT_MODEL_GUARDS)):
        texts = sent_on(guards)
        scores[name] = (
            sacrebleu.corpus_chrf(texts, references).score,
            sacrebleu.corpus_bleu(texts, references).score,
        )
    assert scores["keep rule"][0] > scores["plain"][0]
    assert scores["keep rule"][1] > scores["plain"][1] + 0.5
    # the judged failures keep their own reason: the keep rule speaks last
    for key, verdict in VERDICTS.items():
        reason = check(DEFAULT_MODEL_GUARDS, prompts[key], outputs[("bpo", *key)])
        if verdict is not None:
            assert reason is not None and reason.reason == verdict
