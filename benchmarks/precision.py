"""Precision: what each weight format of the local engine costs in quality and buys in speed.

The default optimizer (SmolLM2-135M-Instruct with the shipped adapter, merged) prepared at each
precision ``LocalBackend`` offers (``f16``, ``q8_0``, ``q4_0``), one after the other, each in a
fresh process. Each rewrites the held-out dev split of the default model's training (the
``val.json`` records its ``bpo_training.json`` lists) greedily, and is scored with the trainer's
corpus chrF and BLEU against the ChatGPT-optimized references; copying the prompt is the floor.
Speed: milliseconds per generated token over the whole split, and how many rewrites equal the
``f16`` ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, SHARED_DIR, Figure, Section, run_child

PRECISIONS = ("f16", "q8_0", "q4_0")
TARGET_CHRF_LOSS = 1.0

CHILD = r"""
import json, sys
from benchmarks.precision import measure_in_child
print("RESULT " + json.dumps(measure_in_child(json.loads(sys.argv[1]))))
"""


def dev_records(shared_dir: Path) -> list[Any]:
    from bpo_trainer.guard_report import dev_indices
    from bpo_trainer.quality import DevRecord

    rows = json.loads((shared_dir / "data" / "bpo" / "val.json").read_text("utf-8"))
    return [DevRecord.from_record(i, rows[i]) for i in dev_indices()]


def measure_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    import time

    from bpo_trainer.quality import greedy_settings

    from bpo_integrations.backends.local import LocalBackend

    records = dev_records(Path(spec["shared_dir"]))
    backend = LocalBackend(precision=spec["precision"]).load()
    try:
        settings = greedy_settings(spec["max_new_tokens"])
        backend.generate([records[0].prompt], settings)  # warm-up
        started = time.perf_counter()
        generations = backend.generate([r.prompt for r in records], settings)
        elapsed = time.perf_counter() - started
        one = time.perf_counter()
        single = backend.generate([records[0].prompt], settings)[0]
        single_s = time.perf_counter() - one
    finally:
        backend.close()
    tokens = sum(g.generated_tokens or 0 for g in generations)
    return {
        "outputs": [g.text.strip() for g in generations],
        "batched_s": elapsed,
        "tokens": tokens,
        "ms_per_token_one_stream": 1000 * single_s / max(single.generated_tokens or 1, 1),
    }


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_child(CHILD, spec, paths=(REPO, REPO / "trainer"))
    return result


def run(*, max_new_tokens: int = 256, shared_dir: Path | None = None) -> Section:
    from bpo_trainer.quality import score_system

    shared = (shared_dir or SHARED_DIR).resolve()
    records = dev_records(shared)
    spec = {"shared_dir": str(shared), "max_new_tokens": max_new_tokens}
    results = {p: _child({**spec, "precision": p}) for p in PRECISIONS}
    copy = score_system("copy", records, [r.prompt for r in records])
    scores = {p: score_system(p, records, r["outputs"]) for p, r in results.items()}
    shipped = results["f16"]["outputs"]
    rows = [("copy the prompt", f"{copy.chrf:.1f}", f"{copy.bleu:.1f}", "—", "—", "—")]
    for precision, result in results.items():
        same = sum(a == b for a, b in zip(result["outputs"], shipped, strict=True))
        rows.append(
            (
                precision,
                f"{scores[precision].chrf:.1f}",
                f"{scores[precision].bleu:.1f}",
                f"{result['ms_per_token_one_stream']:.1f}",
                f"{1000 * result['batched_s'] / max(result['tokens'], 1):.1f}",
                f"{same}/{len(records)}",
            )
        )
    figures = [
        Figure(
            f"dev chrF, f16 − {precision}",
            scores["f16"].chrf - scores[precision].chrf,
            "points",
            f"report (≤ {TARGET_CHRF_LOSS} keeps quality)",
            None,
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
            "The default optimizer at each precision, each in a fresh process; greedy rewrites "
            f"of the {len(records)} dev records (up to {max_new_tokens} new tokens) submitted at "
            "once; "
            "corpus chrF and BLEU against the references (sacrebleu); ms/token of one stream "
            "(one prompt alone) and of the whole split batched; rewrites equal to f16's."
        ),
        figures=figures,
        header=("precision", "chrF", "BLEU", "ms/token, one stream", "ms/token, batched", "= f16"),
        rows=rows,
    )


if __name__ == "__main__":  # python -m benchmarks.precision
    print(run().to_markdown())
