"""Cache hits: the latency of a hit, and proof that a repeated batch makes no backend call."""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks._common import Figure, Section, fmt_s, load_prompts, per_call

TARGET_MS = 1.0


def run(*, prompts: int = 16, repeats: int = 5, calls: int = 1000) -> Section:
    from langchain_core.language_models import FakeListChatModel
    from langchain_core.prompts import ChatPromptTemplate

    from bpo_integrations import BPOOptimizer, Generation, GenerationSettings
    from bpo_integrations.backends import Backend
    from bpo_integrations.langchain import BPORunnable

    class CountingBackend(Backend):
        """Appends a sentence; counts the calls and prompts it serves."""

        name = "counting"
        max_batch_size = 64

        def __init__(self) -> None:
            self.calls = 0
            self.prompts = 0

        def generate(
            self,
            prompts: Sequence[str],
            settings: GenerationSettings,
            *,
            timeout: float | None = None,
        ) -> list[Generation]:
            self.calls += 1
            self.prompts += len(prompts)
            return [Generation(p + " Explain step by step.", "eos_token") for p in prompts]

    texts = load_prompts(prompts)
    backend = CountingBackend()
    optimizer = BPOOptimizer(backend)
    first = optimizer.optimize_batch(texts)
    assert not any(r.cached or r.fell_back for r in first)
    calls_after_first = backend.calls
    second = optimizer.optimize_batch(texts)
    assert [r.text for r in second] == [r.text for r in first]
    batch_calls = backend.calls - calls_after_first

    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | BPORunnable(optimizer=optimizer)
    chain = chain | FakeListChatModel(responses=["ok"])
    chain.batch([{"q": t} for t in texts])  # LCEL batch: every prompt a hit
    lcel_calls = backend.calls - calls_after_first - batch_calls

    hit = per_call(lambda: optimizer.optimize(texts[0]), calls=calls, repeats=repeats)
    batch_hit = per_call(lambda: optimizer.optimize_batch(texts), calls=100, repeats=repeats)
    cold = BPOOptimizer(CountingBackend(), cache_size=0)
    miss = per_call(lambda: cold.optimize(texts[0]), calls=calls // 4, repeats=repeats)

    section = Section(
        title="Cache",
        setup=(
            f"`BPOOptimizer` (default LRU cache of 1024) over a counting backend; {prompts} "
            f"prompts; median of {repeats} runs."
        ),
        header=("Call", "Time"),
    )
    section.rows = [
        ("`optimize` of a cached prompt (hit)", fmt_s(hit)),
        (f"`optimize_batch` of {prompts} cached prompts", fmt_s(batch_hit)),
        ("`optimize` with the cache off (an instant backend, for scale)", fmt_s(miss)),
        (
            "Backend calls: first batch / second batch / LCEL `batch` of the same prompts",
            f"{calls_after_first} / {batch_calls} / {lcel_calls}",
        ),
    ]
    section.figures = [
        Figure("Cache hit latency", hit * 1e3, "ms", f"< {TARGET_MS:g} ms", hit * 1e3 < TARGET_MS),
        Figure(
            "Backend calls made by a repeated batch (`optimize_batch`, LCEL `batch`)",
            batch_calls + lcel_calls,
            "",
            "0",
            batch_calls + lcel_calls == 0,
        ),
        Figure(
            "Results of the repeated batch marked `cached`",
            sum(r.cached for r in second),
            f"of {prompts}",
            f"{prompts}",
            all(r.cached for r in second),
        ),
    ]
    return section
