"""The ``drpo`` stage: search a tuning-free alignment instruction for a base model (DRPO).

Dynamic Rewarding with Prompt Optimization (Singla et al., EMNLP 2024, arXiv 2411.08733) aligns
a model without training: it searches, once per model, a system prompt and a set of in-context
examples, scored by an LLM judge whose reward aspects are chosen per query. Step 1 revises the
responses of the base examples from the judge's feedback; step 2 runs a beam search over the
system prompt, answering seed queries with the base model (the prompt plus the K most similar
optimized examples). The result is ``alignment.json`` (``"format": "drpo-alignment/1"``), which
``bpo_integrations.langchain.DRPORunnable`` and ``bpo_integrations.llama_index.DRPOChatEngine``
put in front of the model. ``bpo-train drpo-eval`` scores answers with and without it.

Example:
    >>> from bpo_trainer.drpo import DRPOConfig, run_drpo
    >>> config = DRPOConfig(
    ...     queries_file="seed_queries.jsonl", examples_file="icl_examples.jsonl",
    ...     base_url="http://localhost:8000/v1", base_model="mistral-7b-instruct",
    ...     optimizer_model="gpt-4o", judge_model="gpt-4o", output_dir="runs/drpo",
    ... )
    >>> result = run_drpo(config)  # doctest: +SKIP
    >>> result.artifact_path  # doctest: +SKIP
    PosixPath('runs/drpo/alignment.json')
"""

from __future__ import annotations

from bpo_trainer.drpo.config import DEFAULT_SYSTEM_PROMPT, DRPOConfig
from bpo_trainer.drpo.evaluate import DRPOEvalConfig, DRPOEvalResult, arun_drpo_eval, run_drpo_eval
from bpo_trainer.drpo.run import DRPOResult, arun_drpo, run_drpo

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DRPOConfig",
    "DRPOEvalConfig",
    "DRPOEvalResult",
    "DRPOResult",
    "arun_drpo",
    "arun_drpo_eval",
    "run_drpo",
    "run_drpo_eval",
]
