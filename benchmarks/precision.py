"""Precision: what each weight format of the local engine costs in quality and buys in speed.

The default optimizer (SmolLM2-135M-Instruct with the shipped adapter, merged) prepared at each
precision ``LocalBackend`` offers (``f16``, ``q8_0``, ``q4_0``), one after the other, each in a
fresh process. Each rewrites the held-out dev split of the default model's training (the
``val.json`` records its ``bpo_training.json`` lists) greedily, and is scored with the trainer's
corpus chrF and BLEU against the ChatGPT-optimized references; copying the prompt is the floor.
Speed: milliseconds per generated token over the whole split, and how many rewrites equal the
``f16`` ones. Quality is what users get: the backend's own decoding, then the guards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks._common import REPO, SHARED_DIR, Figure, Section, run_child

PRECISIONS = ("f16", "q8_0", "q4_0")
TARGET_CHRF_LOSS = 1.0
SYSTEMS = {
    "rewrites as written": "default optimizer (existing guards)",
    "what BPOOptimizer() sends on": "default optimizer + new guards + keep rule (BPOOptimizer()'s)",
}
"""The rows of guard_report's dev table this benchmark shows, by the name it gives them."""

CHILD = r"""
import json, sys
from benchmarks.precision import measure_in_child
print("RESULT " + json.dumps(measure_in_child(json.loads(sys.argv[1]))))
"""


def dev_records(shared_dir: Path) -> list[Any]:
    from bpo_trainer.prompt_sets import dev_indices, load_prompts

    dev = set(dev_indices())
    return [r for r in load_prompts(shared_dir, "val") if r.index in dev]


def measure_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the dev split as the shipped optimizer decodes (the backend's recommended
    settings), timed batched and as one stream."""
    import time

    from bpo_integrations.backends.local import LocalBackend
    from bpo_integrations.postprocess import clean_completion

    records = dev_records(Path(spec["shared_dir"]))
    backend = LocalBackend(precision=spec["precision"]).load()
    try:
        settings = backend.recommended_settings()
        assert settings is not None, "the shipped default model recommends its decoding"
        backend.generate([records[0].instruction], settings)  # warm-up
        started = time.perf_counter()
        generations = backend.generate([r.instruction for r in records], settings)
        elapsed = time.perf_counter() - started
        one = time.perf_counter()
        single = backend.generate([records[0].instruction], settings)[0]
        single_s = time.perf_counter() - one
    finally:
        backend.close()
    return {
        "outputs": [
            {
                "set": r.set,
                "index": r.index,
                "template": "bpo",
                "rewrite": clean_completion(g.text, cut_markers=settings.stop),
                "finish_reason": g.finish_reason,
            }
            for r, g in zip(records, generations, strict=True)
        ],
        "batched_s": elapsed,
        "tokens": sum(g.generated_tokens or 0 for g in generations),
        "ms_per_token_one_stream": 1000 * single_s / max(single.generated_tokens or 1, 1),
    }


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_child(CHILD, spec, paths=(REPO, REPO / "trainer"))
    return result


def run(*, shared_dir: Path | None = None, resamples: int = 1000) -> Section:
    from bpo_trainer.guard_report import Output, dev_quality
    from bpo_trainer.prompt_sets import load_records

    shared = (shared_dir or SHARED_DIR).resolve()
    records = dev_records(shared)
    indices = [r.index for r in records]
    every_record = load_records(shared)
    results = {p: _child({"shared_dir": str(shared), "precision": p}) for p in PRECISIONS}
    quality = {
        p: {
            row.name: row
            for row in dev_quality(
                every_record, [Output(**o) for o in r["outputs"]], indices, resamples=resamples
            )
        }
        for p, r in results.items()
    }
    copy = quality["f16"]["copy the prompt"]
    shipped = {o["index"]: o["rewrite"] for o in results["f16"]["outputs"]}
    rows: list[tuple[str, ...]] = [
        ("copy the prompt", f"{copy.chrf:.1f}", f"{copy.bleu:.1f}", "—", "—", "—", "—", "—")
    ]
    for precision, result in results.items():
        written, sent = (quality[precision][name] for name in SYSTEMS.values())
        same = sum(o["rewrite"] == shipped[o["index"]] for o in result["outputs"])
        rows.append(
            (
                precision,
                f"{written.chrf:.1f}",
                f"{written.bleu:.1f}",
                f"{sent.chrf:.1f} [{sent.chrf_ci[0]:.1f}, {sent.chrf_ci[1]:.1f}]",
                f"{sent.bleu:.1f}",
                f"{result['ms_per_token_one_stream']:.1f}",
                f"{1000 * result['batched_s'] / max(result['tokens'], 1):.1f}",
                f"{same}/{len(records)}",
            )
        )
    sent_name = SYSTEMS["what BPOOptimizer() sends on"]
    figures = [
        Figure(
            f"dev chrF of what BPOOptimizer() sends on, f16 − {precision}",
            quality["f16"][sent_name].chrf - quality[precision][sent_name].chrf,
            "points",
            f"≤ {TARGET_CHRF_LOSS} keeps quality",
            quality["f16"][sent_name].chrf - quality[precision][sent_name].chrf <= TARGET_CHRF_LOSS,
        )
        for precision in PRECISIONS[1:]
    ]
    figures += [
        Figure(
            f"ms/token one stream, {precision} / f16",
            results[precision]["ms_per_token_one_stream"]
            / results["f16"]["ms_per_token_one_stream"],
            "x",
            "report",
            None,
        )
        for precision in PRECISIONS[1:]
    ]
    return Section(
        title="Precision: quality and speed of each weight format",
        setup=(
            "The default optimizer at each precision, each in a fresh process, decoding as it "
            f"ships (greedy, with the length rule); the {len(records)} dev records submitted at "
            "once. Scored with `python -m bpo_trainer.guard_report`'s dev table (sacrebleu corpus "
            "chrF and BLEU against `final_output`, 95% bootstrap intervals): the rewrites as "
            "written (existing guards), and the text `BPOOptimizer()` sends on (its guards and "
            "keep rule). ms/token of one stream (one prompt alone) and of the split batched; "
            "rewrites equal to f16's."
        ),
        figures=figures,
        header=(
            "precision",
            "chrF, as written",
            "BLEU, as written",
            "chrF, sent on",
            "BLEU, sent on",
            "ms/token, one stream",
            "ms/token, batched",
            "= f16",
        ),
        rows=rows,
    )


if __name__ == "__main__":  # python -m benchmarks.precision
    print(run().to_markdown())
