"""Middleware overhead: ``prompt | bpo | llm`` with an instant optimizer vs an identity step.

The optimizer is a :class:`CallableBackend` whose function answers at once with a changed prompt
(``prompt + " Answer step by step."``), with the cache off, so that every call goes through the
whole optimizer (validation, the event loop, the latency budget, post-processing, guards) and the
BPO step really rebuilds its input with the rewritten message. The identity step passes its input
on unchanged. Overhead is a chain's time minus the time of ``prompt | llm`` alone. The chains are
timed in turns, so that a machine whose load changes during the run affects them alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks._common import Figure, Section, fmt_s

TARGET_RATIO = 1.5
TARGET_MS = 0.5
QUESTION = {"question": "How do I sort a list of tuples by the second item in Python?"}
SUFFIX = " Answer step by step."
BASE = "prompt | llm"
IDENTITY = "prompt | RunnableLambda(identity) | llm"
BPO_SYNC = "prompt | bpo | llm (instant sync function)"
BPO_ASYNC = "prompt | bpo | llm (instant async function)"
SHELL = "`BPORunnable(enabled=False).invoke` (the Runnable shell alone)"
STEP = "`BPORunnable.invoke` (async function)"
CORE = "`BPOOptimizer.optimize` (async function)"
INPUT = "reading the `ChatPromptValue` and rebuilding it with the rewrite"


def rewrite(prompt: str) -> str:
    """The instant optimizer: a changed prompt, so that the step has a rewrite to put back."""
    return prompt + SUFFIX


async def arewrite(prompt: str) -> str:
    return prompt + SUFFIX


def build_chains() -> dict[str, Any]:
    from langchain_core.language_models import FakeListChatModel
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda

    from bpo_integrations import BPOOptimizer
    from bpo_integrations.backends import CallableBackend
    from bpo_integrations.langchain import BPORunnable

    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a helpful assistant."), ("human", "{question}")]
    )
    llm = FakeListChatModel(responses=["An answer."])

    def bpo(fn: Any) -> BPORunnable:
        step = BPORunnable(optimizer=BPOOptimizer(CallableBackend(fn), cache_size=0))
        rewritten = (prompt | step).invoke(QUESTION).messages[-1].content
        assert rewritten == QUESTION["question"] + SUFFIX, rewritten  # the rewrite goes on
        return step

    return {
        BASE: prompt | llm,
        IDENTITY: prompt | RunnableLambda(lambda x: x) | llm,
        BPO_SYNC: prompt | bpo(rewrite) | llm,
        BPO_ASYNC: prompt | bpo(arewrite) | llm,
    }


def time_chains(chains: dict[str, Any], *, calls: int, repeats: int) -> dict[str, float]:
    """Median seconds per ``invoke`` of each chain; the chains take turns in every repeat."""
    samples: dict[str, list[float]] = {name: [] for name in chains}
    for name, chain in chains.items():  # warm up, and check that they all answer alike
        for _ in range(max(10, calls // 10)):
            assert chain.invoke(QUESTION).content == "An answer.", name
    for _ in range(repeats):
        for name, chain in chains.items():
            started = time.perf_counter()
            for _ in range(calls):
                chain.invoke(QUESTION)
            samples[name].append((time.perf_counter() - started) / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


def parts(*, calls: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of the pieces of the BPO step, called on their own."""
    import asyncio

    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.prompt_values import ChatPromptValue

    from bpo_integrations import BPOOptimizer
    from bpo_integrations.backends import CallableBackend
    from bpo_integrations.guards import Guards
    from bpo_integrations.langchain import BPORunnable

    question = QUESTION["question"]
    value = ChatPromptValue(messages=[SystemMessage("You are helpful."), HumanMessage(question)])
    sync_opt = BPOOptimizer(CallableBackend(rewrite), cache_size=0)
    async_opt = BPOOptimizer(CallableBackend(arewrite), cache_size=0)
    shell = BPORunnable(optimizer=async_opt, enabled=False)
    step = BPORunnable(optimizer=async_opt)
    guards = Guards()
    result = async_opt.optimize(question)
    loop = asyncio.new_event_loop()

    def read_and_rebuild() -> None:
        step._plan(value).rebuild([result.optimized])

    pieces = {
        SHELL: lambda: shell.invoke(value),
        STEP: lambda: step.invoke(value),
        CORE: lambda: async_opt.optimize(question),
        "`BPOOptimizer.optimize` (sync function, called inline)": lambda: sync_opt.optimize(
            question
        ),
        "`BPOOptimizer.aoptimize` on the caller's event loop (async function)": lambda: (
            loop.run_until_complete(async_opt.aoptimize(question))
        ),
        "the same (sync function: one hop to a worker thread, which keeps the loop free)": lambda: (
            loop.run_until_complete(sync_opt.aoptimize(question))
        ),
        INPUT: read_and_rebuild,
        "`Guards.check` (a rewrite that contains the original)": lambda: guards.check(
            question, result.optimized
        ),
        "`Guards.check` (a rewrite that does not: every protected span is looked for)": lambda: (
            guards.check(question, "How can I sort tuples in Python by their second item?")
        ),
        "`OptimizationResult.to_dict` (the tracing record)": result.to_dict,
    }
    samples: dict[str, list[float]] = {name: [] for name in pieces}
    try:
        for _ in range(repeats):
            for name, fn in pieces.items():
                for _ in range(10):
                    fn()
                started = time.perf_counter()
                for _ in range(calls):
                    fn()
                samples[name].append((time.perf_counter() - started) / calls)
    finally:
        loop.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def run(*, calls: int = 300, repeats: int = 7) -> Section:
    times = time_chains(build_chains(), calls=calls, repeats=repeats)
    base = times[BASE]
    overhead = {name: t - base for name, t in times.items()}
    identity = overhead[IDENTITY]
    section = Section(
        title="Middleware overhead",
        setup=(
            f"`invoke` of each chain, {calls} calls per run, median of {repeats} runs (the "
            "chains take turns). The optimizer is `BPOOptimizer(CallableBackend(fn), "
            "cache_size=0)` with an instant `fn` that returns a changed prompt "
            f"(`prompt + {SUFFIX!r}`), so the step rebuilds its input; the identity step returns "
            "its input. The model is LangChain's `FakeListChatModel`. Overhead = chain time − "
            "`prompt | llm` time."
        ),
        header=("Chain", "Time per call", "Overhead", "Overhead / identity step"),
    )
    for name, t in times.items():
        extra = overhead[name]
        section.rows.append(
            (
                f"`{name}`",
                fmt_s(t),
                "—" if name == BASE else fmt_s(extra),
                "—" if name == BASE or identity <= 0 else f"{extra / identity:.2f}x",
            )
        )
    pieces = parts(calls=calls, repeats=repeats)
    rest = pieces[STEP] - pieces[SHELL] - pieces[CORE]
    section.notes.append(
        "Where the time goes (each piece called on its own, median per call): "
        f"`BPORunnable.invoke` {fmt_s(pieces[STEP])} = the Runnable shell {fmt_s(pieces[SHELL])} "
        f"+ the optimizer {fmt_s(pieces[CORE])} + {fmt_s(rest)} for the rest: reading the "
        f"input and rebuilding it ({fmt_s(pieces[INPUT])} on its own), and the pieces running "
        "one after the other (each piece below is timed alone in a tight loop, which flatters "
        "it). No `bpo_optimize` child run or `bpo_optimization` event here: no handler listens."
    )
    section.notes += [f"{name}: {fmt_s(t)}" for name, t in pieces.items()]
    for label, name in (("sync", BPO_SYNC), ("async", BPO_ASYNC)):
        ratio = overhead[name] / identity if identity > 0 else float("inf")
        section.figures += [
            Figure(
                f"BPO step overhead / identity step overhead ({label} function)",
                ratio,
                "x",
                f"≤ {TARGET_RATIO}x",
                ratio <= TARGET_RATIO,
            ),
            Figure(
                f"BPO step overhead per call ({label} function)",
                overhead[name] * 1e3,
                "ms",
                f"< {TARGET_MS} ms",
                overhead[name] * 1e3 < TARGET_MS,
            ),
        ]
    return section
