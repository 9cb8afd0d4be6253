"""The paper's four feedback sources, read through ``datasets`` and mapped to single-turn
preference pairs (:class:`~bpo_trainer.records.FeedbackRecord`); see :mod:`bpo_trainer.collect`
for each source's format and the stage that filters and samples them."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bpo_trainer.errors import TrainerConfigError
from bpo_trainer.records import FeedbackRecord

OASST1 = "oasst1"
HH_RLHF = "hh-rlhf"
CHATBOT_ARENA = "Chatbot_Arena_Conversation"
ALPACA_GPT4 = "alpaca-gpt4"
SOURCES = (OASST1, HH_RLHF, CHATBOT_ARENA, ALPACA_GPT4)
"""The ``source`` values of the released BPO data, in the paper's order."""

DEFAULT_PATHS = {
    OASST1: "OpenAssistant/oasst1",
    HH_RLHF: "Anthropic/hh-rlhf",
    CHATBOT_ARENA: "lmsys/chatbot_arena_conversations",
    ALPACA_GPT4: "hf://datasets/wangrongsheng/comparison_gpt4_data/comparison_gpt4_data_en.json",
}
"""Where each source is read from by default (the Alpaca-GPT4 comparison data has no official hub
copy; this is LLaMA-Factory's English conversion of GPT-4-LLM's ``comparison_data_v2.json``)."""

_ALIASES = {
    "oasst1": OASST1,
    "oasst": OASST1,
    "openassistant": OASST1,
    "hhrlhf": HH_RLHF,
    "hh": HH_RLHF,
    "chatbotarenaconversation": CHATBOT_ARENA,
    "chatbotarenaconversations": CHATBOT_ARENA,
    "chatbotarena": CHATBOT_ARENA,
    "arena": CHATBOT_ARENA,
    "alpacagpt4": ALPACA_GPT4,
    "alpaca": ALPACA_GPT4,
}
_LANGUAGE_NAMES = {"en": "english", "zh": "chinese", "es": "spanish", "de": "german"}
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def canonical_source(name: str) -> str:
    """The canonical source name for ``name`` (``"arena"``, ``"hh_rlhf"``, ``"Alpaca-GPT4"``...)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    if key in _ALIASES:
        return _ALIASES[key]
    raise TrainerConfigError(f"unknown source {name!r}: choose from {', '.join(SOURCES)}")


# -- loading --------------------------------------------------------------------------------------


def load_rows(
    path: str,
    *,
    source: str,
    split: str = "train",
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> Any:
    """``path`` as a ``datasets.Dataset``: a local file or folder, a file URL/``hf://`` path, or a
    hub dataset id. Raises :class:`TrainerConfigError` with the fix when it cannot be read."""
    import datasets

    flag = f"--{source_flag(source)}_path"
    local = Path(path)
    suffix = next((s for s in _FILE_BUILDERS if path.endswith(s)), None)
    try:
        if local.is_file():
            if suffix is None:
                raise TrainerConfigError(
                    f"{path}: unsupported file type; {flag} takes .json, .jsonl or .parquet"
                )
            return datasets.load_dataset(
                _FILE_BUILDERS[suffix], data_files=str(local), split="train", cache_dir=cache_dir
            )
        if local.is_dir():
            return datasets.load_dataset(str(local), split=split, cache_dir=cache_dir)
        if "://" in path and suffix is not None:
            return datasets.load_dataset(
                _FILE_BUILDERS[suffix], data_files=path, split="train", cache_dir=cache_dir
            )
        if _HUB_ID.match(path) and suffix is None:
            return datasets.load_dataset(path, split=split, data_dir=data_dir, cache_dir=cache_dir)
    except TrainerConfigError:
        raise
    except (ConnectionError, OSError, ValueError) as error:
        # datasets raises ConnectionError offline, DatasetNotFoundError (a FileNotFoundError)
        # for unknown or gated repos, and ValueError for unreadable files.
        raise TrainerConfigError(
            f"could not load {source} from {path!r} ({type(error).__name__}: "
            f"{str(error).rstrip('.')}). Fix: "
            f"download it once with network access (HF_HUB_OFFLINE unset; `hf auth login` for "
            f"gated sets such as Chatbot Arena), or pass a local .json/.jsonl/.parquet file in "
            f"the source's own format with {flag} PATH"
        ) from error
    raise TrainerConfigError(
        f"{flag} {path!r} is neither an existing file nor a hub dataset id (owner/name)"
    )


def source_flag(source: str) -> str:
    """The config-field prefix of ``source`` (``hh_rlhf`` for ``hh-rlhf``)."""
    return {
        OASST1: "oasst1",
        HH_RLHF: "hh_rlhf",
        CHATBOT_ARENA: "chatbot_arena",
        ALPACA_GPT4: "alpaca_gpt4",
    }[source]


def _require_columns(
    columns: Iterable[str], needed: Iterable[str], *, source: str, what: str
) -> None:
    missing = [name for name in needed if name not in set(columns)]
    if missing:
        raise TrainerConfigError(
            f"{source} data lacks the column(s) {', '.join(missing)}: expected {what}. Pass the "
            f"source's original file with --{source_flag(source)}_path"
        )


# -- mapping: each mapper yields a FeedbackRecord or the reason a row was dropped ----------------

Outcome = FeedbackRecord | str


def _language_ok(value: Any, language: str | None) -> bool:
    if not language:
        return True
    wanted = {language.lower(), _LANGUAGE_NAMES.get(language.lower(), language.lower())}
    return isinstance(value, str) and value.lower() in wanted


def map_oasst1(
    rows: Iterable[Mapping[str, Any]], *, language: str | None = "en"
) -> Iterator[Outcome]:
    """oasst1 message-tree rows to pairs: root prompts with two or more ranked assistant replies."""
    messages = list(rows)
    children: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for message in messages:
        if message.get("parent_id"):
            children[message["parent_id"]].append(message)
    for message in messages:
        if message.get("role") != "prompter":
            continue
        if message.get("parent_id"):
            yield "multi_turn"
            continue
        if message.get("deleted"):
            yield "deleted"
            continue
        if not _language_ok(message.get("lang"), language):
            yield "language"
            continue
        replies = [
            reply
            for reply in children.get(message["message_id"], [])
            if reply.get("role") == "assistant"
            and not reply.get("deleted")
            and reply.get("rank") is not None
            and reply["rank"] == reply["rank"]  # NaN: unranked
        ]
        if len(replies) < 2:
            yield "unranked"
            continue
        replies.sort(key=lambda reply: reply["rank"])
        best, worst = replies[0], replies[-1]
        if best["rank"] == worst["rank"]:
            yield "no_preference"
            continue
        yield FeedbackRecord.create(
            source=OASST1, instruction=message["text"], good_res=best["text"], bad_res=worst["text"]
        )


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_transcript(text: str) -> list[tuple[str, str]] | None:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` as ``[("Human", "a"), ("Assistant", "b")]``;
    ``None`` when it does not start with a turn marker."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        return None
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def map_hh_rlhf(rows: Iterable[Mapping[str, Any]]) -> Iterator[Outcome]:
    """hh-rlhf ``chosen``/``rejected`` transcripts with one human turn to pairs."""
    for row in rows:
        chosen = parse_hh_transcript(row["chosen"])
        rejected = parse_hh_transcript(row["rejected"])
        if not chosen or not rejected:
            yield "malformed"
            continue
        if len(chosen) != 2 or len(rejected) != 2:
            yield "multi_turn"
            continue
        roles = [chosen[0][0], chosen[1][0], rejected[0][0], rejected[1][0]]
        if roles != ["Human", "Assistant", "Human", "Assistant"] or chosen[0][1] != rejected[0][1]:
            yield "malformed"
            continue
        yield FeedbackRecord.create(
            source=HH_RLHF, instruction=chosen[0][1], good_res=chosen[1][1], bad_res=rejected[1][1]
        )


def map_chatbot_arena(
    rows: Iterable[Mapping[str, Any]], *, language: str | None = "en"
) -> Iterator[Outcome]:
    """Chatbot Arena battles with one turn and a winner to pairs (the loser is ``bad_res``)."""
    for row in rows:
        conv_a, conv_b = row["conversation_a"], row["conversation_b"]
        if row.get("turn", 1) != 1 or len(conv_a) != 2 or len(conv_b) != 2:
            yield "multi_turn"
            continue
        if row["winner"] not in ("model_a", "model_b"):
            yield "no_preference"
            continue
        if not _language_ok(row.get("language"), language):
            yield "language"
            continue
        if [m["role"] for m in (*conv_a, *conv_b)] != ["user", "assistant"] * 2 or (
            conv_a[0]["content"] != conv_b[0]["content"]
        ):
            yield "malformed"
            continue
        a_wins = row["winner"] == "model_a"
        good, bad = (conv_a, conv_b) if a_wins else (conv_b, conv_a)
        yield FeedbackRecord.create(
            source=CHATBOT_ARENA,
            instruction=conv_a[0]["content"],
            good_res=good[1]["content"],
            bad_res=bad[1]["content"],
            good_model=row.get("model_a" if a_wins else "model_b"),
            bad_model=row.get("model_b" if a_wins else "model_a"),
        )


_ALPACA_PREAMBLE = re.compile(
    r"^Below is an instruction that describes a task(?:, paired with an input that provides "
    r"further context)?\. Write a response that appropriately completes the request\.\n\n"
    r"### Instruction:\n"
)


def split_alpaca_prompt(user_input: str) -> tuple[str, str]:
    """GPT-4-LLM's ``user_input`` (the Alpaca prompt) as ``(instruction, input)``."""
    text = _ALPACA_PREAMBLE.sub("", user_input)
    text = re.sub(r"\n\n### Response:\s*$", "", text)
    instruction, _, context = text.partition("\n\n### Input:\n")
    return instruction, context


def map_alpaca_gpt4(rows: Iterable[Mapping[str, Any]]) -> Iterator[Outcome]:
    """Alpaca-GPT4 comparison rows (any of its three published formats) to pairs with context."""
    for row in rows:
        if "output" in row:
            output = row["output"]
            if not isinstance(output, list) or len(output) != 2:
                yield "malformed"
                continue
            instruction, context, good, bad = row["instruction"], row.get("input") or "", *output
        elif "completion_a" in row:
            instruction, context = split_alpaca_prompt(row["user_input"])
            good, bad = row["completion_a"], row["completion_b"]
        else:
            scored = [
                (float(item["score"]), item["response"])
                for item in row["responses_and_scores"]
                if item.get("response") and item.get("score") is not None
            ]
            if len(scored) < 2:
                yield "empty_response"
                continue
            scored.sort(key=lambda pair: pair[0])
            if scored[0][0] == scored[-1][0]:
                yield "no_preference"
                continue
            instruction, context = split_alpaca_prompt(row["user_input"])
            good, bad = scored[-1][1], scored[0][1]
        yield FeedbackRecord.create(
            source=ALPACA_GPT4,
            instruction=instruction,
            context=context.strip(),
            good_res=good,
            bad_res=bad,
        )


def _alpaca_columns(columns: list[str]) -> None:
    formats = (
        ("instruction", "input", "output"),
        ("user_input", "completion_a", "completion_b"),
        ("user_input", "responses_and_scores"),
    )
    if not any(set(names) <= set(columns) for names in formats):
        raise TrainerConfigError(
            f"alpaca-gpt4 data has columns {sorted(columns)}: expected one of the comparison "
            "formats (instruction, input, output=[better, worse]) / (user_input, completion_a, "
            "completion_b) / (user_input, responses_and_scores). Pass it with --alpaca_gpt4_path"
        )


_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    OASST1: (
        ("message_id", "parent_id", "role", "text", "rank"),
        "oasst1 message rows (message_id, parent_id, role, text, rank, lang)",
    ),
    HH_RLHF: (("chosen", "rejected"), 'hh-rlhf rows ("\\n\\nHuman: ...\\n\\nAssistant: ...")'),
    CHATBOT_ARENA: (
        ("conversation_a", "conversation_b", "winner"),
        "Chatbot Arena battles (conversation_a, conversation_b, winner, turn, language)",
    ),
}


def map_source(source: str, dataset: Any, *, language: str | None) -> Iterator[Outcome]:
    """Check ``dataset``'s columns for ``source`` and map its rows."""
    columns = list(dataset.column_names)
    if source == ALPACA_GPT4:
        _alpaca_columns(columns)
        return map_alpaca_gpt4(dataset)
    needed, what = _COLUMNS[source]
    _require_columns(columns, needed, source=source, what=what)
    if source == OASST1:
        keep = [c for c in (*needed, "lang", "deleted") if c in columns]
        return map_oasst1(dataset.select_columns(keep), language=language)
    if source == HH_RLHF:
        return map_hh_rlhf(dataset.select_columns(list(needed)))
    return map_chatbot_arena(dataset, language=language)
